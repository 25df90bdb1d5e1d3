"""The comparison models of the benchmarks: SimCLR, BYOL and Barlow Twins built from lightly's heads and losses.

One set of modules serves both benchmarks. Each is built the way lightly's own examples build it (heads from
``lightly.models.modules.heads``, losses from ``lightly.loss``, the EMA update from ``lightly.models.utils``),
on *our* ResNets (``build_resnet``; CIFAR stem on request), so that every model of a benchmark shares the
backbone. ``BareBackbone`` is the throughput bound: forward + backward of the backbone alone on the same
views, plus the optimiser step.

The classes' defaults are lightly's CIFAR-10 benchmark recipe (``docs/source/getting_started/benchmarks/
cifar10_benchmark.py`` in lightly-ai/lightly; its table at batch 512 / 200 epochs: SimCLR 0.828, BYOL 0.872,
Barlow Twins 0.827 kNN top-1), the baselines of the learning-quality benchmark:

=============  ===========================================================  ============================
model          head and loss                                                 other
=============  ===========================================================  ============================
SimCLR         ``SimCLRProjectionHead(512, 512, 128)``, ``NTXentLoss()``      temperature 0.5 (default)
               (hidden = the backbone's feature dimension)
BYOL           ``BYOLProjectionHead(512, 1024, 256)``,                       EMA teacher (backbone +
               ``BYOLPredictionHead(256, 1024, 256)``,                        projection), momentum 0.99
               ``NegativeCosineSimilarity``, symmetrised                      constant
Barlow Twins   2-layer ``ProjectionHead`` 512-2048 (BN, ReLU)-2048,           lambda 0.005 (default)
               ``BarlowTwinsLoss()``
=============  ===========================================================  ============================

All three: ResNet-18, SGD with lr ``0.06 x batch / 128``, momentum 0.9, weight decay 5e-4,
``CosineAnnealingLR`` over the epochs (stepped per epoch), no warm-up. The throughput benchmark overrides
what its peers need (``benchmarks/throughput.py``: the backbone, lightly's ImageNet-example heads for BYOL,
4096-256 with an EMA of 0.99 -> 1 on a cosine, and SGD lr 0.1 without a schedule, as our methods there).

Each module follows this library's contract so the same callbacks work on it: ``forward(x)`` returns the
backbone's pooled features, ``training_step`` logs ``train/loss`` and returns ``{"loss": ..., "features":
f}`` (detached features of the first view) and ``validation_step`` returns ``{"features": f, "targets": y}``.
"""

from __future__ import annotations

import copy
from typing import Any, Optional

import lightning as L
import torch
from lightly.loss import BarlowTwinsLoss, NegativeCosineSimilarity, NTXentLoss
from lightly.models.modules.heads import (
    BYOLPredictionHead,
    BYOLProjectionHead,
    ProjectionHead,
    SimCLRProjectionHead,
)
from lightly.models.utils import deactivate_requires_grad, update_momentum
from lightly.utils.scheduler import cosine_schedule
from torch import Tensor, nn

from mvssl_lightning.core.compat import is_compiled
from mvssl_lightning.models import build_backbone

__all__ = ["BareBackbone", "LightlyBarlowTwins", "LightlyBYOL", "LightlyModel", "LightlySimCLR"]


class LightlyModel(L.LightningModule):
    """Backbone, feature contract and a plain SGD recipe shared by the lightly-built models.

    Args:
        backbone, cifar_stem, backbone_kwargs: the backbone (``build_backbone``: a ResNet name, ``timm:<name>``...).
        lr: learning rate; with ``lr_reference_batch`` it is scaled linearly by ``batch_size /
            lr_reference_batch`` (lightly's CIFAR-10 recipe: ``0.06 x batch / 128``), else used as is.
        batch_size: the per-step batch size the learning rate is scaled with.
        weight_decay, momentum: of ``torch.optim.SGD``.
        cosine: anneal the learning rate to 0 over ``trainer.max_epochs`` (stepped per epoch); else constant.
        channels_last: keep the backbone and its inputs in ``torch.channels_last``.
        compile: ``torch.compile`` the backbone(s) in ``configure_model``.
    """

    def __init__(
        self,
        backbone: str = "resnet18",
        cifar_stem: bool = True,
        backbone_kwargs: Optional[dict] = None,
        lr: float = 0.06,
        lr_reference_batch: Optional[int] = 128,
        batch_size: int = 512,
        weight_decay: float = 5e-4,
        momentum: float = 0.9,
        cosine: bool = True,
        channels_last: bool = False,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.backbone, self.feat_dim = build_backbone(backbone, cifar_stem=cifar_stem, **(backbone_kwargs or {}))
        self.batch_size = batch_size
        self.lr = lr * batch_size / lr_reference_batch if lr_reference_batch else lr
        self.weight_decay = weight_decay
        self.momentum = momentum
        self.cosine = cosine
        self.channels_last = channels_last
        self.compile_backbone = compile
        if channels_last:
            self.backbone = self.backbone.to(memory_format=torch.channels_last)

    def configure_model(self) -> None:
        if self.compile_backbone:  # the backbone and its EMA copy, if any
            for module in self.children():
                if type(module) is type(self.backbone) and not is_compiled(module):
                    module.compile()

    def _prepare(self, x: Tensor) -> Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def forward(self, x: Tensor) -> Tensor:
        """Pooled backbone features ``(B, D)``."""
        return self.backbone(self._prepare(x)).flatten(start_dim=1)

    def compute_loss(self, x0: Tensor, x1: Tensor) -> tuple[Tensor, Tensor]:
        """``(loss, features of x0)``; implemented by each model."""
        raise NotImplementedError

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        views, _ = batch
        loss, features = self.compute_loss(self._prepare(views[0]), self._prepare(views[1]))  # converted once
        self.log("train/loss", loss, prog_bar=True, batch_size=views[0].shape[0])
        return {"loss": loss, "features": features.detach()}

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Tensor]:
        images, targets = batch
        return {"features": self(images).detach(), "targets": targets}

    def configure_optimizers(self) -> Any:
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)
        if not self.cosine:
            return optimizer
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(int(self.trainer.max_epochs or 1), 1))
        return [optimizer], [scheduler]


