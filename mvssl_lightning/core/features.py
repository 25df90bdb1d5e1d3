"""Features, below callbacks and evaluation: getting ``(features, targets)`` out of a step, encoding a
whole loader, gathering across processes, and checking labels.

Features come from the step's ``outputs["features"]`` when the method returned them (the library's
contract), else from ``pl_module(x)`` under ``no_grad`` in eval mode (a user's own module).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Optional, cast

import lightning.pytorch as pl
import torch
from torch import Tensor, nn


def split_batch(batch: Any) -> tuple[Optional[Tensor], Optional[Tensor]]:
    """Return ``(x, y)`` of an ``(inputs, targets, ...)`` batch; ``x`` is the first view when the
    inputs are a list of views. Either is None when the batch does not have that shape."""
    if not isinstance(batch, Sequence) or isinstance(batch, (str, bytes)) or len(batch) < 2:
        return None, None
    x, y = batch[0], batch[1]
    if isinstance(x, Sequence) and len(x) > 0:
        x = x[0]
    x = x if isinstance(x, Tensor) else None
    y = y if isinstance(y, Tensor) else None
    return x, y


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """``module.eval()`` for the block; every submodule's train/eval flag is restored afterwards.

    Eval mode keeps the module untouched: no BatchNorm running-stat updates, no dropout random numbers.
    """
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def param_dtype(module: nn.Module, default: Optional[torch.dtype] = None) -> Optional[torch.dtype]:
    """The dtype of the module's first floating-point parameter (e.g. bf16 under "bf16-true"), or ``default``."""
    return next((p.dtype for p in module.parameters() if p.is_floating_point()), default)


@torch.no_grad()
def forward_features(pl_module: pl.LightningModule, x: Tensor) -> Tensor:
    """``pl_module(x)`` without gradients and in eval mode (:func:`eval_mode`), the input cast to the
    parameters' dtype."""
    dtype = param_dtype(pl_module)
    if dtype is not None and x.is_floating_point():
        x = x.to(dtype)
    with eval_mode(pl_module):
        return checked_features(pl_module(x), pl_module)


def checked_features(out: Any, pl_module: pl.LightningModule) -> Tensor:
    """``out`` of ``pl_module(x)`` when it is a tensor, else a one-line ``TypeError`` naming what is expected."""
    if not isinstance(out, Tensor):
        raise TypeError(
            f"{type(pl_module).__name__}.forward(x) returned a {type(out).__name__}, but the probe, kNN and "
            f"diagnostics read forward(x) -> Tensor (B, D) features (or training_step / validation_step returning "
            f"{{'features': Tensor}}): make forward return the features tensor"
        )
    return out


def features_and_targets(
    outputs: Any, batch: Any, pl_module: pl.LightningModule
) -> tuple[Optional[Tensor], Optional[Tensor]]:
    """Features ``(B, D)`` (detached, float32) and targets ``(B,)`` for a step.

    Features come from ``outputs["features"]`` when the step returned them, else from the fallback
    forward ``pl_module(x)``. Returns ``(None, None)`` when the batch carries no targets.
    """
    x, y = split_batch(batch)
    if y is None:
        return None, None
    if isinstance(outputs, dict) and isinstance(outputs.get("features"), Tensor):
        f = outputs["features"]
    elif x is not None:
        f = forward_features(pl_module, x)
    else:
        return None, None
    f = f.detach().flatten(start_dim=1).float()
    return f, y.detach().reshape(-1).to(device=f.device, dtype=torch.long)


def all_gather_cat(
    trainer: pl.Trainer, pl_module: pl.LightningModule, *tensors: Tensor
) -> tuple[Tensor, ...]:
    """Concatenate each tensor ``(N_r, ...)`` over all processes along dim 0, in rank order.

    ``N_r`` may differ between processes (tensors are padded to the largest ``N_r`` for the
    collective and trimmed afterwards); trailing dims must agree. Identity on a single process.
    Uses ``pl_module.all_gather`` without gradients.
    """
    if trainer.world_size <= 1:
        return tensors
    n = torch.tensor([tensors[0].shape[0]], device=tensors[0].device)
    sizes = cast(Tensor, pl_module.all_gather(n, sync_grads=False)).reshape(-1).tolist()
    max_n = max(sizes)
    out = []
    for t in tensors:
        if t.shape[0] < max_n:
            t = torch.cat([t, t.new_zeros((max_n - t.shape[0], *t.shape[1:]))])
        g = cast(Tensor, pl_module.all_gather(t.contiguous(), sync_grads=False))  # (W, max_n, ...)
        out.append(torch.cat([g[r, : sizes[r]] for r in range(len(sizes))]))
    return tuple(out)


def check_labels(y: Tensor, num_classes: int, who: str) -> None:
    bad = y[(y < -1) | (y >= num_classes)]
    if bad.numel():
        values = sorted(set(bad.tolist()))
        shown = ", ".join(map(str, values[:10])) + (", ..." if len(values) > 10 else "")
        raise ValueError(
            f"{who}(num_classes={num_classes}) got labels out of range: [{shown}]; "
            f"expected 0..{num_classes - 1}, or -1 for an unknown label."
        )


@torch.no_grad()
def extract_features(
    encode: Callable[[Tensor], Tensor], loader: Iterable[Any], device: Optional[torch.device] = None
) -> tuple[Tensor, Tensor]:
    """``(features (N, D) float32, targets (N,) int64)`` of every ``(images, targets)`` batch of ``loader``,
    encoded by ``encode`` without gradients; both on ``device`` (default: where ``encode`` left them)."""
    feats, ys = [], []
    for images, targets in loader:
        if device is not None:
            images = images.to(device, non_blocking=True)
        f = encode(images).flatten(start_dim=1).float()
        feats.append(f)
        ys.append(torch.as_tensor(targets).to(f.device, dtype=torch.long))
    if not feats:
        raise ValueError("extract_features: the loader yielded no batches")
    return torch.cat(feats), torch.cat(ys)
