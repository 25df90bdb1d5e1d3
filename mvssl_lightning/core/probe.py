"""The offline linear probe: a fixed protocol on feature tensors.

Used by :class:`~mvssl_lightning.callbacks.RunSummary` (``offline_probe``) and the learning-quality
benchmark (``benchmarks/quality``), so the numbers of both compare:

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
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mvssl_lightning.core.schedules import cosine_anneal

__all__ = ["ProbeResult", "linear_probe"]


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
