"""Reliability round 3 (issue 27): each numbered case of the issue, failing on the code before the fix.

1 evaluation resolution from the data and the checkpoint; 2 ``--ckpt_path last`` only in this run's directory;
3 Ctrl-C saves; 4 ``default_root_dir`` honoured; 5 label lists by relative path; 7 one-line ``mvssl-eval`` errors;
8 a method switch with ``views: auto``; 11 no logger, no LearningRateMonitor; 12 diagnostics leave the user's
dataset alone, a tuple ``forward`` is a clear error; 13 ``mvssl-eval`` prints its result once.
"""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from PIL import Image

import mvssl_lightning
from mvssl_lightning.callbacks import PreemptionCheckpoint
from mvssl_lightning.cli import main, run_cli
from mvssl_lightning.data.views import CIFAR10_NORMALIZE, IMAGENET_NORMALIZE
from mvssl_lightning.evaluation import LabeledDataModule

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = str(REPO / "configs/quickstart.yaml")
EMBEDDED_NPZ = Path(mvssl_lightning.__file__).parent / "data/assets/cifar10_default.npz"

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore::DeprecationWarning")]

#: a tiny quickstart: 4 steps per epoch on 32 images, small heads, no workers, no progress bar
TINY = [
    "--data.batch_size", "8", "--data.train_subset", "32", "--data.test_subset", "16", "--data.num_workers", "0",
    "--model.proj_hidden_dim", "32", "--model.proj_output_dim", "16", "--trainer.limit_val_batches", "1",
    "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
    "--validate_at_start", "false",
]


def exit_of(capsys, *args: str) -> tuple[int, str]:
    with pytest.raises(SystemExit) as stop:
        main(list(args))
    return int(stop.value.code or 0), capsys.readouterr().err


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> Path:
    """A 2-step quickstart run logged under ``<tmp>/a/runs/quickstart/version_0``; returns ``<tmp>``."""
    tmp = tmp_path_factory.mktemp("r3")
    main(["fit", "--config", QUICKSTART, *TINY, "--trainer.max_steps", "2",
          "--trainer.logger.init_args.save_dir", str(tmp / "a/runs")])
    assert (tmp / "a/runs/quickstart/version_0/checkpoints/last.ckpt").exists()
    return tmp


def _npz(path: Path, side: int, n: int = 12) -> Path:
    rng = np.random.default_rng(0)
    np.savez(path, x_train=rng.integers(0, 255, (n, side, side, 3), dtype=np.uint8), y_train=np.arange(n) % 3,
             x_test=rng.integers(0, 255, (6, side, side, 3), dtype=np.uint8), y_test=np.arange(6) % 3)
    return path


# ----------------------------------------------------------------------------- 1. evaluation resolution


def test_the_embedded_images_as_npz_are_evaluated_like_the_default_dataset():
    """``dataset: npz`` of the package's own images used to be evaluated at 224 px with ImageNet statistics
    (kNN 0.267 instead of 0.303): the same image must give the same tensor as ``dataset: default``."""
    npz = LabeledDataModule("npz", data_dir=str(EMBEDDED_NPZ), num_workers=0, val_subset=4)
    default = LabeledDataModule("default", num_workers=0, val_subset=4)
    npz.setup()
    default.setup()
    assert npz.image_size == 32 and npz.normalize == CIFAR10_NORMALIZE
    for i in range(4):
        assert torch.equal(npz.val_dataset[i][0], default.val_dataset[i][0])


def test_small_images_of_another_size_are_resized_not_cropped_at_224(tmp_path):
    """``linear_cifar10.yaml`` (crop_flip) on a 40 px npz crashed: "crop size (224, 224) is larger than input"."""
    data = LabeledDataModule("npz", data_dir=str(_npz(tmp_path / "x.npz", 40)), train_transform="crop_flip",
                             num_workers=0)
    data.setup()
    assert data.image_size == 32
    assert data.train_dataset[0][0].shape == data.val_dataset[0][0].shape == (3, 32, 32)


