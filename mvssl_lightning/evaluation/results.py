"""``EvalResultsWriter``: one JSON file with the outcome of an evaluation run, next to its logs.

After ``fit`` (once training, and its last validation, are done) and after ``validate``, process 0
writes ``<log_dir>/<filename>`` (``trainer.log_dir``: e.g. ``runs/eval/<name>/version_<n>``; the
trainer's ``default_root_dir`` without a logger)::

    {"stage": "fit" | "validate", "top1": ..., "top5": ...,     # val/top1 (linear) or knn/top1 (kNN)
     "metrics": {every logged scalar}, "epoch": ..., "global_step": ..., "val_global_step": ...,
     "checkpoint": {"path", "sha256", "kind", "method", "backbone", "cifar_stem", ...},
     "model": "mvssl_lightning.evaluation.LinearEval", "wall_time_s": ..., "finished_at": ...,
     "config": {the resolved configuration, when run by mvssl-eval}}

``wall_time_s`` runs from the callback's ``setup`` (the start of ``fit`` / ``validate``) to the write;
``val_global_step`` is the training step at which the reported validation ran (after ``fit`` it equals
``global_step`` when the last epoch was validated: choose ``check_val_every_n_epoch`` dividing ``max_epochs``).
"""

from __future__ import annotations

import datetime
import json
import math
import time
from pathlib import Path
from typing import Any, Optional

import lightning.pytorch as pl
from torch import Tensor
from typing_extensions import override

__all__ = ["EvalResultsWriter"]


def _scalar(value: Any) -> Optional[float]:
    if isinstance(value, Tensor):
        if value.numel() != 1:
            return None
        value = value.item()
    if isinstance(value, (int, float)) and math.isfinite(float(value)):
        return float(value)
    return None


class EvalResultsWriter(pl.Callback):
    """Writes ``<log_dir>/<filename>`` after ``fit`` and ``validate`` (module docstring).

    Args:
        filename: name of the JSON file.

    ``config`` (attribute): the resolved configuration to embed; the ``mvssl-eval`` command sets it.
    ``path`` (attribute): where the last file was written.
    """

    def __init__(self, filename: str = "eval_results.json") -> None:
        super().__init__()
        if not filename or Path(filename).name != filename:
            raise ValueError(f"filename must be a plain file name, got {filename!r}")
        self.filename = filename
        self.config: Optional[dict] = None
        self.path: Optional[Path] = None
        self._start = time.perf_counter()
        self._val_step: Optional[int] = None

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._start = time.perf_counter()

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._write(trainer, pl_module, "fit")

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self._val_step = trainer.global_step
        if trainer.state.fn == "validate":
            self._write(trainer, pl_module, "validate")

    def results(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> dict[str, Any]:
        """The dict that is written (see the module docstring)."""
        metrics = {k: v for k, v in ((k, _scalar(v)) for k, v in trainer.callback_metrics.items()) if v is not None}
        prefix = "val" if "val/top1" in metrics else "knn"
        source = getattr(pl_module, "source", None)
        cls = type(pl_module)
        return {
            "stage": stage,
            "top1": metrics.get(f"{prefix}/top1"),
            "top5": metrics.get(f"{prefix}/top5"),
            "metrics": dict(sorted(metrics.items())),
            "epoch": trainer.current_epoch,
            "global_step": trainer.global_step,
            "val_global_step": self._val_step,
            "checkpoint": source.as_dict() if source is not None and hasattr(source, "as_dict") else None,
            "model": f"{cls.__module__}.{cls.__qualname__}",
            "wall_time_s": round(time.perf_counter() - self._start, 3),
            "finished_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "config": self.config,
        }

    def _write(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        run_dir = trainer.log_dir  # a collective under DDP: every process asks
        if not trainer.is_global_zero:
            return
        log_dir = Path(run_dir or trainer.default_root_dir)
        log_dir.mkdir(parents=True, exist_ok=True)
        self.path = log_dir / self.filename
        self.path.write_text(json.dumps(self.results(trainer, pl_module, stage), indent=2, default=str) + "\n")
