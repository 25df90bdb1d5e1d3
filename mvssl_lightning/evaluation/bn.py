"""BatchNorm of an evaluated backbone: its mode while the classifier trains, and re-estimating its statistics.

``encoder_bn`` (:class:`~mvssl_lightning.evaluation.LinearEval`, :class:`~mvssl_lightning.evaluation.FineTune`)
says what the backbone's BatchNorm layers do while the classifier trains; the backbone's other layers keep the
module's mode (frozen backbone: eval), and every layer is in eval mode during validation:

* ``eval``: the running statistics of pre-training normalise every batch and never move (MVEB ``lineval.py``,
  MEC ``main_lincls.py``, InfoMin ``main_linear.py``, DINO ``eval_linear.py``: ``model.eval()`` throughout);
* ``train``: each training batch is normalised with its own statistics, and the running statistics follow
  them (``torch.nn.BatchNorm``, momentum ``m`` = 0.1 unless the layer says otherwise)::

      y = (x - mean_B(x)) / sqrt(var_B(x) + eps) * gamma + beta       var_B: biased, over the batch (and pixels)
      running_mean <- (1 - m) running_mean + m mean_B(x)
      running_var  <- (1 - m) running_var  + m var_B(x) n / (n - 1)   n: values per channel in the batch

  This is AMDIM's classifier training (``Philip-Bachman/amdim-public``: ``task_classifiers.py`` l.40 calls
  ``model(x1, x2, class_only=True)`` with the model in train mode, ``model.py`` ``encode`` l.208-222 runs the
  encoder under ``no_grad`` without ``use_eval``, so gradients stay out of the encoder while its BatchNorm
  statistics move) and the semi-supervised fine-tuning protocols (Barlow Twins ``evaluate.py`` l.154-155).

**Re-estimation** (:func:`reestimate_batchnorm`, ``bn_reestimate_batches = N``): before each validation the
model runs ``N`` batches of the evaluation split with its BatchNorm layers in train mode, under ``no_grad``,
and nothing else; the running statistics continue from where they are (no reset), so after batches
``1..N`` with batch statistics ``s_i``::

    running_N = (1 - m)^N running_0 + sum_i m (1 - m)^(N - i) s_i          (m = 0.1: 0.9^50 = 0.005 of running_0)

AMDIM's ``utils.py`` ``test_model`` l.13-14 calls ``_warmup_batchnorm(model, test_loader, device, batches=50)``
(l.47-59: ``model.train()``, 50 batches of the test loader through the whole model, encoder and both
classifiers) and then tests in eval mode (l.23). Its test loader is shuffled and drops the last batch
(``datasets.py`` l.261-267), so each re-estimation sees 50 fresh random full batches; here the batches are the
first ``N`` full batches of the permutation ``torch.randperm(len(split), generator=manual_seed(seed))``, with
``seed = bn_reestimate_seed + current_epoch``: random like the official loader, the same on every process and
in every re-run. The batch size is the evaluation loader's (per process). Under ``nn.DataParallel`` the official
running statistics come from device 0's share of each batch (its replica is the module itself), so with the
official 480 over 4 GPUs they are statistics of 120 images; here each process draws the same ``N`` batches of
its own (per-process) batch size, which is the same number with ``data.batch_size: 120`` on 4 processes, and
process 0's result is broadcast so that every process validates with the same statistics.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

__all__ = [
    "BATCHNORM_TYPES",
    "EncoderBN",
    "batchnorm_buffers",
    "batchnorm_layers",
    "reestimate_batchnorm",
    "reestimation_indices",
    "reestimation_loader",
    "restore_modes",
    "set_batchnorm_mode",
]

#: ``train``: BatchNorm on each training batch's statistics, running statistics updated; ``eval``: fixed.
EncoderBN = Literal["train", "eval"]

#: the BatchNorm layers (timm's ``BatchNormAct2d`` subclasses ``BatchNorm2d``)
BATCHNORM_TYPES: tuple[type[nn.Module], ...] = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def batchnorm_layers(module: nn.Module) -> list[nn.Module]:
    """Every BatchNorm layer of ``module`` (itself included), in ``modules()`` order."""
    return [m for m in module.modules() if isinstance(m, BATCHNORM_TYPES)]


def batchnorm_buffers(module: nn.Module) -> list[Tensor]:
    """The running statistics (``running_mean``, ``running_var``, ``num_batches_tracked``) of every BatchNorm
    layer of ``module`` that tracks them."""
    out: list[Tensor] = []
    for layer in batchnorm_layers(module):
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            value = getattr(layer, name, None)
            if isinstance(value, Tensor):
                out.append(value)
    return out


def set_batchnorm_mode(module: nn.Module, training: bool) -> None:
    """Put every BatchNorm layer of ``module`` in train (``training=True``) or eval mode; other layers keep theirs."""
    for layer in batchnorm_layers(module):
        layer.train(training)


@contextlib.contextmanager
def restore_modes(module: nn.Module) -> Iterator[None]:
    """Restore every submodule's train/eval flag when the block ends (whatever the block changed)."""
    modes = [(m, m.training) for m in module.modules()]
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def reestimation_indices(n: int, batches: int, batch_size: int, seed: int) -> list[int]:
    """The samples of the re-estimation batches: the first ``batches * batch_size`` entries (fewer when the split
    is smaller: the full batches that fit) of ``torch.randperm(n)`` drawn from ``manual_seed(seed)``."""
    if batches < 1 or batch_size < 1:
        raise ValueError(f"need batches >= 1 and batch_size >= 1, got {batches} and {batch_size}")
    usable = min(batches, n // batch_size) * batch_size
    order = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    return order[:usable].tolist()


def reestimation_loader(loader: Any, batches: int, seed: int) -> DataLoader:
    """A loader of ``batches`` full random batches of ``loader``'s dataset (:func:`reestimation_indices`), with its
    batch size, workers and collate function."""
    dataset = getattr(loader, "dataset", None)
    batch_size = getattr(loader, "batch_size", None)
    if dataset is None or not isinstance(batch_size, int):
        raise ValueError(
            f"BatchNorm re-estimation reads images from the evaluation loader's dataset, but the loader is a "
            f"{type(loader).__name__} without dataset / batch_size (cached features have no images: set "
            "model.cache_features: false)"
        )
    indices = reestimation_indices(len(dataset), batches, batch_size, seed)
    workers = int(getattr(loader, "num_workers", 0))
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=indices,  # a list of indices is a valid sampler
        drop_last=True,
        num_workers=workers,
        collate_fn=getattr(loader, "collate_fn", None),
        pin_memory=bool(getattr(loader, "pin_memory", False)),
        worker_init_fn=getattr(loader, "worker_init_fn", None),
    )


@torch.no_grad()
def reestimate_batchnorm(forward: Callable[[Tensor], Any], loader: Any, device: torch.device,
                         dtype: torch.dtype = torch.float32) -> int:
    """Run ``forward`` on the images of every ``(images, labels)`` batch of ``loader`` (moved to ``device`` and
    cast to ``dtype``) without gradients, and return the number of batches. The caller sets the modes: the
    BatchNorm layers to re-estimate in train mode (module docstring)."""
    count = 0
    for batch in loader:
        images = batch[0] if isinstance(batch, (list, tuple)) else batch
        forward(images.to(device=device, dtype=dtype, non_blocking=True))
        count += 1
    return count
