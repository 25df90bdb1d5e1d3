"""Frozen features in memory: the cached-features loader of linear evaluation.

The cached-features fast path of :class:`~mvssl_lightning.evaluation.LinearEval` (``cache_features=True``)
extracts the features of both splits once, with the evaluation transform and the backbone in eval
mode (:func:`mvssl_lightning.core.features.extract_features`), and then trains the linear head on
mini-batches of those in-memory features (:class:`FeatureLoader`) instead of decoding and re-encoding
every image every epoch. The
head, its optimiser, schedule and logging are the streaming path's: :class:`FeatureLoader` visits the
samples in the same order as the data module's image loader (both draw the epoch's permutation from
:class:`EpochShuffle`), so for a frozen backbone and no augmentation the two paths train the same head
up to float rounding (``tests/test_evaluation.py`` checks this).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Optional

import torch
from torch import Tensor
from torch.utils.data import Sampler

__all__ = ["EpochShuffle", "FeatureLoader"]


class EpochShuffle(Sampler[int]):
    """A permutation of ``range(n)`` drawn from ``seed + epoch`` (``set_epoch``, which Lightning calls at
    the start of every training epoch). It depends on the seed and the epoch only, so every process
    (and a re-run) sees the same order; under DDP Lightning wraps it in a distributed sampler."""

    def __init__(self, n: int, seed: int = 0) -> None:
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        self.n, self.seed, self.epoch = int(n), int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def permutation(self) -> Tensor:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return torch.randperm(self.n, generator=generator)

    def __iter__(self) -> Iterator[int]:
        return iter(self.permutation().tolist())

    def __len__(self) -> int:
        return self.n


class FeatureLoader:
    """Mini-batches ``(features[idx], targets[idx])`` of in-memory tensors, an iterable Lightning accepts
    as a data loader. With ``shuffle`` the order is :class:`EpochShuffle`'s (``self.sampler``, whose
    epoch Lightning sets); otherwise the stored order. Batches stay on the tensors' device."""

    def __init__(self, features: Tensor, targets: Tensor, batch_size: int, shuffle: bool = False, seed: int = 0,
                 drop_last: bool = False) -> None:
        if features.shape[0] != targets.shape[0]:
            raise ValueError(f"{features.shape[0]} feature rows for {targets.shape[0]} targets")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.features, self.targets = features, targets
        self.batch_size, self.shuffle, self.drop_last = int(batch_size), shuffle, drop_last
        self.sampler: Optional[EpochShuffle] = EpochShuffle(len(targets), seed) if shuffle else None
        self.batch_sampler = None  # read by Lightning's loader checks, as on a DataLoader

    def __len__(self) -> int:
        n = len(self.targets)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        n = len(self.targets)
        order = self.sampler.permutation() if self.sampler is not None else torch.arange(n)
        order = order.to(self.features.device)
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            yield self.features[idx], self.targets[idx]
