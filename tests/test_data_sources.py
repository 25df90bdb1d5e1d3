"""Data as users have it: unlabelled folders at any depth, list files, class subsets (ImageNet-100), hidden
and non-image files, EXIF orientation, integer labels only, and eval batches of mixed image sizes."""

from __future__ import annotations

import io
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mvssl_lightning.cli import run_cli
from mvssl_lightning.data import MultiViewDataModule, NpzImageDataset, build_dataset, embedded_default_path
from mvssl_lightning.data.datasets import MissingSplit, read_raw_image
from mvssl_lightning.data.files import read_class_list, read_filelist
from mvssl_lightning.data.images import open_rgb
from mvssl_lightning.evaluation import LabeledDataModule

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def jpegs() -> list[bytes]:
    """40 real CIFAR-10 JPEG files (the embedded dataset's bytes) and their labels."""
    ds = NpzImageDataset(embedded_default_path(), "train")
    return [ds._bytes(i) for i in range(40)]


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def png(size: tuple[int, int], seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(out, format="PNG")
    return out.getvalue()


def fit(tmp_path: Path, *args: str):
    return run_cli([
        "fit", "--config", str(REPO / "configs/quickstart.yaml"), "--trainer.fast_dev_run", "true",
        "--trainer.default_root_dir", str(tmp_path), "--data.num_workers", "0", "--data.batch_size", "8",
        "--model.proj_hidden_dim", "32", *args,
    ])


# ---------------------------------------------------------------------------------------------- unlabelled folders
def test_unlabelled_nested_folder_is_read_recursively_with_hidden_and_non_image_files_counted(tmp_path, jpegs, caplog):
    root = tmp_path / "photos"
    for i, data in enumerate(jpegs):
        write(root / f"{2019 + i % 2}" / f"{i % 3:02d}" / f"img_{i:03d}.jpg", data)
    write(root / ".ipynb_checkpoints" / "copy.jpg", jpegs[0])  # hidden folder
    write(root / "2019" / "._img_000.jpg", b"\x00\x05\x16\x07AppleDouble")  # macOS AppleDouble: not an image
    write(root / "2019" / ".DS_Store", b"junk")
    write(root / "notes.txt", b"not an image")
    with caplog.at_level(logging.INFO):
        ds = build_dataset("imagefolder", root, "train")
    assert len(ds) == 40 and set(ds.targets.tolist()) == {-1}
    assert [Path(p).relative_to(root).as_posix() for p, _ in ds.samples] == sorted(
        f"{2019 + i % 2}/{i % 3:02d}/img_{i:03d}.jpg" for i in range(40)
    )
    assert "40 images found; skipped 3 hidden file(s) or folder(s) and 1 file(s) without an image extension" in caplog.text
    image, label = ds[5]
    assert label == -1 and image.size == (32, 32)
    with pytest.raises(MissingSplit, match="no evaluation split"):
        build_dataset("imagefolder", root, "test")


def test_unlabelled_folder_trains_and_probe_and_knn_say_they_are_off(tmp_path, jpegs, caplog):
    root = tmp_path / "unlabelled"
    for i, data in enumerate(jpegs):
        write(root / "train" / f"day{i % 4}" / "deeper" / f"{i}.jpg", data)
        write(root / "val" / f"{i}.jpg", data)
    with caplog.at_level(logging.INFO):
        cli = fit(tmp_path, "--data.dataset", "imagefolder", "--data.data_dir", str(root), "--data.labels", "none")
    assert cli.trainer.global_step == 1 and cli.datamodule.has_labels is False
    assert cli.datamodule.num_classes == 0
    off = [r.getMessage() for r in caplog.records if "off" in r.getMessage() and "no labels" in r.getMessage()]
    assert sum(m.startswith("OnlineLinearProbe") for m in off) == 1, off  # said once
    assert sum(m.startswith("OnlineKNN") for m in off) == 1, off


def test_a_run_without_an_evaluation_split_trains_and_still_says_where_its_checkpoint_is(tmp_path, jpegs, capsys):
    root = tmp_path / "photos"
    for i, data in enumerate(jpegs[:24]):
        write(root / f"{i % 2}" / f"{i}.jpg", data)
    run_cli([
        "fit", "--config", str(REPO / "configs/quickstart.yaml"), "--trainer.max_epochs", "1",
        "--trainer.default_root_dir", str(tmp_path), "--data.num_workers", "0", "--data.batch_size", "8",
        "--model.proj_hidden_dim", "32", "--trainer.enable_progress_bar", "false",
        "--data.dataset", "imagefolder", "--data.data_dir", str(root),
    ])
    out = capsys.readouterr().out
    assert "no validation ran" in out
    assert f"checkpoint: {tmp_path / 'quickstart' / 'version_0' / 'checkpoints' / 'last.ckpt'}" in out


def test_an_empty_folder_is_an_error_naming_it(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "sub" / "readme.md").write_text("x")
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "empty"))):
        build_dataset("imagefolder", tmp_path / "empty", "train")