def _with_record(data: LabeledDataModule, record: dict) -> LabeledDataModule:
    # what the evaluation module exposes: source.data, the checkpoint's ``mvssl.data``
    data.trainer = SimpleNamespace(lightning_module=SimpleNamespace(source=SimpleNamespace(data=record)))
    return data


def test_the_checkpoint_records_resolution_and_normalisation_and_evaluation_defaults_to_them(tmp_path, caplog):
    record = {"dataset": "npz", "views": "two_views", "image_size": 48, "mean": [0.5, 0.5, 0.5],
              "std": [0.25, 0.25, 0.25]}
    data = _with_record(LabeledDataModule("npz", data_dir=str(_npz(tmp_path / "x.npz", 96)), num_workers=0), record)
    with caplog.at_level(logging.INFO):
        data.setup()
    assert data.image_size == 48 and data.normalize == {"mean": [0.5] * 3, "std": [0.25] * 3}
    assert data.val_dataset[0][0].shape == (3, 48, 48)
    said = caplog.text
    assert "images at 48 px (from the checkpoint's pre-training)" in said and "mean [0.5, 0.5, 0.5]" in said


def test_an_evaluation_that_differs_from_pretraining_warns(tmp_path):
    record = {"dataset": "cifar10", "image_size": 32, **CIFAR10_NORMALIZE}
    data = _with_record(LabeledDataModule("npz", data_dir=str(_npz(tmp_path / "x.npz", 32)), image_size=64,
                                          normalize=IMAGENET_NORMALIZE, num_workers=0), record)
    with pytest.warns(UserWarning, match=r"differs from the checkpoint's pre-training data \('cifar10'\): image size "
                                         r"64 px \(pre-training: 32 px\); normalisation mean \[0.485"):
        data.setup()


def test_a_pretraining_checkpoint_carries_its_data_record(quick_run):
    from mvssl_lightning.evaluation.checkpoint import load_backbone

    _, _, source = load_backbone(quick_run / "a/runs/quickstart/version_0/checkpoints/last.ckpt")
    assert source.data["image_size"] == 32 and source.data["dataset"] == "default"
    assert np.allclose(source.data["mean"], CIFAR10_NORMALIZE["mean"])


# ----------------------------------------------------------------------------- 2. --ckpt_path last


def test_ckpt_path_last_looks_only_in_this_runs_directory(quick_run, capsys):
    """A new save_dir with nothing in it used to resume the newest last.ckpt of default_root_dir's runs."""
    other = quick_run / "b"
    code, err = exit_of(capsys, "fit", "--config", QUICKSTART, *TINY, "--trainer.max_steps", "3",
                        "--trainer.default_root_dir", str(quick_run / "a/runs/quickstart"),
                        "--trainer.logger.init_args.save_dir", str(other), "--ckpt_path", "last")
    assert code == 2 and "nothing to resume" in err and str(other / "quickstart") in err
    assert not any(other.rglob("*.ckpt"))


# ----------------------------------------------------------------------------- 3. Ctrl-C


class _Tiny(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(64, 4)), batch_size=4)


class _CtrlC(pl.Callback):
    """Presses Ctrl-C ``times`` times after optimiser step ``step``; counts the batches that ran."""

    def __init__(self, step: int, times: int = 1) -> None:
        self.step, self.times, self.batches = step, times, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.batches += 1
        if trainer.global_step == self.step:
            for _ in range(self.times):
                os.kill(os.getpid(), signal.SIGINT)


def _fit_with(tmp_path: Path, callback: pl.Callback) -> pl.Trainer:
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path, enable_checkpointing=False,
                         callbacks=[PreemptionCheckpoint(), callback])
    trainer.fit(_Tiny())
    return trainer


def test_ctrl_c_saves_like_sigterm_and_exits_130(tmp_path):
    """Ctrl-C used to stop inside the step, save nothing and exit with 1."""
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(SystemExit) as stop:
        _fit_with(tmp_path, _CtrlC(step=3))
    assert stop.value.code == 128 + signal.SIGINT
    assert torch.load(tmp_path / "checkpoints/last.ckpt", weights_only=True)["global_step"] == 3
    assert signal.getsignal(signal.SIGINT) is before  # the handler is put back


