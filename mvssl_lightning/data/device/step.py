"""The protocol every device augmentation follows: sample on the CPU, apply on any device.

A :class:`DeviceStep` transforms a batch ``x (B, 3, H, W)`` of floats in ``[0, 1]`` with
**per-sample** random parameters.  The parameters are drawn by :meth:`DeviceStep.sample` from a CPU
``torch.Generator`` (a few numbers per image, so this costs nothing), then moved to the batch's
device and used by :meth:`DeviceStep.apply`.  Drawing on the CPU makes the pipeline reproducible
from one seed whatever the device, and lets the tests check every parameter distribution against
the CPU recipe without touching an image.

Host-to-device copies never block the host: parameters go through pinned memory with
``non_blocking=True`` (:func:`upload`; a copy from pageable memory would wait for the device), and
constants (normalisation means, the hue ramp) are uploaded once per device and dtype (:func:`constant`).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["DeviceStep", "Params", "constant", "params_to", "upload"]

#: Per-sample parameters of one step: name -> tensor whose first dimension is the batch.
Params = dict[str, Tensor]


def upload(t: Tensor, device: torch.device) -> Tensor:
    """``t`` on ``device``; from the CPU to CUDA through pinned memory with ``non_blocking=True``, so that the
    host does not wait (the caching host allocator keeps the pinned buffer until the copy has run)."""
    device = torch.device(device)
    if device.type == "cuda" and t.device.type == "cpu":
        return (t if t.is_pinned() else t.pin_memory()).to(device, non_blocking=True)
    return t.to(device)


@functools.lru_cache(maxsize=256)
def _constant(values: tuple[float, ...], device: torch.device, dtype: torch.dtype) -> Tensor:
    return upload(torch.tensor(values, dtype=dtype), device)


def constant(values: Sequence[float], device: torch.device, dtype: torch.dtype) -> Tensor:
    """A 1-D tensor of ``values`` on ``device``, uploaded once and cached: never modify it in place."""
    return _constant(tuple(float(v) for v in values), torch.device(device), dtype)


def params_to(params: Params, device: torch.device) -> Params:
    """Move every parameter tensor to ``device`` (:func:`upload`: pinned, non-blocking from the CPU)."""
    return {k: upload(v, device) for k, v in params.items()}


class DeviceStep:
    """One batched augmentation with per-sample parameters (subclasses implement both methods)."""

    def sample(self, n: int, generator: torch.Generator) -> Params:
        """Draw the parameters of ``n`` images on the CPU with ``generator``."""
        raise NotImplementedError

    def apply(self, x: Tensor, params: Params) -> Tensor:
        """Transform ``x (n, 3, H, W)`` (floats in ``[0, 1]``) with ``params`` (on ``x``'s device)."""
        raise NotImplementedError

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        return self.apply(x, params_to(self.sample(x.shape[0], generator), x.device))
