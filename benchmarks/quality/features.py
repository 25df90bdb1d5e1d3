"""Frozen features of the final validation epoch, and how spread out they are (the collapse check).

:class:`FeatureCollector` keeps what the model returns in the last validation epoch (the train split
with the eval transform = loader 0, the test split = loader 1), through the same helper the library's
callbacks use, so the offline probe and the collapse check see exactly the features kNN and the
online probe saw, without a second pass over the data.

:func:`feature_spread` measures the test features:

* ``std_x_sqrt_d``: ``sqrt(d)`` times the mean per-dimension std of the L2-normalised features
  (lightly's ``std_of_l2_normalized``, Chen & He 2021): 0 for features collapsed to one vector, about
  1 for an isotropic Gaussian; pooled ReLU features sit in the positive orthant, so healthy ResNet
  features usually read well below 1;
* ``effective_rank``: ``exp`` of the entropy of the normalised singular values of the centred,
  L2-normalised features (Roy & Vetterli 2007): 1 when every feature lies on one line, ``d`` at most;
* ``collapsed``: ``std_x_sqrt_d < COLLAPSE_STD`` or ``effective_rank < COLLAPSE_RANK``.
"""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightly.utils.debug import std_of_l2_normalized
from torch import Tensor

from mvssl_lightning.core.features import features_and_targets

# the library's collapse thresholds, the same as RepresentationDiagnostics' and TrainingHealth's
from mvssl_lightning.core.statistics import COLLAPSE_RANK, COLLAPSE_STD


class FeatureCollector(pl.Callback):
    """Keeps ``(features, targets)`` per validation loader of the most recent validation epoch (on the CPU)."""

    def __init__(self) -> None:
        super().__init__()
        self._parts: dict[int, list[tuple[Tensor, Tensor]]] = {}

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._parts = {}

    def on_validation_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if trainer.sanity_checking:
            return
        f, y = features_and_targets(outputs, batch, pl_module)
        if f is not None and y is not None:
            self._parts.setdefault(dataloader_idx, []).append((f.cpu(), y.cpu()))

    def features(self, dataloader_idx: int) -> tuple[Tensor, Tensor]:
        """``(features (N, D) float32, targets (N,))`` of loader ``dataloader_idx``."""
        parts = self._parts.get(dataloader_idx)
        if not parts:
            raise RuntimeError(f"FeatureCollector: no features from validation loader {dataloader_idx}")
        return torch.cat([f for f, _ in parts]), torch.cat([y for _, y in parts])


@torch.no_grad()
def effective_rank(features: Tensor) -> float:
    """Roy & Vetterli's effective rank of the centred, L2-normalised ``features (N, D)``."""
    z = F.normalize(features.double(), dim=1)
    s = torch.linalg.svdvals(z - z.mean(dim=0, keepdim=True))
    if float(s.sum()) <= 1e-12:
        return 1.0
    p = s / s.sum()
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def feature_spread(features: Tensor) -> dict[str, Any]:
    """``{"std_x_sqrt_d", "effective_rank", "collapsed"}`` of ``features (N, D)`` (see module docstring)."""
    f = features.float()
    std = float(std_of_l2_normalized(f)) * math.sqrt(f.shape[1])
    rank = effective_rank(f)
    return {"std_x_sqrt_d": std, "effective_rank": rank, "collapsed": std < COLLAPSE_STD or rank < COLLAPSE_RANK}
