"""Frozen features in memory: extraction, the cached-features loader, and the offline linear probe.

The cached-features fast path of :class:`~mvssl_lightning.evaluation.LinearEval` (``cache_features=True``)
extracts the features of both splits once, with the evaluation transform and the backbone in eval
mode (:func:`extract_features`), and then trains the linear head on mini-batches of those in-memory
features (:class:`FeatureLoader`) instead of decoding and re-encoding every image every epoch. The
head, its optimiser, schedule and logging are the streaming path's: :class:`FeatureLoader` visits the
samples in the same order as the data module's image loader (both draw the epoch's permutation from
:class:`EpochShuffle`), so for a frozen backbone and no augmentation the two paths train the same head
up to float rounding (``tests/test_evaluation.py`` checks this).

:func:`linear_probe` is the learning-quality benchmark's offline probe (``benchmarks/quality``), a
fixed protocol on feature tensors:

* the train features are standardised with their own per-dimension mean and std (the test features
  with the same statistics);
* a zero-initialised ``nn.Linear`` is trained with AdamW (lr 1e-3, weight decay 1e-4, betas 0.9/0.999)
  and cross-entropy for ``epochs`` epochs of shuffled mini-batches of 256, the learning rate following a
  cosine from 1e-3 to 0 over all steps, ``lr_t = lr (1 + cos(pi t / T)) / 2``;
* top-1 is then measured on the test features. Everything runs on the features' device in float32,
  seeded; samples labelled -1 are left out.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Sampler

from mvssl_lightning.schedules import cosine_anneal

__all__ = ["EpochShuffle", "FeatureLoader", "ProbeResult", "extract_features", "linear_probe"]


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


@dataclass(frozen=True)
class ProbeResult:
    """Top-1 accuracies (fractions) of the offline probe on its own training features and on the test set."""

    train_top1: float
    test_top1: float


def _standardise(train: Tensor, test: Tensor) -> tuple[Tensor, Tensor]:
    mean = train.mean(dim=0, keepdim=True)
    std = train.std(dim=0, keepdim=True).clamp_min(1e-6)
    return (train - mean) / std, (test - mean) / std


@torch.no_grad()
def _top1(head: nn.Module, x: Tensor, y: Tensor, batch_size: int = 8192) -> float:
    batches = zip(x.split(batch_size), y.split(batch_size), strict=True)
    correct = sum(int((head(xb).argmax(dim=1) == yb).sum()) for xb, yb in batches)
    return correct / max(len(y), 1)


def linear_probe(
    train_features: Tensor,
    train_targets: Tensor,
    test_features: Tensor,
    test_targets: Tensor,
    num_classes: int,
    epochs: int = 100,
    batch_size: int = 256,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    seed: int = 0,
) -> ProbeResult:
    """Train a linear classifier on ``train_features (N, D)`` / ``train_targets (N,)`` and score it on
    the test features (samples with label -1 are left out of both); protocol in the module docstring."""
    keep_train, keep_test = train_targets >= 0, test_targets >= 0
    x_train, y_train = train_features[keep_train].float(), train_targets[keep_train].long()
    x_test, y_test = test_features[keep_test].float(), test_targets[keep_test].long()
    if len(y_train) == 0:
        raise ValueError("linear_probe: no labelled training features")
    x_train, x_test = _standardise(x_train, x_test)
    device = x_train.device
    head = nn.Linear(x_train.shape[1], num_classes).to(device)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(len(y_train) / batch_size)
    total = max(epochs * steps_per_epoch, 1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: cosine_anneal(step, total, 1.0, 0.0))
    generator = torch.Generator(device="cpu").manual_seed(seed)
    with torch.enable_grad():
        for _ in range(epochs):
            order = torch.randperm(len(y_train), generator=generator).to(device)
            for idx in order.split(batch_size):
                loss = F.cross_entropy(head(x_train[idx]), y_train[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
    return ProbeResult(train_top1=_top1(head, x_train, y_train), test_top1=_top1(head, x_test, y_test))