def test_a_second_ctrl_c_stops_at_once_without_a_checkpoint(tmp_path):
    callback = _CtrlC(step=3, times=2)
    with pytest.raises((SystemExit, KeyboardInterrupt)):
        _fit_with(tmp_path, callback)
    assert callback.batches == 3 and not (tmp_path / "checkpoints/last.ckpt").exists()


# ----------------------------------------------------------------------------- 4 and 11. run directory, logger


def test_default_root_dir_is_where_the_run_writes(tmp_path, monkeypatch):
    """The shared logger hard-coded ``save_dir: runs``: the output landed in ``./runs/<name>``."""
    monkeypatch.chdir(tmp_path)
    main(["fit", "--config", QUICKSTART, *TINY, "--trainer.max_steps", "1", "--trainer.limit_val_batches", "0",
          "--trainer.default_root_dir", str(tmp_path / "mine")])
    assert (tmp_path / "mine/quickstart/version_0/checkpoints/last.ckpt").exists()
    assert not (tmp_path / "runs").exists()


def test_no_config_sets_default_root_dir():
    """The run directory is ``<default_root_dir or runs>/<logger name>``: a config's ``default_root_dir:
    runs/<name>`` would nest it (``runs/<name>/<name>``) and take the choice from the command line."""
    import yaml

    configs = sorted((REPO / "configs").rglob("*.yaml"))
    assert configs
    for config in configs:
        trainer = (yaml.safe_load(config.read_text()) or {}).get("trainer") or {}
        assert "default_root_dir" not in trainer, config


def test_no_logger_means_no_learning_rate_monitor(tmp_path):
    """``--trainer.logger false``: "Cannot use LearningRateMonitor callback with Trainer that has no logger"."""
    cli = run_cli(["fit", "--config", QUICKSTART, *TINY, "--trainer.max_steps", "1", "--trainer.limit_val_batches",
                   "0", "--trainer.default_root_dir", str(tmp_path), "--trainer.logger", "false"])
    assert cli.trainer.global_step == 1 and not cli.trainer.loggers
    assert (tmp_path / "checkpoints").is_dir()


# ----------------------------------------------------------------------------- 7 and 13. mvssl-eval output

KNN_QUICK = str(REPO / "configs/eval/knn_quickstart.yaml")
LINEAR_QUICK = str(REPO / "configs/eval/linear_quickstart.yaml")
EVAL_TINY = ["--data.num_workers", "0", "--data.train_subset", "64", "--data.val_subset", "32",
             "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def _eval_exit(capsys, *args: str) -> tuple[int, str]:
    from mvssl_lightning.evaluation.cli import main as eval_main

    with pytest.raises(SystemExit) as stop:
        eval_main(list(args))
    return int(stop.value.code or 0), capsys.readouterr().err


def _one_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.startswith("mvssl-eval: error:")]
    assert len(lines) == 1 and "Given value" not in err and "Traceback" not in err, err[-3000:]
    return lines[0]


def _bad_checkpoints(quick_run: Path) -> dict[str, tuple[Path, str]]:
    good = quick_run / "a/runs/quickstart/version_0/checkpoints/last.ckpt"
    truncated = quick_run / "truncated.ckpt"
    truncated.write_bytes(good.read_bytes()[:50_000])
    evaluation = quick_run / "eval_run.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"checkpoint": str(good), "num_classes": 10},
                "pytorch-lightning_version": "2.6.0"}, evaluation)
    return {
        "missing": (quick_run / "missing.ckpt", "FileNotFoundError: checkpoint not found"),
        "truncated": (truncated, "is not a checkpoint readable with torch.load"),
        "evaluation": (evaluation, "is a checkpoint of an evaluation run (mvssl-eval), not of pre-training"),
        "stem": (good, "but the evaluation asks for cifar_stem=True"),
    }


