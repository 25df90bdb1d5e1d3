"""``KeyQueue``: the MoCo ring buffer of negative keys, with the official InfoMin update rule.

Official behaviour (``HobbitLong/PyContrast``, ``pycontrast/memory/mem_moco.py``, ``RGBMoCo``):

- ``K`` slots (65,536 for InfoMin) initialised with random unit vectors, identical on every process
  (the official code broadcasts rank 0's queue; we seed the initialisation, same effect, no
  communication);
- after the logits of a step are computed, the keys of *every* process are all-gathered in rank
  order (no gradient) and written at slots ``(ptr + i) mod K``, ``i = 0 .. N-1`` (``N`` = global
  batch); the pointer becomes ``(ptr + N) mod K``.  A batch that straddles the end of the buffer
  therefore wraps around: its head fills the last slots and its tail the first ones.  Every process
  applies the same update, so the queues stay identical.

lightly's ``MemoryBankModule`` differs at the wrap-around (it drops the tail of a straddling batch
and resets the pointer to 0), so the queue is written here.  ``N > K`` (a global batch larger than
the queue) is undefined in the official code (``index_copy_`` with repeated indices); we keep what
sequential writes would leave: the last ``K`` keys, the pointer still advancing by ``N``.

Both the keys and the pointer are registered buffers, so checkpoints resume the queue exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightly.models.utils import concat_all_gather
from torch import Tensor, nn

from mvssl_lightning.losses.distributed import world_size

__all__ = ["KeyQueue"]


class KeyQueue(nn.Module):
    """Ring buffer ``keys (size, dim)`` of unit vectors with write pointer ``ptr``.

    Args:
        size: number of keys ``K``.
        dim: key dimension ``D``.
        seed: seed of the random unit-vector initialisation (the same on every process).
    """

    keys: Tensor
    ptr: Tensor

    def __init__(self, size: int = 65536, dim: int = 128, seed: int = 0) -> None:
        super().__init__()
        if size < 1 or dim < 1:
            raise ValueError(f"queue size and dim must be >= 1, got {size}, {dim}")
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer("keys", F.normalize(torch.randn(size, dim, generator=generator), dim=1))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    @property
    def size(self) -> int:
        return self.keys.shape[0]

    @torch.no_grad()
    def enqueue(self, keys: Tensor, gather: bool = True) -> None:
        """Write ``keys (N, D)`` at slots ``(ptr + i) mod K`` and advance ``ptr`` by ``N`` (mod ``K``).

        With ``gather=True`` and several processes, ``keys`` are this process's keys and are first
        all-gathered in rank order (every process must call this with the same ``N``); pass
        ``gather=False`` when ``keys`` already hold the keys of all processes in rank order.
        """
        if keys.ndim != 2 or keys.shape[1] != self.keys.shape[1]:
            raise ValueError(f"keys must be (N, {self.keys.shape[1]}), got {tuple(keys.shape)}")
        keys = keys.detach().to(self.keys.dtype)
        if gather and world_size() > 1:
            keys = concat_all_gather(keys.contiguous())
        n, size = keys.shape[0], self.size
        start = self.ptr
        if n > size:  # only the last `size` keys survive sequential writes
            start = (start + (n - size)) % size
            keys = keys[n - size:]
        slots = (start + torch.arange(keys.shape[0], device=self.keys.device)) % size
        self.keys.index_copy_(0, slots, keys)
        self.ptr.copy_((self.ptr + n) % size)

    def extra_repr(self) -> str:
        return f"size={self.size}, dim={self.keys.shape[1]}"
