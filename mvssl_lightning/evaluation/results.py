"""``EvalResultsWriter``: one JSON file with the outcome of an evaluation run, next to its logs.

After ``fit`` (once training, and its last validation, are done) and after ``validate``, process 0
writes ``<log_dir>/<filename>`` (``trainer.log_dir``: e.g. ``runs/eval/<name>/version_<n>``; the
trainer's ``default_root_dir`` without a logger)::

    {"stage": "fit" | "validate", "top1": ..., "top5": ...,     # val/top1 (linear) or knn/top1 (kNN): the last
     "last": {"top1", "top5", "epoch", "global_step"},          # the last validation of the run
     "best": {"top1", "top5", "epoch", "global_step"},          # the validation with the highest top-1
     "report": "last" | "best",                                 # which of the two the protocol's paper reports
     "metrics": {every logged scalar}, "epoch": ..., "global_step": ..., "val_global_step": ...,
     "checkpoint": {"path", "sha256", "kind", "method", "backbone", "cifar_stem", ...},
     "model": "mvssl_lightning.evaluation.LinearEval", "wall_time_s": ..., "finished_at": ...,
     "config": {the resolved configuration, when run by mvssl-eval}}

Best and last: the official linear-evaluation loops of MVEB (``lineval.py``, every 10 epochs), MEC
(``main_lincls.py``, every epoch), DINO (``eval_linear.py``) and Barlow Twins (``evaluate.py``) report the best
validation top-1 over the run; others report the last epoch. Every validation of ``fit`` (sanity checks
excluded) updates ``best`` when its top-1 is higher (the earlier epoch wins a tie), and the record is part of
the callback's checkpoint state, so a resumed run keeps it. ``report`` (a setting of the protocol's config)
says which one the paper's number corresponds to; both are always written. At the end of ``fit`` process 0
prints one line with both and the file's path.

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
from typing import Any, Literal, Optional

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
        report: which validation the protocol's paper reports, ``last`` or ``best`` (written as ``report``;
            both are always recorded).

    ``config`` (attribute): the resolved configuration to embed; the ``mvssl-eval`` command sets it.
    ``path`` (attribute): where the last file was written.
    """

    def __init__(self, filename: str = "eval_results.json", report: Literal["last", "best"] = "last") -> None:
        super().__init__()
        if not filename or Path(filename).name != filename:
            raise ValueError(f"filename must be a plain file name, got {filename!r}")
        if report not in ("last", "best"):
            raise ValueError(f"report must be 'last' or 'best', got {report!r}")
        self.filename = filename
        self.report = report
        self.best: Optional[dict[str, Any]] = None
        self.last: Optional[dict[str, Any]] = None
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
        if trainer.is_global_zero and self.path is not None:
            print(self.summary_line(), flush=True)

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self._val_step = trainer.global_step
        if trainer.state.fn == "validate":
            self._write(trainer, pl_module, "validate")
        else:
            self._record(trainer)

    def _record(self, trainer: pl.Trainer) -> None:
        """Update ``last`` and ``best`` with this validation's top-1 / top-5."""
        metrics = {k: _scalar(v) for k, v in trainer.callback_metrics.items()}
        prefix = "val" if metrics.get("val/top1") is not None else "knn"
        top1 = metrics.get(f"{prefix}/top1")
        if top1 is None:
            return
        entry = {"top1": top1, "top5": metrics.get(f"{prefix}/top5"), "epoch": trainer.current_epoch,
                 "global_step": trainer.global_step}
        self.last = entry
        if self.best is None or top1 > self.best["top1"]:
            self.best = entry

    def summary_line(self) -> str:
        """``top-1 <last> (last, epoch e), best <best> (epoch e'); paper reports: <report>; results: <path>``."""
        def shown(entry: Optional[dict[str, Any]], label: str) -> str:
            if entry is None:
                return f"{label}: -"
            top5 = f", top-5 {entry['top5']:.4f}" if entry.get("top5") is not None else ""
            return f"{label}: top-1 {entry['top1']:.4f}{top5} (epoch {entry['epoch']})"

        return (f"evaluation finished: {shown(self.last, 'last')}; {shown(self.best, 'best')}; the paper reports the "
                f"{self.report}; results: {self.path}")

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "last": self.last}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best, self.last = state_dict.get("best"), state_dict.get("last")

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
            "last": self.last if stage == "fit" else None,
            "best": self.best if stage == "fit" else None,
            "report": self.report,
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
