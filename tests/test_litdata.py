"""LitData shards (issue 22, items 3 and 4): ``mvssl-data optimize`` and ``dataset: litdata``.

References are independent of the shard code: the input files' own bytes and labels, the npz reader
(:class:`NpzImageDataset`), Pillow decoding, and an uninterrupted training run.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from gloo import run_in_processes
from PIL import Image
from preempt import KillAt

from mvssl_lightning.data.cli import main as data_main
from mvssl_lightning.data.cli import optimize_shards
from mvssl_lightning.data.datasets import MissingSplit, NpzImageDataset, build_dataset, embedded_default_path
from mvssl_lightning.data.shards import METADATA_NAME, ShardImages, ShardLoader, ShardStream, read_metadata

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore::UserWarning")]

N_TRAIN, N_TEST = 40, 16  # 5 steps of 8 per epoch


def _small_npz(path: Path) -> Path:
    """``N_TRAIN`` + ``N_TEST`` images of the embedded default (JPEG bytes, 10 classes), every class present."""
    with np.load(embedded_default_path()) as d:
        arrays = {k: d[k] for k in d.files}
    out: dict[str, np.ndarray] = {"class_names": arrays["class_names"]} if "class_names" in arrays else {}
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        y, offsets, jpeg = arrays[f"y_{split}"], arrays[f"offsets_{split}"], arrays[f"jpeg_{split}"]
        picks = np.concatenate([np.flatnonzero(y == c)[: n // 10 + 1] for c in range(10)])[:n]
        files = [jpeg[offsets[i]:offsets[i + 1]] for i in picks]
        out[f"jpeg_{split}"] = np.concatenate(files)
        out[f"offsets_{split}"] = np.concatenate([[0], np.cumsum([len(f) for f in files])]).astype(np.int64)
        out[f"y_{split}"] = y[picks]
    np.savez(path, **out)
    return path


@pytest.fixture(scope="module")
def npz_shards(tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("npz")
    source = _small_npz(tmp / "small.npz")
    out = tmp / "shards"
    summary = optimize_shards(str(source), str(out), num_workers=2, chunk_bytes="8KB")  # several shards, 2 writers
    assert summary["images"] == N_TRAIN + N_TEST and summary["shards"] > 2
    return source, out


@pytest.fixture(scope="module")
def folder_shards(tmp_path_factory) -> tuple[Path, Path]:
    """An image folder with JPEG and PNG files (a 16-bit one too), written by the ``mvssl-data`` command."""
    tmp = tmp_path_factory.mktemp("folder")
    root = tmp / "images"
    g = np.random.default_rng(0)
    for split, n in (("train", 6), ("val", 2)):
        for c in ("cat", "dog"):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                pixels = g.integers(0, 256, (20 + i, 24, 3), dtype=np.uint8)
                name = root / split / c / f"{i}.{'png' if i % 2 else 'jpg'}"
                Image.fromarray(pixels).save(name)
    Image.fromarray(g.integers(0, 65536, (16, 16), dtype=np.uint16)).save(root / "train" / "cat" / "deep.png")
    out = tmp / "shards"
    data_main(["optimize", "--input", str(root), "--output", str(out), "--num-workers", "1"])
    return root, out


# ----------------------------------------------------------------------------- what is stored


def test_npz_shards_hold_the_original_bytes_and_labels_in_order(npz_shards):
    source, out = npz_shards
    for split in ("train", "test"):
        reference = NpzImageDataset(source, split)
        shards = ShardImages(str(out), split)
        assert len(shards) == len(reference) and shards.classes == reference.classes
        np.testing.assert_array_equal(shards.targets, reference.targets)
        for i in range(len(reference)):
            item = shards._item(i)
            assert item["image"] == reference._bytes(i) and item["label"] == reference.targets[i]
        image, label = shards[3]  # decoded as the npz reader decodes the same file
        assert label == reference.targets[3]
        np.testing.assert_array_equal(np.asarray(image), np.asarray(reference.load_image(3)))
    meta = json.loads((out / METADATA_NAME).read_text())
    assert meta["splits"]["train"]["images"] == N_TRAIN and meta["splits"]["test"]["images"] == N_TEST


def test_folder_shards_hold_each_files_bytes(folder_shards, capsys):
    root, out = folder_shards
    for split, sub in (("train", "train"), ("test", "val")):
        shards = ShardImages(str(out), split)
        files = sorted((root / sub).rglob("*.*"))
        assert len(shards) == len(files) and shards.classes == ["cat", "dog"]
        stored = {shards._item(i)["source"].removeprefix("image file "): shards._item(i) for i in range(len(shards))}
        assert sorted(stored) == [str(f) for f in files]
        for f in files:
            assert stored[str(f)]["image"] == f.read_bytes()
            assert stored[str(f)]["label"] == ["cat", "dog"].index(f.parent.name)
    # raw (gpu_views): a JPEG stays its bytes, a PNG is decoded (16-bit as value >> 8)
    raw = ShardImages(str(out), "train", raw=True)
    kinds = {raw._item(i)["source"].rsplit(".", 1)[-1]: raw[i][0] for i in range(len(raw))}
    assert kinds["jpg"].dim() == 1 and kinds["png"].dim() == 3
    deep = next(i for i in range(len(raw)) if raw._item(i)["source"].endswith("deep.png"))
    expected = np.asarray(Image.open(root / "train" / "cat" / "deep.png"), dtype=np.int64) >> 8
    assert torch.equal(raw[deep][0], torch.from_numpy(np.stack([expected] * 3)).to(torch.uint8))


def test_optimize_prints_a_summary(tmp_path, capsys):
    source = _small_npz(tmp_path / "s.npz")
    data_main(["optimize", "--input", str(source), "--output", str(tmp_path / "out"), "--num-workers", "1"])
    line = [x for x in capsys.readouterr().out.splitlines() if x.startswith("mvssl-data: wrote")]
    assert re.fullmatch(r"mvssl-data: wrote 56 images, [\d,]+ bytes of image files, \d+ shards to .* in [\d.]+ s",
                        line[0])


# ----------------------------------------------------------------------------- reading it back


def test_labeled_datamodule_reads_the_shards(npz_shards):
    from mvssl_lightning.evaluation import LabeledDataModule

    source, out = npz_shards
    dm = LabeledDataModule(dataset="litdata", data_dir=str(out), batch_size=8, num_workers=0)
    dm.setup("fit")
    images, labels = next(iter(dm.val_dataloader()))
    reference = NpzImageDataset(source, "test", transform=dm.eval_transform)
    assert torch.equal(labels, torch.as_tensor(reference.targets[:8]))
    assert torch.equal(images, torch.stack([reference[i][0] for i in range(8)]))
    assert dm.num_classes == 10


def test_build_dataset_and_missing_split(folder_shards, tmp_path):
    _, out = folder_shards
    assert isinstance(build_dataset("litdata", str(out), "test"), ShardImages)
    only_train = tmp_path / "only_train"
    shutil.copytree(out, only_train)
    meta = json.loads((only_train / METADATA_NAME).read_text())
    del meta["splits"]["test"]
    (only_train / METADATA_NAME).write_text(json.dumps(meta))
    with pytest.raises(MissingSplit, match="no 'test' split"):
        build_dataset("litdata", str(only_train), "test")


def _fit(data_dir: Path, tmp_path: Path, workers: int = 0, callbacks=(), ckpt_path=None, **trainer_kwargs):
    from mvssl_lightning import MVEB, MultiViewDataModule
    from mvssl_lightning.callbacks import PreemptionCheckpoint

    pl.seed_everything(0, verbose=False)
    model = MVEB(backbone="resnet18", proj_hidden_dim=32, proj_output_dim=16, warmup_epochs=1)
    data = MultiViewDataModule("litdata", data_dir=str(data_dir), views="mveb_multicrop_cifar",
                               view_kwargs={"n_local": 1}, batch_size=8, num_workers=workers, test_subset=8)
    trainer = pl.Trainer(accelerator="cpu", logger=False, limit_val_batches=0, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path,
                         callbacks=[PreemptionCheckpoint(), *callbacks], enable_checkpointing=False, **trainer_kwargs)
    trainer.fit(model, datamodule=data, ckpt_path=ckpt_path)
    return trainer, {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_dataset_litdata_trains(npz_shards, tmp_path):
    from mvssl_lightning.cli import main

    _, out = npz_shards
    main(["fit", "--config", str(Path(__file__).resolve().parents[1] / "configs/quickstart.yaml"),
          "--data.dataset", "litdata", "--data.data_dir", str(out), "--data.batch_size", "8",
          "--data.num_workers", "0", "--data.test_subset", "8", "--model.proj_hidden_dim", "32",
          "--model.proj_output_dim", "16", "--trainer.fast_dev_run", "2", "--trainer.enable_progress_bar", "false",
          "--trainer.default_root_dir", str(tmp_path), "--trainer.logger.init_args.save_dir", str(tmp_path / "runs")])


# ----------------------------------------------------------------------------- order, processes, resume


def _positions(batch_sources: list[str]) -> list[int]:
    return [int(re.match(r"image (\d+) of", s).group(1)) for s in batch_sources]


def _epochs_seen(rank: int, world: int, out: str, seed: int, workers: int) -> list[list[int]]:
    torch.set_num_threads(1)
    stream = ShardStream(out, "train", raw=True, seed=seed)
    loader = ShardLoader(stream, batch_size=4, num_workers=workers, collate_fn=lambda b: [s for _, _, s in b])
    return [[i for batch in loader for i in _positions(batch)] for _ in range(2)]


def test_one_process_sees_every_image_once_per_epoch_in_a_seeded_order(npz_shards):
    _, out = npz_shards
    first = _epochs_seen(0, 1, str(out), seed=5, workers=0)
    assert [sorted(e) for e in first] == [list(range(N_TRAIN))] * 2
    assert first[0] != first[1] and first[0] != list(range(N_TRAIN))  # shuffled, differently per epoch
    assert _epochs_seen(0, 1, str(out), seed=5, workers=0) == first  # a function of (seed, epoch)
    assert _epochs_seen(0, 1, str(out), seed=6, workers=0)[0] != first[0]
    with_workers = _epochs_seen(0, 1, str(out), seed=5, workers=2)  # the workers share the shards out
    assert [sorted(e) for e in with_workers] == [list(range(N_TRAIN))] * 2


class _Draw:
    """A view transform that draws from torch's, NumPy's and Python's generators."""

    def __call__(self, image):
        import random

        return torch.tensor([torch.rand(()).item(), np.random.rand(), random.random()], dtype=torch.float64)