def test_labelled_folder_skips_hidden_folders_and_apple_double_files(tmp_path, jpegs, caplog):
    """Issue 27, case 10: ``.ipynb_checkpoints/`` was a class; ``._0001.png`` aborted the run as corrupt."""
    for split in ("train", "val"):
        for i, data in enumerate(jpegs[:20]):
            write(tmp_path / split / ("cat" if i % 2 else "dog") / f"{i:04d}.jpg", data)
        write(tmp_path / split / ".ipynb_checkpoints" / "0001.jpg", jpegs[0])
        write(tmp_path / split / "dog" / "._0001.jpg", b"\x00\x05\x16\x07AppleDouble")
    with caplog.at_level(logging.INFO):
        train = build_dataset("imagefolder", tmp_path, "train")
        val = build_dataset("imagefolder", tmp_path, "test")
    assert train.classes == ["cat", "dog"] and len(train) == 20 and len(val) == 20
    for i in range(len(train)):
        train[i]  # noqa: B018 - every image decodes
    assert "20 images found; skipped 1 hidden file(s) or folder(s)" in caplog.text
    dm = MultiViewDataModule("imagefolder", str(tmp_path), views="two_views_cifar", batch_size=4, num_workers=0)
    assert dm.num_classes == 2


# ---------------------------------------------------------------------------------------------- list files
def test_text_filelist_relative_and_absolute_paths_with_optional_labels(tmp_path, jpegs):
    for i, data in enumerate(jpegs[:6]):
        write(tmp_path / "imgs" / f"a b {i}.jpg", data)  # a space in the name
    lines = ["# my images", "", "imgs/a b 0.jpg 2", f"{tmp_path}/imgs/a b 1.jpg 0", "imgs/a b 2.jpg", "imgs/a b 3.jpg -1"]
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    entries = read_filelist(tmp_path / "list.txt")
    assert entries.paths == [str(tmp_path / "imgs" / f"a b {i}.jpg") for i in range(4)]
    assert entries.labels == [2, 0, -1, -1] and entries.classes == ["0", "1", "2"]
    ds = build_dataset("filelist", tmp_path / "list.txt", "train")
    assert [ds[i][1] for i in range(4)] == [2, 0, -1, -1]
    with pytest.raises(MissingSplit, match="no evaluation entries"):
        build_dataset("filelist", tmp_path / "list.txt", "test")


def test_csv_filelist_with_class_names_and_splits_trains(tmp_path, jpegs):
    rows = ["split,label,path"]
    for i, data in enumerate(jpegs):
        name = f"class{i % 10}"
        write(tmp_path / "data" / f"{i}.jpg", data)
        rows.append(f"{'val' if i >= 30 else 'train'},{name},data/{i}.jpg")
    (tmp_path / "images.csv").write_text("\n".join(rows) + "\n")
    train = build_dataset("filelist", tmp_path / "images.csv", "train")
    test = build_dataset("filelist", tmp_path / "images.csv", "test")
    assert train.classes == test.classes == [f"class{k}" for k in range(10)]
    assert len(train) == 30 and len(test) == 10
    assert train.targets.tolist() == [i % 10 for i in range(30)] and test.targets.tolist() == list(range(10))
    cli = fit(tmp_path, "--data.dataset", "filelist", "--data.data_dir", str(tmp_path / "images.csv"),
              "--trainer.callbacks+=mvssl_lightning.callbacks.OnlineKNN")
    assert cli.trainer.global_step == 1 and cli.datamodule.num_classes == 10


def test_filelist_errors_name_the_file_and_line(tmp_path, jpegs):
    write(tmp_path / "x.jpg", jpegs[0])
    (tmp_path / "missing.txt").write_text("x.jpg\nnot/there.jpg\n")
    with pytest.raises(FileNotFoundError, match=r"missing\.txt.*not/there\.jpg"):
        read_filelist(tmp_path / "missing.txt")
    (tmp_path / "split.csv").write_text("path,split\nx.jpg,holdout\n")
    with pytest.raises(ValueError, match=r"split\.csv, line 2: split must be train, val or test"):
        read_filelist(tmp_path / "split.csv")
    (tmp_path / "label.txt").write_text("x.jpg -3\n")
    with pytest.raises(ValueError, match=r"label\.txt, line 1: label -3"):
        read_filelist(tmp_path / "label.txt")
    with pytest.raises(FileNotFoundError, match="filelist not found"):
        build_dataset("filelist", tmp_path / "nope.txt", "train")