class BareBackbone(LightlyModel):
    """The throughput bound: the backbone's forward + backward on every view, and the optimiser step."""

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return sum(self(x).float().square().mean() for x in batch[0])


class LightlySimCLR(LightlyModel):
    """SimCLR: ``SimCLRProjectionHead(D, proj_hidden_dim or D, 128)``, NT-Xent (temperature 0.5)."""

    def __init__(self, proj_hidden_dim: Optional[int] = None, proj_output_dim: int = 128, temperature: float = 0.5,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.projection_head = SimCLRProjectionHead(self.feat_dim, proj_hidden_dim or self.feat_dim, proj_output_dim)
        self.criterion = NTXentLoss(temperature=temperature)

    def compute_loss(self, x0: Tensor, x1: Tensor) -> tuple[Tensor, Tensor]:
        f0, f1 = self(x0), self(x1)
        return self.criterion(self.projection_head(f0), self.projection_head(f1)), f0


class LightlyBYOL(LightlyModel):
    """BYOL: projection ``D-proj_hidden_dim-256``, predictor ``256-pred_hidden_dim-256``, EMA teacher.

    The EMA momentum is ``ema_momentum``, constant (lightly's CIFAR-10 recipe), or, with
    ``final_ema_momentum``, a cosine from one to the other over the run's steps (lightly's BYOL example).
    """

    def __init__(self, proj_hidden_dim: int = 1024, proj_output_dim: int = 256, pred_hidden_dim: int = 1024,
                 ema_momentum: float = 0.99, final_ema_momentum: Optional[float] = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.projection_head = BYOLProjectionHead(self.feat_dim, proj_hidden_dim, proj_output_dim)
        self.prediction_head = BYOLPredictionHead(proj_output_dim, pred_hidden_dim, proj_output_dim)
        self.backbone_momentum = copy.deepcopy(self.backbone)
        self.projection_head_momentum = copy.deepcopy(self.projection_head)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.projection_head_momentum)
        self.criterion = NegativeCosineSimilarity()
        self.ema_momentum = ema_momentum
        self.final_ema_momentum = final_ema_momentum

    def _current_ema_momentum(self) -> float:
        if self.final_ema_momentum is None:
            return self.ema_momentum
        return cosine_schedule(self.global_step, self.trainer.estimated_stepping_batches, self.ema_momentum,
                               self.final_ema_momentum)

    @torch.no_grad()
    def _target(self, x: Tensor) -> Tensor:
        return self.projection_head_momentum(self.backbone_momentum(self._prepare(x)).flatten(start_dim=1))

    def compute_loss(self, x0: Tensor, x1: Tensor) -> tuple[Tensor, Tensor]:
        m = self._current_ema_momentum()
        update_momentum(self.backbone, self.backbone_momentum, m=m)
        update_momentum(self.projection_head, self.projection_head_momentum, m=m)
        f0, f1 = self(x0), self(x1)
        p0 = self.prediction_head(self.projection_head(f0))
        p1 = self.prediction_head(self.projection_head(f1))
        z0, z1 = self._target(x0), self._target(x1)
        return 0.5 * (self.criterion(p0, z1) + self.criterion(p1, z0)), f0


class LightlyBarlowTwins(LightlyModel):
    """Barlow Twins: 2-layer projector ``D-2048 (BN, ReLU)-2048``, ``BarlowTwinsLoss`` (lambda 0.005)."""

    def __init__(self, proj_hidden_dim: int = 2048, proj_output_dim: int = 2048, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.projection_head = ProjectionHead([
            (self.feat_dim, proj_hidden_dim, nn.BatchNorm1d(proj_hidden_dim), nn.ReLU(inplace=True)),
            (proj_hidden_dim, proj_output_dim, None, None),
        ])
        self.criterion = BarlowTwinsLoss()

    def compute_loss(self, x0: Tensor, x1: Tensor) -> tuple[Tensor, Tensor]:
        f0, f1 = self(x0), self(x1)
        return self.criterion(self.projection_head(f0), self.projection_head(f1)), f0