@pytest.mark.parametrize("case", ["missing", "truncated", "evaluation", "stem"])
def test_mvssl_eval_errors_are_one_line(quick_run, capsys, case):
    """They used to be an 80-line jsonargparse traceback ending in ``Given value: Namespace(...)``."""
    path, expected = _bad_checkpoints(quick_run)[case]
    extra = ["--model.cifar_stem", "true"] if case == "stem" else []
    code, err = _eval_exit(capsys, "validate", "--config", KNN_QUICK, *EVAL_TINY, "--model.checkpoint", str(path),
                           *extra, "--trainer.default_root_dir", str(quick_run / "eval"))
    assert code == 2 and expected in _one_error_line(err)


def test_mvssl_eval_validate_prints_each_metric_once_and_the_results_file(quick_run, capsys, caplog):
    from mvssl_lightning.evaluation.cli import main as eval_main

    out_dir = quick_run / "knn"
    with caplog.at_level(logging.INFO):
        eval_main(["validate", "--config", KNN_QUICK, *EVAL_TINY, "--trainer.default_root_dir", str(out_dir),
                   "--model.checkpoint", str(quick_run / "a/runs/quickstart/version_0/checkpoints/last.ckpt")])
    out = capsys.readouterr().out
    assert "DataLoader" not in out and out.count("knn/top1") == 1, out
    results = out_dir / "knn_quickstart/version_0/eval_results.json"
    assert results.is_file() and f"results: {results}" in out
    # the resolution it evaluates at, and why: the checkpoint's pre-training (32 px, CIFAR-10 statistics)
    assert "images at 32 px (from the checkpoint's pre-training)" in caplog.text


# ----------------------------------------------------------------------------- 5. label lists


def _folder(root: Path) -> Path:
    for split in ("train", "val"):
        for cls, files in {"airplane": ["0001.png", "0002.png"], "dog": ["0001.png", "0003.png"]}.items():
            (root / split / cls).mkdir(parents=True)
            for f in files:
                Image.new("RGB", (20, 20), (10, 200, 30)).save(root / split / cls / f)
    return root


def test_label_list_entries_are_relative_paths(tmp_path):
    """``dog/0001.png`` used to select ``airplane/0001.png`` (the first folder with that file name)."""
    root = _folder(tmp_path / "data")
    listing = tmp_path / "list.txt"
    listing.write_text("dog/0001.png\n0002.png\n")
    data = LabeledDataModule("imagefolder", data_dir=str(root), label_list=str(listing), num_workers=0)
    data.setup()
    kept = sorted("/".join(Path(data.train_dataset.dataset.samples[i][0]).parts[-2:])
                  for i in data.train_dataset.indices)
    assert kept == ["airplane/0002.png", "dog/0001.png"]


def test_an_ambiguous_bare_file_name_is_an_error_listing_the_candidates(tmp_path):
    root = _folder(tmp_path / "data")
    listing = tmp_path / "list.txt"
    listing.write_text("0001.png\n")
    with pytest.raises(ValueError, match=r"list.txt: 1 of 1 entries name more than one image of the training split: "
                                         r"0001.png \(2 images: airplane/0001.png, dog/0001.png\); write them as class/file"):
        LabeledDataModule("imagefolder", data_dir=str(root), label_list=str(listing), num_workers=0).setup()


# ----------------------------------------------------------------------------- 12. callbacks and foreign code


class _AlwaysTransforms(torch.utils.data.Dataset):
    """A user's dataset whose ``__getitem__`` always calls ``self.transform``."""

    def __init__(self) -> None:
        import torchvision.transforms as T

        self.transform = T.ToTensor()
        self.images = [Image.new("RGB", (8, 8), (i * 20, 50, 100)) for i in range(12)]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.transform(self.images[i]), i % 3


