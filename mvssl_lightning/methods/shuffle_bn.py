"""Shuffled BatchNorm for the key encoder (MoCo, He et al. 2020, §3.3; InfoMin uses it as is).

Why: with per-device BatchNorm, a query and its positive key computed on the same device share the
batch statistics, which leaks information the model can use to find the positive ("cheating") instead
of learning good features.  Encoding the keys of a *random permutation* of the batch, split into
chunks with separate BN statistics, makes the statistics of a query's chunk and of its key's chunk
(almost always) different.

:func:`shuffled_key_forward` (``W`` processes of ``B`` images each; no gradient)::

    x_all  = all_gather(x)                     (W B, ...) in rank order
    perm   = randperm(W B), broadcast from rank 0
    chunk  = x_all[perm[r B : (r + 1) B]]      this process's shard of the permuted batch
    k_shuf = cat(encoder(c) for c in split(chunk, groups))   BN statistics per sub-chunk
    k_all  = all_gather(k_shuf)[argsort(perm)]   the keys of all images, in rank order
    k      = k_all[r B : (r + 1) B]              this process's keys, in its original order

Official code (``pycontrast/learning/contrast_trainer.py``, ``_shuffle_bn``) gathers and permutes
within each *node* and then gathers the keys globally; MoCo's official code (and lightly's
``batch_shuffle_distributed``) permute across all processes, as done here.  On a single node (the
InfoMin recipe: 8 GPUs x 32) the two are the same.  The queue receives ``k_all``; the official code
enqueues the gathered keys in their shuffled order, which is a permutation of the same keys inside
each node's block and leaves the loss unchanged (the queue is a set of negatives).

One process: the official code then shuffles within the single batch, which changes nothing (one
set of BN statistics).  ``groups > 1`` splits the (shuffled) batch into ``groups`` chunks with their
own statistics, MoCo's single-GPU practice (``SplitBatchNorm`` of the MoCo CIFAR demo); ``groups = G``
on one device reproduces ``G`` processes of ``B / G`` images exactly, up to which random permutation
is drawn.  Under DDP ``groups`` sub-divides every process's shard the same way.

We do not reuse lightly's ``batch_shuffle_distributed`` / ``batch_unshuffle_distributed`` because they
do not sub-divide a shard and do not return the gathered keys the queue needs (a third collective).
Every process must pass the same batch size (``drop_last=True``, as our data module does).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.distributed as dist
from lightly.models.utils import concat_all_gather
from torch import Tensor

from mvssl_lightning.losses.distributed import world_size

__all__ = ["shuffled_key_forward"]


@torch.no_grad()
def shuffled_key_forward(
    encoder: Callable[[Tensor], Tensor], x: Tensor, groups: int = 1, shuffle: bool = True
) -> tuple[Tensor, Tensor]:
    """Keys of ``x (B, ...)`` computed with shuffled BN; returns ``(k (B, D), k_all (W B, D))``.

    Args:
        encoder: the key encoder (BN in train mode), ``(n, ...) -> (n, D)``.
        x: this process's images.
        groups: sub-chunks per process, each with its own BN statistics (``1 <= groups <= B``).
        shuffle: ``False`` encodes ``x`` as it is (no permutation, no gathering of inputs), which is
            plain per-process BN; ``k_all`` is still gathered.

    ``k`` is in the order of ``x``; ``k_all`` holds the keys of all processes in rank order (what
    the queue receives).
    """
    batch = x.shape[0]
    if not 1 <= groups <= batch:
        raise ValueError(f"shuffle_bn groups must be in [1, batch size = {batch}], got {groups}")
    world = world_size()
    if not shuffle:
        k = torch.cat([encoder(c) for c in torch.tensor_split(x, groups)])
        return k, (concat_all_gather(k.contiguous()) if world > 1 else k)

    x_all = concat_all_gather(x.contiguous()) if world > 1 else x
    perm = torch.randperm(x_all.shape[0], device=x.device)
    rank = 0
    if world > 1:
        dist.broadcast(perm, src=0)
        rank = dist.get_rank()
    shard = x_all[perm[rank * batch:(rank + 1) * batch]]
    if x.ndim == 4 and x.is_contiguous(memory_format=torch.channels_last):
        shard = shard.contiguous(memory_format=torch.channels_last)  # the key encoder keeps NHWC (no-op if kept)
    k_shuffled = torch.cat([encoder(c) for c in torch.tensor_split(shard, groups)])
    k_shuffled_all = concat_all_gather(k_shuffled.contiguous()) if world > 1 else k_shuffled
    k_all = torch.empty_like(k_shuffled_all)
    k_all[perm] = k_shuffled_all
    return k_all[rank * batch:(rank + 1) * batch], k_all
