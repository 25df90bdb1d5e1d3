"""Baselines for the learning-quality benchmark: lightly's published CIFAR-10 recipes.

SimCLR, BYOL and Barlow Twins exactly as lightly's CIFAR-10 kNN benchmark builds them
(``docs/source/getting_started/benchmarks/cifar10_benchmark.py`` in lightly-ai/lightly; its table at
batch 512 / 200 epochs: SimCLR 0.828, BYOL 0.872, Barlow Twins 0.827 kNN top-1), from lightly's heads
and losses, on *our* ResNet-18 (``build_resnet``; CIFAR stem up to 64 px) so every model of the
benchmark shares the backbone:

=============  ===========================================================  ============================
model          head and loss                                                 other
=============  ===========================================================  ============================
SimCLR         ``SimCLRProjectionHead(512, 512, 128)``, ``NTXentLoss()``      temperature 0.5 (default)
               (lightly's defaults)
BYOL           ``BYOLProjectionHead(512, 1024, 256)``,                       EMA teacher (backbone +
               ``BYOLPredictionHead(256, 1024, 256)``,                        projection), momentum 0.99
               ``NegativeCosineSimilarity``, symmetrised                      constant
Barlow Twins   2-layer ``ProjectionHead`` 512-2048 (BN, ReLU)-2048,           lambda 0.005 (default)
               ``BarlowTwinsLoss()``
=============  ===========================================================  ============================

All three: SGD, lr ``0.06 x batch / 128``, momentum 0.9, weight decay 5e-4, ``CosineAnnealingLR`` over
the epochs (stepped per epoch), no warm-up. Views: ``SimCLRTransform(input_size=<image side>,
cj_strength=0.5, gaussian_blur=0.0)`` for all three (as lightly's benchmark), evaluated with
ToTensor + ImageNet normalisation at the native size.

Each module follows this library's contract so the same callbacks work on it: ``forward(x)`` returns
the backbone's pooled features, ``training_step`` returns ``{"loss": ..., "features": f}`` (detached
features of the first view) and ``validation_step`` returns ``{"features": f, "targets": y}``.
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
from lightly.transforms import SimCLRTransform
from torch import Tensor, nn

from mvssl_lightning.data import MultiViewDataModule
from mvssl_lightning.data.views import IMAGENET_NORMALIZE, eval_view_cifar
from mvssl_lightning.models import build_resnet

__all__ = ["BASELINES", "LightlyBarlowTwinsCifar", "LightlyBYOLCifar", "LightlySimCLRCifar", "baseline_datamodule"]


class _LightlyCifarRecipe(L.LightningModule):
    """Backbone, feature contract and lightly's CIFAR-10 optimiser (SGD 0.06 x B/128, cosine)."""

    def __init__(self, cifar_stem: bool = True, batch_size: int = 512, channels_last: bool = False) -> None:
        super().__init__()
        self.backbone, self.feat_dim = build_resnet("resnet18", cifar_stem=cifar_stem)
        self.batch_size = batch_size
        self.channels_last = channels_last
        if channels_last:
            self.backbone = self.backbone.to(memory_format=torch.channels_last)

    def _prepare(self, x: Tensor) -> Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def forward(self, x: Tensor) -> Tensor:
        """Pooled backbone features ``(B, 512)``."""
        return self.backbone(self._prepare(x)).flatten(start_dim=1)

    def compute_loss(self, x0: Tensor, x1: Tensor) -> tuple[Tensor, Tensor]:
        """``(loss, features of x0)``; implemented by each recipe."""
        raise NotImplementedError

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        views, _ = batch
        loss, features = self.compute_loss(views[0], views[1])
        self.log("train/loss", loss, prog_bar=True, batch_size=views[0].shape[0])
        return {"loss": loss, "features": features.detach()}

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Tensor]:
        images, targets = batch
        return {"features": self(images).detach(), "targets": targets}

    @property
    def lr(self) -> float:
        """lightly's CIFAR-10 learning rate: ``0.06 x batch / 128``."""
        return 6e-2 * self.batch_size / 128

    def configure_optimizers(self) -> Any:
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(params, lr=self.lr, momentum=0.9, weight_decay=5e-4)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(int(self.trainer.max_epochs or 1), 1))
        return [optimizer], [scheduler]