# ---------------------------------------------------------------------------------------------- class lists
def test_class_list_keeps_exactly_the_listed_classes_with_one_label_map(tmp_path, jpegs):
    names = ["n01", "n02", "n03", "n04"]
    for split in ("train", "val"):
        for i, data in enumerate(jpegs[:24]):
            write(tmp_path / "in" / split / names[i % 4] / f"{split}_{i}.jpg", data)
    (tmp_path / "keep.txt").write_text("# two classes\nn04\nn02\n")
    train = build_dataset("imagefolder", tmp_path / "in", "train", class_list=str(tmp_path / "keep.txt"))
    val = build_dataset("imagefolder", tmp_path / "in", "test", class_list=str(tmp_path / "keep.txt"))
    for ds in (train, val):
        assert ds.classes == ["n02", "n04"]
        folders = {Path(p).parent.name for p, _ in ds.samples}
        assert folders == {"n02", "n04"} and len(ds) == 12
        assert all(ds.classes[label] == Path(p).parent.name for p, label in ds.samples)
    data = LabeledDataModule("imagefolder", str(tmp_path / "in"), class_list=str(tmp_path / "keep.txt"),
                             image_size=32, num_workers=0)
    data.setup()
    assert data.num_classes == 2 and len(data.train_dataset) == 12 and len(data.val_dataset) == 12
    (tmp_path / "bad.txt").write_text("n02\nn09\nn07\n")
    with pytest.raises(ValueError, match=r"names 2 class\(es\) that .* does not have: n07, n09"):
        build_dataset("imagefolder", tmp_path / "in", "train", class_list=str(tmp_path / "bad.txt"))


def test_imagenet100_ships_with_the_package():
    classes = read_class_list("imagenet100")
    assert len(classes) == len(set(classes)) == 100
    assert all(re.fullmatch(r"n\d{8}", c) for c in classes)
    assert classes[:3] == ["n02869837", "n01749939", "n02488291"]  # CMC's imagenet100.txt, in its order


@pytest.mark.parametrize("config", ["mveb_imagenet100_r18", "mec_imagenet100_r18"])
def test_imagenet100_configs_select_the_class_list(config, capsys):
    import yaml

    with pytest.raises(SystemExit):
        run_cli(["fit", "--config", str(REPO / "configs" / f"{config}.yaml"), "--print_config"])
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["data"]["class_list"] == "imagenet100" and cfg["model"]["init_args"]["backbone"] == "resnet18"
    assert cfg["trainer"]["max_epochs"] == 400 and cfg["data"]["batch_size"] * cfg["trainer"]["devices"] == 256


# ---------------------------------------------------------------------------------------------- pixels and labels
def test_exif_orientation_is_applied_as_pillow_does_on_both_paths(tmp_path):
    img = Image.fromarray(np.arange(20 * 30 * 3, dtype=np.uint8).reshape(20, 30, 3) % 251)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    out = io.BytesIO()
    img.save(out, format="JPEG", exif=exif.tobytes(), quality=95)
    path = write(tmp_path / "rotated.jpg", out.getvalue())
    from PIL import ImageOps

    with Image.open(path) as raw:
        expected = np.asarray(ImageOps.exif_transpose(raw).convert("RGB"))
    got = np.asarray(open_rgb(str(path), "x"))
    assert got.shape == (30, 20, 3) and np.array_equal(got, expected)
    raw_tensor = read_raw_image(str(path))  # the gpu_views path decodes it on the CPU by the same rule
    assert raw_tensor.shape == (3, 30, 20) and torch.equal(raw_tensor, torch.from_numpy(expected).permute(2, 0, 1))


def test_float_labels_in_an_npz_are_an_error_naming_the_file_and_value(tmp_path):
    """Issue 27, case 6: 3.7 became 3 without a word."""
    x = np.zeros((3, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "f.npz", x_train=x, y_train=np.array([1.0, 3.7, 2.0]), x_test=x, y_test=np.zeros(3))
    with pytest.raises(ValueError, match=r"f\.npz: y_train must hold integer labels; entry 1 is 3\.7"):
        NpzImageDataset(tmp_path / "f.npz", "train")
    np.savez(tmp_path / "ok.npz", x_train=x, y_train=np.array([1.0, 3.0, -1.0]), x_test=x, y_test=np.zeros(3))
    assert NpzImageDataset(tmp_path / "ok.npz", "train").targets.tolist() == [1, 3, -1]


def test_one_large_image_among_small_ones_does_not_break_the_eval_batch(tmp_path, jpegs):
    """Issue 27, case 9: the 32 px eval transform had no resize: ``stack expects each tensor to be equal size``."""
    for split in ("train", "val"):
        for i, data in enumerate(jpegs[:16]):
            write(tmp_path / split / ("a" if i % 2 else "b") / f"{i}.jpg", data)
        write(tmp_path / split / "a" / "large.png", png((600, 400)))
    dm = MultiViewDataModule("imagefolder", str(tmp_path), views="two_views_cifar", batch_size=4, num_workers=0,
                             eval_batch_size=17)
    dm.setup()
    for loader in dm.val_dataloader():
        images, _ = next(iter(loader))
        assert images.shape == (17, 3, 32, 32)
