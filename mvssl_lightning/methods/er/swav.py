"""ER-SwAV: SwAV's swapped prediction as the reconstruction plus an explicit discrete entropy."""

from __future__ import annotations

from typing import Literal, Optional

import torch
import torch.nn.functional as F
from lightly.loss.swav_loss import sinkhorn
from lightly.models.modules.heads import SwaVProjectionHead, SwaVPrototypes
from torch import Tensor
from typing_extensions import override

from mvssl_lightning.core.optim import OptimizerName
from mvssl_lightning.core.steps import LRScaling
from mvssl_lightning.losses.er import ERPrototypeLoss, Reduction
from mvssl_lightning.losses.precision import at_least_float32
from mvssl_lightning.methods.base import SiameseModule
from mvssl_lightning.models.backbones import Backbone

__all__ = ["ERSwAV"]


class ERSwAV(SiameseModule):
    """ER-SwAV: Sinkhorn codes of the globals predicted from every other view, minus the entropy.

    Algorithm (one step; views: 2 globals first, then any local crops)::

        normalise the prototypes C;   z_v = normalize(g(f(x_v)));   s_v = C^T z_v   (cosines)
        with no_grad: q_i = Sinkhorn(s_i)  (or softmax(s_i / epsilon) with use_sinkhorn=False), i = 1, 2
        p_v = softmax(s_v / tau)
        R   = mean_i mean_{v != i} CE(q_i, p_v)        (SwAV's swapped prediction, as lightly SwaVLoss)
            or mean_{i, v != i} R_disc(p_v, q_i)       ("er")
        H   = mean_v H_disc(p_v)                       (entropy of the batch-mean prototype assignment)
        L   = w_rec R - w_ent H

    The objective is :class:`~mvssl_lightning.losses.er.ERPrototypeLoss`; with ``entropy_weight=0`` it
    is lightly's ``SwaVLoss`` (tested).  Rationale (UNVERIFIED, see :mod:`mvssl_lightning.methods.er`):
    Sinkhorn's equipartition constraint keeps the marginal over prototypes uniform, i.e. it maximises
    the entropy term implicitly; ER-SwAV adds the explicit estimate (default: in addition to
    Sinkhorn; ``use_sinkhorn=False`` uses it instead).  No queue.

    Args:
        proj_hidden_dim, proj_output_dim: lightly ``SwaVProjectionHead`` (2048, 128).
        n_prototypes, n_steps_frozen_prototypes: lightly ``SwaVPrototypes`` (3000; frozen steps).
        temperature: ``tau`` of the predictions (0.1).
        sinkhorn_iterations, sinkhorn_epsilon: 3 and 0.05 (SwAV).
        use_sinkhorn: Sinkhorn codes (True) or plain ``softmax(s / epsilon)`` targets (False).
        sinkhorn_gather_distributed: Sinkhorn over all processes (as SwAV's distributed code).
        reconstruction: ``"cross_entropy"`` (SwAV) or ``"er"``.
        entropy_weight, reconstruction_weight, reduction, gather_distributed: as
            :class:`~mvssl_lightning.methods.er.ERDINO`.
        Other arguments: :class:`SiameseModule`'s (defaults: LARS, lr 0.3, wd 1e-6).
    """

    default_views = "mveb_multicrop"

    min_views = 2
    max_views = None

    def __init__(
        self,
        proj_hidden_dim: int = 2048,
        proj_output_dim: int = 128,
        n_prototypes: int = 3000,
        n_steps_frozen_prototypes: int = 0,
        temperature: float = 0.1,
        sinkhorn_iterations: int = 3,
        sinkhorn_epsilon: float = 0.05,
        use_sinkhorn: bool = True,
        sinkhorn_gather_distributed: bool = True,
        reconstruction: Literal["cross_entropy", "er"] = "cross_entropy",
        entropy_weight: float = 1.0,
        reconstruction_weight: float = 1.0,
        reduction: Reduction = "expectation",
        gather_distributed: bool = False,
        # SiameseModule's settings (SiameseModule's own defaults)
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
        self.projector = SwaVProjectionHead(self.feat_dim, proj_hidden_dim, proj_output_dim)
        self.prototypes = SwaVPrototypes(proj_output_dim, n_prototypes, n_steps_frozen_prototypes)
        self.criterion = ERPrototypeLoss(
            reconstruction, entropy_weight, reconstruction_weight, reduction, gather_distributed
        )
        self.temperature = temperature
        self.sinkhorn_iterations = sinkhorn_iterations
        self.sinkhorn_epsilon = sinkhorn_epsilon
        self.use_sinkhorn = use_sinkhorn
        self.sinkhorn_gather_distributed = sinkhorn_gather_distributed

    @torch.no_grad()
    def codes(self, scores: Tensor) -> Tensor:
        """Targets ``q`` of one global view's prototype scores (no gradient)."""
        if self.use_sinkhorn:
            return sinkhorn(scores, self.sinkhorn_iterations, self.sinkhorn_epsilon, self.sinkhorn_gather_distributed)
        return F.softmax(scores / self.sinkhorn_epsilon, dim=1)

    @override
    def compute_loss(self, views: list[Tensor]) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        with torch.no_grad():
            self.prototypes.normalize()
        features = [self.backbone(x) for x in views]
        scores = [self.prototypes(F.normalize(self.projector(h), dim=1), self.global_step) for h in features]
        with torch.autocast(device_type=features[0].device.type, enabled=False):
            scores = [at_least_float32(s) for s in scores]
            q = [self.codes(s.detach()) for s in scores[:2]]
            log_p = [F.log_softmax(s / self.temperature, dim=1) for s in scores]
        loss, terms = self.criterion(q, log_p)
        return loss, terms, features[0]
