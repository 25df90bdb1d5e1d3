"""Peers built the way lightly's own examples build them, for fair comparisons in our benchmarks.

``BareBackbone`` is the bound: forward + backward of the backbone alone on the same views, plus the
optimiser step.  ``LightlySimCLR`` and ``LightlyBYOL`` follow lightly's example modules (heads, losses
and momentum update from lightly), on the same torchvision backbones and the same SGD optimiser as
our methods use in the benchmarks.
"""

from __future__ import annotations

import copy

import lightning as L
import torch
from lightly.loss import NegativeCosineSimilarity, NTXentLoss
from lightly.models.modules.heads import BYOLPredictionHead, BYOLProjectionHead, SimCLRProjectionHead
from lightly.models.utils import deactivate_requires_grad, update_momentum
from lightly.utils.scheduler import cosine_schedule
from torch import Tensor

from mvssl_lightning.models import build_resnet


class _Peer(L.LightningModule):
    def __init__(self, backbone: str = "resnet50", cifar_stem: bool = False, lr: float = 0.1,
                 channels_last: bool = False, compile: bool = False) -> None:
        super().__init__()
        self.backbone, self.feat_dim = build_resnet(backbone, cifar_stem=cifar_stem)
        self.lr = lr
        self.channels_last = channels_last
        self.compile_backbone = compile
        if channels_last:
            self.backbone = self.backbone.to(memory_format=torch.channels_last)

    def configure_model(self) -> None:
        if self.compile_backbone:
            for module in self.children():
                if type(module) is type(self.backbone) and getattr(module, "_compiled_call_impl", None) is None:
                    module.compile()

    def _views(self, batch) -> list[Tensor]:
        views = batch[0]
        return [v.contiguous(memory_format=torch.channels_last) if self.channels_last else v for v in views]

    def forward(self, x: Tensor) -> Tensor:
        return self.backbone(x)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9, weight_decay=1e-6)


class BareBackbone(_Peer):
    """The throughput bound: the backbone's forward + backward on every view, and the optimiser step."""

    def training_step(self, batch, batch_idx):
        return sum(self.backbone(x).float().square().mean() for x in self._views(batch))


class LightlySimCLR(_Peer):
    """SimCLR as in lightly's examples: 2-layer projection head, NT-Xent (temperature 0.5)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.projection_head = SimCLRProjectionHead(self.feat_dim, self.feat_dim, 128)
        self.criterion = NTXentLoss(temperature=0.5)

    def training_step(self, batch, batch_idx):
        x0, x1 = self._views(batch)[:2]
        z0 = self.projection_head(self.backbone(x0))
        z1 = self.projection_head(self.backbone(x1))
        return self.criterion(z0, z1)


class LightlyBYOL(_Peer):
    """BYOL as in lightly's examples: projection 4096-256, predictor, EMA teacher 0.99 -> 1 (cosine)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.projection_head = BYOLProjectionHead(self.feat_dim, 4096, 256)
        self.prediction_head = BYOLPredictionHead(256, 4096, 256)
        self.backbone_momentum = copy.deepcopy(self.backbone)
        self.projection_head_momentum = copy.deepcopy(self.projection_head)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.projection_head_momentum)
        self.criterion = NegativeCosineSimilarity()

    def training_step(self, batch, batch_idx):
        momentum = cosine_schedule(self.global_step, self.trainer.estimated_stepping_batches, 0.99, 1.0)
        update_momentum(self.backbone, self.backbone_momentum, m=momentum)
        update_momentum(self.projection_head, self.projection_head_momentum, m=momentum)
        x0, x1 = self._views(batch)[:2]
        p0 = self.prediction_head(self.projection_head(self.backbone(x0)))
        p1 = self.prediction_head(self.projection_head(self.backbone(x1)))
        with torch.no_grad():
            z0 = self.projection_head_momentum(self.backbone_momentum(x0))
            z1 = self.projection_head_momentum(self.backbone_momentum(x1))
        return 0.5 * (self.criterion(p0, z1) + self.criterion(p1, z0))


PEERS = {"bare_backbone": BareBackbone, "lightly_simclr": LightlySimCLR, "lightly_byol": LightlyBYOL}