def test_augmentation_is_a_function_of_seed_epoch_and_index(npz_shards):
    """Image ``i`` of epoch ``e`` is transformed with the generators seeded from ``sample_seed(seed, e, i)``,
    whichever worker reads it (``SeededSamples``' rule for map-style data)."""
    import random

    from mvssl_lightning.data.order import sample_seed, seeded_rngs

    _, out = npz_shards
    with seeded_rngs(0):
        expected = {}
        for epoch in (1, 2):  # LitData counts epochs from 1
            for i in range(N_TRAIN):
                with seeded_rngs(sample_seed(7, epoch, i)):
                    expected[epoch, i] = (torch.rand(()).item(), np.random.rand(), random.random())
    for workers in (0, 2):
        loader = ShardLoader(ShardStream(str(out), "train", transform=_Draw(), seed=7), batch_size=4,
                             num_workers=workers, collate_fn=lambda b: b)
        ordered = _epochs_seen(0, 1, str(out), seed=7, workers=workers)
        for epoch, positions in zip((1, 2), ordered, strict=True):
            drawn = [tuple(x.tolist()) for batch in loader for x, _ in batch]
            assert drawn == [expected[epoch, i] for i in positions]


def test_two_gloo_processes_see_disjoint_images_covering_the_epoch(npz_shards):
    _, out = npz_shards
    seen = run_in_processes(_epochs_seen, str(out), 5, 0, world=2)
    for epoch in range(2):
        a, b = seen[0][epoch], seen[1][epoch]
        assert len(a) == len(b) == N_TRAIN // 2
        assert not set(a) & set(b) and sorted(a + b) == list(range(N_TRAIN))


