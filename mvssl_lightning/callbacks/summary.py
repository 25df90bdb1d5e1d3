"""``RunSummary``: what a run learned, in a table a person can read, and its learning curves as a picture.

After every validation it records, per epoch: the mean of every ``train/*`` term logged during the
epoch, the kNN and online-probe accuracies (``knn/top1``, ``probe/val_top1``) and, optionally, an
offline linear probe of the frozen features (``offline_probe``): a linear classifier fitted on the
validation bank's features and scored on the queries' with the library's fixed protocol
(:func:`mvssl_lightning.core.probe.linear_probe`), the same code at initialisation and
after training, so the two numbers compare.  A validation pass before the first training step (the
``mvssl`` command's ``validate_at_start: true``) is recorded as epoch ``init``.

At the end of ``fit`` (rank 0) it prints the table, where the checkpoint and the logs are and the next
commands to run, and writes into the run directory ``summary.json`` and ``learning_curves.png``
(matplotlib: loss terms, kNN and probe accuracies per epoch).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import lightning.pytorch as pl
import torch
from torch import Tensor
from typing_extensions import override

from mvssl_lightning.core.features import all_gather_cat, features_and_targets
from mvssl_lightning.core.plotting import plot_learning_curves

__all__ = ["RunSummary"]

#: accuracies shown in the table, in this order, if logged
ACCURACIES = {"knn/top1": "kNN top-1", "probe/val_top1": "probe top-1", "offline_probe/top1": "linear probe"}


class RunSummary(pl.Callback):
    """Per-epoch table, ``summary.json`` and ``learning_curves.png`` of a run (module docstring).

    Args:
        offline_probe: also fit the offline linear probe on the features of every validation
            (bank: loader 0, queries: loader 1); it keeps both in memory (``N x D`` floats), so leave
            it off for ImageNet-sized banks.
        probe_epochs: epochs of the offline probe (over the bank's features, batches of 256).
        plot: write ``learning_curves.png``.
        print_summary: print the table at the end of ``fit``.
        eval_config: the ``mvssl-eval`` config named in the suggested next command (e.g.
            ``configs/eval/linear_quickstart.yaml``).
    """

    def __init__(
        self,
        offline_probe: bool = False,
        probe_epochs: int = 30,
        plot: bool = True,
        print_summary: bool = True,
        eval_config: Optional[str] = None,
    ) -> None:
        super().__init__()
        self.eval_config = eval_config
        self.offline_probe = offline_probe
        self.probe_epochs = probe_epochs
        self.plot = plot
        self.print_summary = print_summary
        self.rows: list[dict[str, Any]] = []
        self._sums: dict[str, Tensor | float] = {}
        self._counts: dict[str, Tensor | int] = {}
        self._features: dict[int, list[tuple[Tensor, Tensor]]] = {0: [], 1: []}

    # ------------------------------------------------------------------ training terms
    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._sums, self._counts = {}, {}

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # summed where they are (no host sync per step); finite values only, read once per epoch
        for key, value in trainer.callback_metrics.items():
            if key.startswith("train/") and not key.endswith("_epoch") and isinstance(value, Tensor):
                if value.numel() == 1:
                    name = key.removesuffix("_step")
                    v = value.detach().double().reshape(())  # float64, as the Python floats it replaces
                    finite = torch.isfinite(v)
                    self._sums[name] = self._sums.get(name, 0.0) + torch.where(finite, v, torch.zeros_like(v))
                    self._counts[name] = self._counts.get(name, 0) + finite.long()

    # ------------------------------------------------------------------ validation
    @override
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._features = {0: [], 1: []}

    @override
    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not self.offline_probe or trainer.sanity_checking or dataloader_idx not in self._features:
            return
        f, y = features_and_targets(outputs, batch, pl_module)
        if f is not None and y is not None:
            self._features[dataloader_idx].append((f.detach().float(), y))

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        fitting = trainer.state.fn == "fit"
        row: dict[str, Any] = {"epoch": trainer.current_epoch if fitting else "init", "step": trainer.global_step}
        if fitting:
            counts = {k: int(n) for k, n in self._counts.items()}
            row.update({k: float(self._sums[k]) / counts[k] for k in sorted(self._sums) if counts[k]})
        for key in ACCURACIES:
            value = trainer.callback_metrics.get(key)
            if isinstance(value, Tensor) and value.numel() == 1:
                row[key] = float(value)
        if self.offline_probe:
            top1 = self._offline_probe(trainer, pl_module)
            if top1 is not None:
                row["offline_probe/top1"] = top1
                for logger in trainer.loggers:
                    logger.log_metrics({"offline_probe/top1": top1}, step=trainer.global_step)
        self._features = {0: [], 1: []}
        # epochs validated twice (e.g. a resumed run) keep the latest row
        self.rows = [r for r in self.rows if r["epoch"] != row["epoch"]] + [row]

    def _offline_probe(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Optional[float]:
        from mvssl_lightning.core.probe import linear_probe

        if not self._features[0] or not self._features[1]:
            return None
        bank = [torch.cat(t) for t in zip(*self._features[0], strict=True)]
        queries = [torch.cat(t) for t in zip(*self._features[1], strict=True)]
        bank_f, bank_y = all_gather_cat(trainer, pl_module, bank[0], bank[1])
        query_f, query_y = all_gather_cat(trainer, pl_module, queries[0], queries[1])
        labelled = bank_y[bank_y >= 0]
        if labelled.numel() == 0:
            return None
        classes = getattr(getattr(trainer, "datamodule", None), "num_classes", None)
        num_classes = classes if isinstance(classes, int) else int(torch.cat([labelled, query_y]).max()) + 1
        # validation runs under inference mode; the probe needs autograd on ordinary copies
        with torch.inference_mode(False):
            result = linear_probe(
                bank_f.clone(), bank_y.clone(), query_f.clone(), query_y.clone(), num_classes, epochs=self.probe_epochs
            )
        return result.test_top1

    # ------------------------------------------------------------------ the end
    @override
    def state_dict(self) -> dict[str, Any]:
        return {"rows": self.rows}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = list(state_dict.get("rows", []))

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        run_dir = trainer.log_dir  # a collective under DDP: every process asks
        if not trainer.is_global_zero:
            return
        log_dir = Path(run_dir) if run_dir else Path(trainer.default_root_dir)
        checkpoint = getattr(trainer.checkpoint_callback, "last_model_path", "") or ""
        if not self.rows:  # no validation ran (e.g. a dataset without an evaluation split): still say where things are
            if self.print_summary and trainer.state.stage != "sanity_check":
                print(format_files(log_dir, checkpoint, None, self.eval_config,
                                   "Run summary: no validation ran, so there are no accuracies to show."))
            return
        log_dir.mkdir(parents=True, exist_ok=True)
        summary = {"rows": self.rows, "log_dir": str(log_dir), "checkpoint": checkpoint}
        (log_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        picture = log_dir / "learning_curves.png"
        if self.plot:
            plot_learning_curves(self.rows, picture, ACCURACIES)
        if self.print_summary:
            print(format_summary(self.rows, log_dir, checkpoint, picture if self.plot else None, self.eval_config))


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else ("-" if value is None else str(value))


def format_summary(
    rows: list[dict[str, Any]],
    log_dir: Path,
    checkpoint: str,
    picture: Optional[Path],
    eval_config: Optional[str] = None,
) -> str:
    """The end-of-fit text: a table of epochs (loss, accuracies), the files, and the next commands."""
    columns = [("epoch", "epoch"), ("train/loss", "loss")]
    columns += [(k, v) for k, v in ACCURACIES.items() if any(k in r for r in rows)]
    widths = [max(len(title), *(len(_fmt(r.get(key))) for r in rows)) for key, title in columns]
    lines = ["", "Run summary (accuracies on the test split):"]
    lines.append("  ".join(title.rjust(w) for (_, title), w in zip(columns, widths, strict=True)))
    for r in rows:
        lines.append("  ".join(_fmt(r.get(key)).rjust(w) for (key, _), w in zip(columns, widths, strict=True)))
    first, last = rows[0], rows[-1]
    for key, title in ACCURACIES.items():
        if first is not last and key in first and key in last:
            lines.append(f"{title}: {first[key]:.3f} at epoch {first['epoch']} -> {last[key]:.3f} "
                         f"({last[key] - first[key]:+.3f})")
    return "\n".join([*lines, format_files(log_dir, checkpoint, picture, eval_config)])


def format_files(log_dir: Path, checkpoint: str, picture: Optional[Path], eval_config: Optional[str] = None,
                 heading: Optional[str] = None) -> str:
    """Where the run's logs and checkpoint are, and the next commands (after ``heading`` when given)."""
    lines = ["", heading] if heading else []
    lines.append(f"logs: {log_dir}" + (f"   learning curves: {picture}" if picture else ""))
    if checkpoint:
        lines.append(f"checkpoint: {checkpoint}")
    lines.append(f"next: tensorboard --logdir {log_dir.parent}")
    if checkpoint:
        config = eval_config or "configs/eval/<protocol>.yaml"
        lines.append(f"      mvssl-eval fit --config {config} --model.checkpoint {checkpoint}")
    return "\n".join(lines)
