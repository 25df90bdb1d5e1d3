"""The few things the library needs from Lightning (and torch) that have no public API, in one place.

Each function names the internal it reads; ``tests/test_compat.py`` pins their behaviour on the installed
Lightning version, so an upgrade that moves an internal fails there, by name, instead of somewhere in a
training run.

* :func:`load_train_dataloader`: ``trainer.fit_loop.setup_data()``. ``Trainer.estimated_stepping_batches``
  loads the train loader itself, except for runs bounded by ``max_steps`` alone (``max_epochs=-1``), where
  the learning-rate schedule still needs the epoch length.
* :func:`batches_done`: ``trainer.fit_loop.epoch_loop.batch_progress.current.processed``, the batches of
  the current epoch whose step was taken; a mid-epoch checkpoint records it so the data order resumes
  exactly (Lightning restores its own loops, not a sampler's position).
* :func:`is_compiled`: ``nn.Module._compiled_call_impl`` (torch), set by ``nn.Module.compile()``, the
  in-place compile that keeps parameter names (``torch.compile(module)`` wraps and renames them).
* :func:`litdata_fs_provider`: ``litdata.streaming.fs_provider._get_fs_provider`` (LitData), the object-store
  client LitData reads and writes shards with, so that our metadata file next to the shards follows the
  same credentials rules.

One more internal is worked around, not called: LightningCLI's ``_parse_ckpt_path`` step, which runs
between the public ``parse_arguments`` and ``before_instantiate_classes`` hooks and would replace the
configured model with a checkpoint's hyperparameters; ``mvssl_lightning.cli`` holds the checkpoint path
back across it (``tests/test_compat.py`` pins that order).
"""

from __future__ import annotations

from typing import Any, Optional

from torch import nn

__all__ = ["attached_trainer", "batches_done", "is_compiled", "litdata_fs_provider", "load_train_dataloader"]


def attached_trainer(module: Any) -> Optional[Any]:
    """The ``Trainer`` a ``LightningModule`` is attached to, or None (``module.trainer`` raises when there
    is none)."""
    try:
        return module.trainer
    except RuntimeError:
        return None


def load_train_dataloader(trainer: Any) -> None:
    """Make ``trainer.train_dataloader`` and ``trainer.num_training_batches`` available during ``fit``."""
    if trainer.train_dataloader is None:
        trainer.fit_loop.setup_data()


def batches_done(trainer: Any) -> int:
    """Training batches of the current epoch whose optimiser step was taken (Lightning's batch progress)."""
    epoch_loop = getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None)
    return int(epoch_loop.batch_progress.current.processed) if epoch_loop is not None else 0


def is_compiled(module: nn.Module) -> bool:
    """Whether ``module.compile()`` was called on this module."""
    return getattr(module, "_compiled_call_impl", None) is not None


def litdata_fs_provider(path: str, storage_options: Optional[dict] = None) -> Any:
    """LitData's file-system provider of an object-store URI (``s3://``, ``gs://``, ``r2://``): the client it
    reads and writes shards with. LitData has no public name for it."""
    from litdata.streaming.fs_provider import _get_fs_provider

    return _get_fs_provider(path, storage_options)