class LightlySimCLRCifar(_LightlyCifarRecipe):
    """SimCLR, lightly's CIFAR-10 recipe: ``SimCLRProjectionHead(512, 512, 128)``, NT-Xent (T = 0.5)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.projection_head = SimCLRProjectionHead(self.feat_dim, 512, 128)
        self.criterion = NTXentLoss()

    def compute_loss(self, x0: Tensor, x1: Tensor) -> tuple[Tensor, Tensor]:
        f0, f1 = self(x0), self(x1)
        return self.criterion(self.projection_head(f0), self.projection_head(f1)), f0


class LightlyBYOLCifar(_LightlyCifarRecipe):
    """BYOL, lightly's CIFAR-10 recipe: projection 512-1024-256, predictor 256-1024-256, EMA 0.99."""

    momentum: float = 0.99

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.projection_head = BYOLProjectionHead(self.feat_dim, 1024, 256)
        self.prediction_head = BYOLPredictionHead(256, 1024, 256)
        self.backbone_momentum = copy.deepcopy(self.backbone)
        self.projection_head_momentum = copy.deepcopy(self.projection_head)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.projection_head_momentum)
        self.criterion = NegativeCosineSimilarity()

    @torch.no_grad()
    def _target(self, x: Tensor) -> Tensor:
        return self.projection_head_momentum(self.backbone_momentum(self._prepare(x)).flatten(start_dim=1))

    def compute_loss(self, x0: Tensor, x1: Tensor) -> tuple[Tensor, Tensor]:
        update_momentum(self.backbone, self.backbone_momentum, m=self.momentum)
        update_momentum(self.projection_head, self.projection_head_momentum, m=self.momentum)
        f0, f1 = self(x0), self(x1)
        p0 = self.prediction_head(self.projection_head(f0))
        p1 = self.prediction_head(self.projection_head(f1))
        z0, z1 = self._target(x0), self._target(x1)
        return 0.5 * (self.criterion(p0, z1) + self.criterion(p1, z0)), f0


class LightlyBarlowTwinsCifar(_LightlyCifarRecipe):
    """Barlow Twins, lightly's CIFAR-10 recipe: 2-layer projector 512-2048-2048, ``BarlowTwinsLoss``."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.projection_head = ProjectionHead([
            (self.feat_dim, 2048, nn.BatchNorm1d(2048), nn.ReLU(inplace=True)),
            (2048, 2048, None, None),
        ])
        self.criterion = BarlowTwinsLoss()

    def compute_loss(self, x0: Tensor, x1: Tensor) -> tuple[Tensor, Tensor]:
        f0, f1 = self(x0), self(x1)
        return self.criterion(self.projection_head(f0), self.projection_head(f1)), f0


#: benchmark name -> module class
BASELINES: dict[str, type[_LightlyCifarRecipe]] = {
    "simclr": LightlySimCLRCifar,
    "byol": LightlyBYOLCifar,
    "barlowtwins": LightlyBarlowTwinsCifar,
}


def baseline_datamodule(
    dataset: str,
    data_dir: Optional[str],
    image_size: int,
    batch_size: int,
    num_workers: int,
    train_subset: Optional[int] = None,
    test_subset: Optional[int] = None,
) -> MultiViewDataModule:
    """lightly's CIFAR-10 benchmark views at ``image_size`` px, eval = ToTensor + ImageNet normalisation."""
    views = SimCLRTransform(input_size=image_size, cj_strength=0.5, gaussian_blur=0.0)
    return MultiViewDataModule(
        dataset=dataset, data_dir=data_dir, views=views, eval_transform=eval_view_cifar(normalize=IMAGENET_NORMALIZE),
        batch_size=batch_size, num_workers=num_workers, train_subset=train_subset, test_subset=test_subset,
    )
