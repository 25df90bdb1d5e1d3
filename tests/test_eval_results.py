"""``eval_results.json`` records the best and the last validation of an evaluation run, and says which one
the protocol's paper reports.

The reference is the sequence of validation top-1 values the Trainer itself logged (read by an independent
callback at every validation end): ``best`` must be its maximum (the earliest on a tie), ``last`` its final
entry.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch

from mvssl_lightning.evaluation.cli import run_cli
from mvssl_lightning.evaluation.results import EvalResultsWriter

REPO = Path(__file__).resolve().parents[1]


def _validation(writer: EvalResultsWriter, top1: float, epoch: int) -> None:
    trainer = SimpleNamespace(callback_metrics={"val/top1": torch.tensor(top1), "val/top5": torch.tensor(0.9)},
                              current_epoch=epoch, global_step=10 * (epoch + 1))
    writer._record(trainer)  # what on_validation_end does during fit


def test_best_is_the_highest_top1_and_the_earliest_on_a_tie_and_survives_a_resume():
    writer = EvalResultsWriter(report="best")
    for epoch, top1 in enumerate([0.30, 0.50, 0.40, 0.50, 0.45]):
        _validation(writer, top1, epoch)
    assert writer.best["epoch"] == 1 and writer.best["top1"] == pytest.approx(0.50)
    assert writer.last["epoch"] == 4 and writer.last["top1"] == pytest.approx(0.45)
    resumed = EvalResultsWriter(report="best")
    resumed.load_state_dict(writer.state_dict())
    _validation(resumed, 0.55, 5)
    assert resumed.best["epoch"] == 5 and resumed.last["epoch"] == 5
    line = writer.summary_line()
    assert "last: top-1 0.4500" in line and "best: top-1 0.5000" in line and "(epoch 1)" in line
    with pytest.raises(ValueError, match="report must be 'last' or 'best'"):
        EvalResultsWriter(report="max")


class SeenTop1(pl.Callback):
    """The reference: every validation's logged top-1, as the Trainer holds it."""

    def __init__(self) -> None:
        self.top1: list[tuple[int, float]] = []

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.top1.append((trainer.current_epoch, float(trainer.callback_metrics["val/top1"])))


def test_the_command_writes_best_and_last_and_prints_both(tmp_path, capsys):
    cli = run_cli([
        "fit", "--config", str(REPO / "configs/eval/linear_quickstart.yaml"), "--model.checkpoint", "null",
        "--model.backbone", "resnet18", "--model.cifar_stem", "true", "--model.backbone_kwargs", "{width: 8}",
        "--trainer.max_epochs", "4", "--trainer.check_val_every_n_epoch", "1", "--data.train_subset", "256",
        "--data.val_subset", "128", "--data.num_workers", "0", "--trainer.logger.init_args.save_dir", str(tmp_path),
        "--trainer.enable_progress_bar", "false", "--results.report", "best",
        "--trainer.callbacks+", '{"class_path": "tests.test_eval_results.SeenTop1"}',
    ])
    seen = next(c for c in cli.trainer.callbacks if type(c).__name__ == "SeenTop1").top1
    assert [epoch for epoch, _ in seen] == [0, 1, 2, 3]
    best_epoch, best_top1 = max(seen, key=lambda item: (item[1], -item[0]))  # the earliest of the highest
    path = Path(cli.trainer.log_dir) / "eval_results.json"
    results = json.loads(path.read_text())
    assert results["report"] == "best"
    assert results["last"]["epoch"] == 3 and results["last"]["top1"] == pytest.approx(seen[-1][1])
    assert results["best"]["epoch"] == best_epoch and results["best"]["top1"] == pytest.approx(best_top1)
    assert results["top1"] == pytest.approx(seen[-1][1])
    out = capsys.readouterr().out
    assert f"results: {path}" in out and "the paper reports the best" in out