@pytest.mark.parametrize("workers", [0, 2])
def test_an_interrupted_litdata_run_resumed_mid_epoch_is_bit_identical(npz_shards, tmp_path, workers):
    """5 steps per epoch, 2 epochs; SIGTERM after step 7 (mid-epoch 1) writes last.ckpt, the resumed run
    continues from LitData's loader state: every parameter and buffer equals the uninterrupted run's."""
    _, out = npz_shards
    reference, expected = _fit(out, tmp_path / "a", workers, max_epochs=2)
    assert reference.global_step == 10
    with pytest.raises(SystemExit):
        _fit(out, tmp_path / "b", workers, callbacks=[KillAt(7)], max_epochs=2)
    ckpt = tmp_path / "b/checkpoints/last.ckpt"
    saved = torch.load(ckpt, weights_only=True)
    assert saved["global_step"] == 7
    loader_state = saved["MultiViewDataModule"]["litdata_loader"]
    assert loader_state["num_samples_yielded"] == 2 * 8 and loader_state["current_epoch"] == 2  # LitData counts from 1
    resumed, got = _fit(out, tmp_path / "b", workers, ckpt_path=str(ckpt), max_epochs=2)
    assert resumed.global_step == 10
    different = [k for k in expected if not torch.equal(got[k], expected[k])]
    assert not different, different[:5]


# ----------------------------------------------------------------------------- bad input


