"""Learning-rate scaling and step counting from the ``Trainer``, shared by pre-training and evaluation.

The papers give the learning rate at a reference batch of 256 and scale it with the global batch::

    B_global = batch_size x world_size x accumulate_grad_batches
    lr = lr_0 x B_global / 256          (linear: Goyal et al. 2017; MVEB, MEC, InfoMin, linear evaluation)
    lr = lr_0 x sqrt(B_global / 256)    (sqrt)

and count their schedules in optimiser steps: ``steps_per_epoch = ceil(train batches /
accumulate_grad_batches)``, ``total_steps = Trainer.estimated_stepping_batches``.
"""

from __future__ import annotations

import math
from typing import Any, Literal, Optional

from mvssl_lightning.core.compat import load_train_dataloader

__all__ = ["LRScaling", "epochs_to_steps", "per_process_batch_size", "scaled_lr", "steps_per_epoch", "total_steps"]

LRScaling = Literal["linear", "sqrt", "none"]


def per_process_batch_size(trainer: Any, given: Optional[int] = None) -> Optional[int]:
    """``given`` when set, else the ``batch_size`` attribute of the trainer's data module (None if neither)."""
    if given is not None:
        return given
    batch_size = getattr(getattr(trainer, "datamodule", None), "batch_size", None)
    return batch_size if isinstance(batch_size, int) else None


def scaled_lr(
    lr: float, scaling: str, trainer: Any, batch_size: Optional[int] = None, reference_batch_size: int = 256
) -> float:
    """``lr`` scaled by the global batch (module docstring); ``batch_size`` is the per-process batch
    (read from the data module when None)."""
    if scaling == "none":
        return lr
    per_process = per_process_batch_size(trainer, batch_size)
    if per_process is None:
        raise ValueError(
            f"lr_scaling={scaling!r} needs the per-process batch size: set model.batch_size or use a data "
            f"module with a batch_size attribute, or set lr_scaling: none"
        )
    ratio = per_process * trainer.world_size * trainer.accumulate_grad_batches / reference_batch_size
    if scaling == "linear":
        return lr * ratio
    if scaling == "sqrt":
        return lr * math.sqrt(ratio)
    raise ValueError(f"lr_scaling must be one of linear, sqrt, none; got {scaling!r}")


def total_steps(trainer: Any) -> int:
    """Optimiser steps of the whole run (``Trainer.estimated_stepping_batches``, at least 1)."""
    return max(int(trainer.estimated_stepping_batches), 1)


def steps_per_epoch(trainer: Any) -> int:
    """Optimiser steps per epoch: ``ceil(train batches / accumulate_grad_batches)``.

    A run bounded by ``max_steps`` alone never loads the train loader to estimate its length, so it is
    loaded here (:func:`~mvssl_lightning.core.compat.load_train_dataloader`). Loaders without a length
    fall back to ``total steps / max_epochs`` (or the whole run).
    """
    total = total_steps(trainer)
    load_train_dataloader(trainer)
    batches = trainer.num_training_batches
    if math.isfinite(batches):
        return max(math.ceil(batches / trainer.accumulate_grad_batches), 1)
    max_epochs = trainer.max_epochs
    return max(total // max_epochs, 1) if max_epochs and max_epochs > 0 else total


def epochs_to_steps(trainer: Any, epochs: float) -> int:
    """``epochs`` (fractional) as a number of optimiser steps, capped at the run's total."""
    return min(int(round(epochs * steps_per_epoch(trainer))), total_steps(trainer))
