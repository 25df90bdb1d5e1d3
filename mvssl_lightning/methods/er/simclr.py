"""ER-SimCLR: SimCLR's network, InfoNCE replaced by the ER objective on the sphere."""

from __future__ import annotations

from typing import Optional

import torch.nn.functional as F
from lightly.models.modules.heads import SimCLRProjectionHead
from torch import Tensor
from typing_extensions import override

from mvssl_lightning.core.optim import OptimizerName
from mvssl_lightning.core.steps import LRScaling
from mvssl_lightning.losses.er import ERSphereLoss, Reduction, mean_of_terms
from mvssl_lightning.losses.precision import at_least_float32
from mvssl_lightning.methods.base import SiameseModule
from mvssl_lightning.models.backbones import Backbone

__all__ = ["ERSimCLR"]


class ERSimCLR(SiameseModule):
    """ER-SimCLR: both branches online, no EMA.

    Algorithm (one step)::

        z_v = normalize(g(f(x_v))),  v = 1, 2                       # SimCLR projector, both online
        R   = [R_vMF(z_1, z_2) + R_vMF(z_2, z_1)] / 2                # = mean_b[-kappa z_1.z_2] - log C_d
        H   = [H_KDE(z_1) + H_KDE(z_2)] / 2                          # vMF-KDE, per branch
        L   = w_rec R - w_ent H

    Rationale (UNVERIFIED, see :mod:`mvssl_lightning.methods.er`): InfoNCE is a vMF reconstruction
    plus a KDE entropy estimated across the two views; ER-SimCLR estimates ``H(Z)`` of each branch on
    its own batch, both branches receive gradients, no EMA.  ``kappa = 10`` is the official
    estimators' default (= 1 / SimCLR's temperature 0.1).

    Args:
        proj_hidden_dim, proj_output_dim, proj_num_layers: lightly ``SimCLRProjectionHead`` (BN).
        kappa: vMF concentration of both estimators.
        entropy_weight, reconstruction_weight: ``w_ent``, ``w_rec``.
        reduction: sphere-entropy reduction (``"expectation"``, official default, or ``"average"``).
        official_constant: reproduce the official ``log(iv + 1e-7)`` constant (value only).
        gather_distributed: estimate the entropy on the batch of all processes (official: False).
        Other arguments: :class:`SiameseModule`'s (defaults: LARS, lr 0.3, wd 1e-6).
    """

    default_views = "two_views"

    def __init__(
        self,
        proj_hidden_dim: int = 2048,
        proj_output_dim: int = 128,
        proj_num_layers: int = 2,
        kappa: float = 10.0,
        entropy_weight: float = 1.0,
        reconstruction_weight: float = 1.0,
        reduction: Reduction = "expectation",
        official_constant: bool = False,
        gather_distributed: bool = False,
        # SiameseModule's settings; defaults: SimCLR's recipe (LARS, lr 0.3 x B/256, weight decay 1e-6)
        backbone: Backbone = "resnet50",
        cifar_stem: bool = False,
        zero_init_residual: bool = True,
        backbone_kwargs: Optional[dict] = None,
        optimizer: OptimizerName = "lars",
        lr: float = 0.3,
        lr_scaling: LRScaling = "linear",
        reference_batch_size: int = 256,
        batch_size: Optional[int] = None,
        weight_decay: float = 1e-6,
        momentum: float = 0.9,
        betas: tuple[float, float] = (0.9, 0.999),
        trust_coefficient: float = 0.001,
        exclude_bias_and_norm: bool = True,
        warmup_epochs: float = 10.0,
        warmup_steps: Optional[int] = None,
        warmup_start_factor: float = 0.0,
        min_lr_factor: float = 0.0,
        cosine_over_total: bool = False,
        channels_last: bool = False,
        compile: bool = False,
        check_finite: bool = True,
        skip_nonfinite_grads: bool = False,
        exclude_embeddings: bool = True,
        weight_decay_end: Optional[float] = None,
        clip_grad: Optional[float] = None,
    ) -> None:
        super().__init__(
            backbone=backbone, cifar_stem=cifar_stem, zero_init_residual=zero_init_residual,
            backbone_kwargs=backbone_kwargs, optimizer=optimizer, lr=lr, lr_scaling=lr_scaling,
            reference_batch_size=reference_batch_size, batch_size=batch_size, weight_decay=weight_decay,
            momentum=momentum, betas=betas, trust_coefficient=trust_coefficient,
            exclude_bias_and_norm=exclude_bias_and_norm, warmup_epochs=warmup_epochs, warmup_steps=warmup_steps,
            warmup_start_factor=warmup_start_factor, min_lr_factor=min_lr_factor, cosine_over_total=cosine_over_total,
            channels_last=channels_last, compile=compile, check_finite=check_finite,
            skip_nonfinite_grads=skip_nonfinite_grads,
            exclude_embeddings=exclude_embeddings, weight_decay_end=weight_decay_end, clip_grad=clip_grad,
        )
        self.projector = SimCLRProjectionHead(self.feat_dim, proj_hidden_dim, proj_output_dim, proj_num_layers)
        self.criterion = ERSphereLoss(
            kappa, entropy_weight, reduction, official_constant, gather_distributed, reconstruction_weight
        )

    @override
    def compute_loss(self, views: list[Tensor]) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        h1, h2 = (self.backbone(x) for x in views)
        z1, z2 = (F.normalize(at_least_float32(self.projector(h)), dim=1) for h in (h1, h2))
        loss, terms = mean_of_terms([self.criterion(z1, z2), self.criterion(z2, z1)])
        terms["cosine"] = (z1 * z2).sum(dim=1).mean().detach()
        return loss, terms, h1