def _copy(out: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(out, target)
    return target


def test_a_truncated_shard_is_an_error_naming_it_and_its_images(npz_shards, tmp_path):
    shards = _copy(npz_shards[1], tmp_path)
    index = json.loads((shards / "train/index.json").read_text())
    second = index["chunks"][1]
    path = shards / "train" / second["filename"]
    path.write_bytes(path.read_bytes()[: second["chunk_bytes"] // 2])
    first = index["chunks"][0]["chunk_size"]
    pattern = rf"shard {re.escape(str(path))} \(images {first}\.\.{first + second['chunk_size'] - 1} of .*\) is truncated"
    with pytest.raises(ValueError, match=pattern):
        ShardImages(str(shards), "train")
    with pytest.raises(ValueError, match=pattern):
        ShardStream(str(shards), "train")


def test_a_corrupt_shard_is_an_error_naming_it_and_the_image(npz_shards, tmp_path):
    shards = _copy(npz_shards[1], tmp_path)
    index = json.loads((shards / "train/index.json").read_text())
    path = shards / "train" / index["chunks"][0]["filename"]
    data = bytearray(path.read_bytes())
    data[: 4 + 4 * 3] = b"\xff" * 16  # the chunk's header: item count and offsets
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=rf"cannot read image 1 from shard {re.escape(str(path))}"):
        ShardImages(str(shards), "train")[1]


def test_another_format_version_or_no_metadata_is_an_error(npz_shards, tmp_path):
    shards = _copy(npz_shards[1], tmp_path)
    meta = json.loads((shards / METADATA_NAME).read_text())
    (shards / METADATA_NAME).write_text(json.dumps({**meta, "version": 99}))
    with pytest.raises(ValueError, match=r"shards written by format version 99, this mvssl_lightning reads version 1"):
        ShardImages(str(shards), "train")
    (shards / METADATA_NAME).unlink()
    with pytest.raises(FileNotFoundError, match=r"no LitData shards written by mvssl-data at .*mvssl_shards.json is"):
        read_metadata(str(shards))


def test_object_store_uri_without_credentials_is_litdatas_error_in_one_line(monkeypatch):
    for key in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/config")
    with pytest.raises(ValueError) as error:
        ShardImages("s3://mvssl-no-such-bucket/shards", "train")
    message = str(error.value)
    assert "\n" not in message and "s3://mvssl-no-such-bucket/shards/mvssl_shards.json" in message
    assert "NoCredentialsError" in message


def test_pil_reference_decode_of_png_arrays(tmp_path):
    """Raw npz arrays are stored as PNG: the shards decode to the very same pixels."""
    g = np.random.default_rng(1)
    x = g.integers(0, 256, (12, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "raw.npz", x_train=x, y_train=np.arange(12) % 3)
    optimize_shards(str(tmp_path / "raw.npz"), str(tmp_path / "out"), num_workers=1)
    shards = ShardImages(str(tmp_path / "out"), "train")
    assert Image.open(io.BytesIO(shards._item(5)["image"])).format == "PNG"
    for i in range(12):
        np.testing.assert_array_equal(np.asarray(shards[i][0]), x[i])
    with pytest.raises(MissingSplit):
        build_dataset("litdata", str(tmp_path / "out"), "test")


def test_gpu_views_read_the_shards_bytes(npz_shards, tmp_path):
    """``gpu_views``: the workers hand over the stored JPEG bytes (decoded in the collate here, on the CPU)."""
    from mvssl_lightning import MultiViewDataModule

    _, out = npz_shards
    dm = MultiViewDataModule("litdata", data_dir=str(out), views="two_views_cifar", batch_size=8, num_workers=0,
                             test_subset=8, gpu_views=True)
    dm.setup("fit")
    images, targets = next(iter(dm.train_dataloader()))
    views, same = dm.on_after_batch_transfer((images, targets), 0)
    assert len(views) == 2 and views[0].shape == (8, 3, 32, 32) and torch.equal(same, targets)
    assert set(targets.tolist()) <= set(range(10))


def test_pipeline_benchmark_compares_the_sources(tmp_path):
    from benchmarks.pipeline import main as pipeline_main

    result = pipeline_main(["--preset", "cpu-tiny", "--cases", "32px-two_views_cifar", "--data", "default",
                            "--sources", "npz,imagefolder,litdata", "--source-workers", "0", "--images", "8",
                            "--out", str(tmp_path)])
    rows = result["source_rows"]
    assert [r["source"] for r in rows] == ["npz", "imagefolder", "litdata"]
    assert all(r["cpu_path"]["images_per_s"] > 0 and r["cpu_path"]["num_views"] == 2 for r in rows)
    assert "| 32px-two_views_cifar | litdata | 8 | 0 |" in next(tmp_path.glob("pipeline-*.md")).read_text()


def test_train_subset_with_shards_is_refused_before_any_data_is_read(tmp_path):
    from mvssl_lightning.data import MultiViewDataModule

    with pytest.raises(ValueError, match="train_subset=10 is not supported with dataset: litdata"):
        MultiViewDataModule("litdata", str(tmp_path / "no-shards-here"), train_subset=10)
