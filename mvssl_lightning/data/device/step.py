"""The protocol every device augmentation follows: sample on the CPU, apply on any device.

A :class:`DeviceStep` transforms a batch ``x (B, 3, H, W)`` of floats in ``[0, 1]`` with
**per-sample** random parameters.  The parameters are drawn by :meth:`DeviceStep.sample` from a CPU
``torch.Generator`` (a few numbers per image, so this costs nothing), then moved to the batch's
device and used by :meth:`DeviceStep.apply`.  Drawing on the CPU makes the pipeline reproducible
from one seed whatever the device, and lets the tests check every parameter distribution against
the CPU recipe without touching an image.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["DeviceStep", "Params", "params_to"]

#: Per-sample parameters of one step: name -> tensor whose first dimension is the batch.
Params = dict[str, Tensor]


def params_to(params: Params, device: torch.device) -> Params:
    """Move every parameter tensor to ``device`` (non-blocking from the CPU)."""
    return {k: v.to(device, non_blocking=True) for k, v in params.items()}


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
