"""Gathering across processes with gradients, for losses that need the global batch.

Under DDP every process computes the same global objective from the gathered rows; lightly's
``GatherLayer`` all-reduces (sums) the incoming gradients and returns this process's slice, so each
process holds ``W x`` its rows' true gradient and DDP's averaging by ``W`` makes the update exact.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from lightly.utils.dist import gather


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x (B, ...)`` from every process in rank order, keeping the autograd graph."""
    if world_size() == 1:
        return x
    return torch.cat(gather(x.contiguous()), dim=0)