class _Encoder(pl.LightningModule):
    def __init__(self, returns_tuple: bool = False) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(3 * 8 * 8, 6)
        self.returns_tuple = returns_tuple

    def forward(self, x):
        h = self.layer(x.flatten(1))
        return (h, h) if self.returns_tuple else h

    def training_step(self, batch, batch_idx):
        return self(batch[0])[0].pow(2).mean() if self.returns_tuple else self(batch[0]).pow(2).mean()

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        pass

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class _Data(pl.LightningDataModule):
    def __init__(self) -> None:
        super().__init__()
        self.dataset = _AlwaysTransforms()
        self.view_transform = lambda image: [torch.zeros(3, 8, 8), torch.ones(3, 8, 8)]

    def train_dataloader(self):
        return torch.utils.data.DataLoader(self.dataset, batch_size=4)

    def val_dataloader(self):
        return torch.utils.data.DataLoader(self.dataset, batch_size=4)


def _trainer(callback: pl.Callback, tmp_path: Path) -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                      default_root_dir=tmp_path, callbacks=[callback])


def test_diagnostics_leave_a_users_dataset_alone(tmp_path):
    """It used to read a copy with ``transform = None``: a dataset that always calls it crashed."""
    from mvssl_lightning.callbacks import RepresentationDiagnostics

    data = _Data()
    trainer = _trainer(RepresentationDiagnostics(num_samples=8, dataloader_idx=0, projector=None), tmp_path)
    trainer.validate(_Encoder(), datamodule=data)
    assert "diag/backbone/rankme" in trainer.callback_metrics
    assert "diag/backbone/alignment" not in trainer.callback_metrics  # no untransformed images: skipped
    assert callable(data.dataset.transform)


def test_a_forward_returning_a_tuple_is_a_one_line_error(tmp_path):
    """The probe used to crash with ``'tuple' object has no attribute 'detach'``."""
    from mvssl_lightning.callbacks import OnlineLinearProbe

    with pytest.raises(TypeError, match=r"_Encoder.forward\(x\) returned a tuple, but the probe, kNN and diagnostics "
                                        r"read forward\(x\) -> Tensor \(B, D\) features"):
        _trainer(OnlineLinearProbe(num_classes=3), tmp_path).fit(_Encoder(returns_tuple=True), datamodule=_Data())


# ----------------------------------------------------------------------------- 8. a method switch with views: auto


def test_infomin_on_the_quickstart_stops_before_any_validation_naming_the_flag(tmp_path, capsys):
    """It used to fail with "needs 11 views, the recipe gave 2" after the start-of-run validation."""
    code, err = exit_of(capsys, "fit", "--config", QUICKSTART, *TINY, "--validate_at_start", "true",
                        "--model.class_path", "mvssl_lightning.methods.InfoMin", "--trainer.max_steps", "1",
                        "--trainer.default_root_dir", str(tmp_path))
    line = err.strip().splitlines()[-1]
    assert code == 2 and line.startswith("mvssl: error: InfoMin needs 11 views per sample, but the view recipe "
                                         "'infomin_cifar' gave 2")
    assert "--model.jigsaw false" in line and "--data.view_kwargs '{jigsaw: true}'" in line
    assert not any(tmp_path.rglob("*.ckpt"))


def test_infomin_on_the_quickstart_trains_with_the_named_flag(tmp_path):
    cli = run_cli(["fit", "--config", QUICKSTART, *TINY, "--model.class_path", "mvssl_lightning.methods.InfoMin",
                   "--data.view_kwargs", "{jigsaw: true}", "--trainer.max_steps", "1", "--trainer.limit_val_batches",
                   "0", "--trainer.default_root_dir", str(tmp_path)])
    assert cli.trainer.global_step == 1 and cli.datamodule.num_views == 11


def test_an_error_our_code_raises_from_a_library_error_keeps_our_message():
    """Only jsonargparse's wrapper is unwrapped: a setup-time ``raise ValueError(<ours>) from <library error>``
    (a truncated npz, say) is not replaced by the library error's text."""
    from mvssl_lightning.core.cli_output import error_line

    try:
        try:
            raise OSError("Bad magic number for central directory")
        except OSError as inner:
            raise ValueError("data/x.npz is not a readable .npz file (truncated?)") from inner
    except ValueError as error:
        assert error_line("mvssl", error) is None  # re-raised: the traceback ends with our message
