"""Reproducible training order and augmentation, so that a resumed run continues the same run.

Two pieces make every training sample's appearance a function of ``(seed, epoch, index)`` alone,
independent of worker processes, of when the run was interrupted and of the global random state:

- :class:`ResumableSampler`: the epoch's permutation is ``randperm(N)`` from a generator seeded with
  ``seed + epoch`` (``DistributedSampler``'s rule, and its split over processes), it yields
  ``(epoch, index)`` keys, and after a mid-epoch resume its first iteration skips the samples whose
  optimiser steps were already taken;
- :class:`SeededSamples`: reading key ``(epoch, index)`` seeds torch's, NumPy's and Python's random
  generators with a hash of ``(seed, epoch, index)`` for the duration of the view transform (and
  restores them), so the augmentations of a sample do not depend on which worker draws them or on
  what was drawn before.

Together with the checkpointed state of the model, optimiser, schedule, EMA teachers, the device
views' generator and the global random state (:meth:`SiameseModule.on_save_checkpoint`), an
interrupted and resumed run reproduces the uninterrupted one bit for bit on the CPU.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler

__all__ = ["ResumableSampler", "SeededSamples", "sample_seed", "seeded_permutation", "seeded_rngs"]


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed from ``(seed, epoch, index)`` (SHA-256, so neighbouring keys are unrelated)."""
    digest = hashlib.sha256(f"{seed}/{epoch}/{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % 2**63


def seeded_permutation(n: int, seed: int) -> torch.Tensor:
    """``randperm(n)`` from its own generator seeded with ``seed`` (the global state is not touched):
    the first ``k`` entries are the library's fixed random subset of size ``k``."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


@contextlib.contextmanager
def seeded_rngs(seed: int) -> Iterator[None]:
    """Seed the global torch (CPU), NumPy and ``random`` generators; restore all three afterwards."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):  # CPU generator only: the CUDA ones are left alone
        torch.default_generator.manual_seed(seed % 2**63)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


class SeededSamples(Dataset):
    """``dataset[index]`` for keys ``(epoch, index)``, with every random generator seeded from
    ``(seed, epoch, index)`` while the item is read and transformed (module docstring).

    ``reseed=False`` reads items without touching the generators, for datasets whose reading draws
    nothing (raw bytes for the device views, which have a generator of their own)."""

    def __init__(self, dataset: Dataset, seed: int, reseed: bool = True) -> None:
        self.dataset = dataset
        self.seed = int(seed)
        self.reseed = reseed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, tuple):
            epoch, index = key
        else:  # a plain index (e.g. a user's own sampler): epoch 0
            epoch, index = 0, key
        if not self.reseed:
            return self.dataset[index]
        with seeded_rngs(sample_seed(self.seed, int(epoch), int(index))):
            return self.dataset[index]


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` (same permutation and split) that yields ``(epoch, index)`` keys and can
    start its next epoch after the first ``skip`` samples of this process (a mid-epoch resume).

    Lightning keeps a ``DistributedSampler`` as it is under DDP and calls ``set_epoch`` before each
    epoch; ``len`` stays the full epoch so that the step counts of schedules do not change.
    """

    def __init__(
        self,
        dataset: Dataset,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed,
                         drop_last=drop_last)
        self._skip = 0

    def skip_next(self, samples: int) -> None:
        """Make the next iteration start after its first ``samples`` samples (then start at 0 again)."""
        self._skip = max(int(samples), 0)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        indices = list(super().__iter__())
        skip, self._skip = self._skip, 0
        epoch = self.epoch
        return iter([(epoch, i) for i in indices[skip:]])
