"""Sharp edges a new user hits in the first hour: precision on a CPU, logs that confuse, one checkpoint
per run, and which settings came from where when switching methods."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from mvssl_lightning.cli import run_cli
from mvssl_lightning.core.precision import auto_precision, precision_for

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = str(REPO / "configs/quickstart.yaml")
TINY = [
    "--data.batch_size", "8", "--data.train_subset", "16", "--data.test_subset", "16", "--data.num_workers", "0",
    "--model.proj_hidden_dim", "32", "--model.proj_output_dim", "16", "--trainer.limit_val_batches", "1",
    "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
]

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore::DeprecationWarning")]


def cli(tmp_path: Path, *args: str):
    return run_cli([args[0], "--config", QUICKSTART, *TINY, "--trainer.default_root_dir", str(tmp_path),
                    "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"), *args[1:]])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallback")
def test_bf16_on_a_cpu_falls_back_to_32_bit_with_one_warning(tmp_path):
    assert auto_precision() == "32-true"
    assert precision_for("bf16-mixed", "gpu") == ("bf16-mixed", None)
    with pytest.warns(UserWarning, match=r"precision 'bf16-mixed' on the CPU runs many times slower"):
        result = cli(tmp_path, "fit", "--trainer.precision", "bf16-mixed", "--trainer.accelerator", "auto",
                     "--trainer.max_steps", "1")
    assert result.trainer.precision == "32-true"


def test_a_run_writes_one_checkpoint_and_no_placeholder_hp_metric(tmp_path):
    result = cli(tmp_path, "fit", "--trainer.max_epochs", "2")
    files = sorted(tmp_path.rglob("*.ckpt"))
    assert [p.name for p in files] == ["epoch=1-step=4.ckpt", "last.ckpt"]
    assert files[1].is_symlink() and files[1].resolve() == files[0].resolve()  # one file, and a link
    assert result.trainer.logger._default_hp_metric is False
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "runs/quickstart/version_0"))
    events.Reload()
    assert "hp_metric" not in events.Tags()["scalars"]


def test_validate_prints_each_metric_once(tmp_path, capsys):
    cli(tmp_path, "fit", "--trainer.max_epochs", "1")
    capsys.readouterr()
    cli(tmp_path, "validate", "--ckpt_path", "last")  # the trained probe comes with the checkpoint
    out = capsys.readouterr().out
    assert out.count("knn/top1") == 1 and out.count("probe/val_top1") == 1
    assert "DataLoader 1" not in out


def test_switching_the_method_reports_the_settings_that_are_not_its_own(tmp_path, caplog):
    with caplog.at_level(logging.INFO):
        cli(tmp_path, "fit", "--model.class_path", "mvssl_lightning.methods.MEC", "--data.views", "auto",
            "--trainer.max_steps", "1")
    report = [r.getMessage() for r in caplog.records if "differ from the method's recipe defaults" in r.getMessage()]
    assert len(report) == 1 and report[0].startswith("MEC:")
    assert "backbone='resnet18' (default 'resnet50')" in report[0] and "lr=1.0 (default 0.5)" in report[0]


# ----------------------------------------------------------------------------- the first run (summary)


def test_fit_validates_at_start_and_ends_with_a_summary_and_a_learning_curve_picture(tmp_path, capsys):
    from PIL import Image

    from mvssl_lightning.callbacks import RunSummary
    from mvssl_lightning.callbacks.summary import ACCURACIES
    from mvssl_lightning.core.plotting import plot_learning_curves

    # the quickstart config validates at start and carries a RunSummary with the offline probe
    result = cli(tmp_path, "fit", "--trainer.max_epochs", "2")
    (summary,) = [c for c in result.trainer.callbacks if isinstance(c, RunSummary)]
    assert summary.offline_probe
    assert [r["epoch"] for r in summary.rows] == ["init", 0, 1]
    init, last = summary.rows[0], summary.rows[-1]
    assert "knn/top1" in init and "offline_probe/top1" in init and "probe/val_top1" not in init  # untrained
    assert {"train/loss", "knn/top1", "probe/val_top1", "offline_probe/top1"} <= set(last)
    out = capsys.readouterr().out
    assert "Run summary" in out and "kNN top-1" in out and "checkpoint:" in out and "tensorboard --logdir" in out
    run_dir = tmp_path / "runs/quickstart/version_0"
    picture = run_dir / "learning_curves.png"
    with Image.open(picture) as image:
        assert image.format == "PNG" and image.size[0] > 300
    series = plot_learning_curves(summary.rows, tmp_path / "again.png", ACCURACIES)
    assert "loss" in series["losses"] and series["accuracies"] == ["kNN top-1", "probe top-1", "linear probe"]
