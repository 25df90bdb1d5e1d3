"""ER-BYOL: BYOL's online/target networks, the cosine loss replaced by the ER objective."""

from __future__ import annotations

from typing import Literal, Optional

import torch
import torch.nn.functional as F
from lightly.models.modules.heads import BYOLPredictionHead, BYOLProjectionHead
from torch import Tensor
from typing_extensions import override

from mvssl_lightning.core.optim import OptimizerName
from mvssl_lightning.core.steps import LRScaling
from mvssl_lightning.losses.er import ERSphereLoss, Reduction, mean_of_terms
from mvssl_lightning.losses.precision import at_least_float32
from mvssl_lightning.methods.base import SiameseModule
from mvssl_lightning.methods.momentum import EMATeacher, make_teacher
from mvssl_lightning.models.backbones import Backbone

__all__ = ["ERBYOL"]


class ERBYOL(SiameseModule):
    """ER-BYOL: the reconstruction predicts the EMA target; the entropy is estimated online.

    Algorithm (one step)::

        p_v = normalize(q(g(f(x_v))))                         # online projector + predictor
        with no_grad: t_v = normalize(g_ema(f_ema(x_v)))      # EMA target
        R   = [R_vMF(p_1, t_2) + R_vMF(p_2, t_1)] / 2          # vMF centred on the prediction
        H   = [H_KDE(e_1) + H_KDE(e_2)] / 2,  e = p ("prediction") or normalize(g(f(x))) ("projection")
        L   = w_rec R - w_ent H;  optimiser step;  EMA with m cosine base -> final

    Rationale (UNVERIFIED, see :mod:`mvssl_lightning.methods.er`): in the bound the reconstructed
    variable is the target ``Z2``, but the target has no gradient, so ``H`` is estimated on the online
    branch (default: the predictor output, i.e. the variable that the reconstruction moves).  ``R``
    equals BYOL's loss ``2 - 2 cos`` up to the scale ``kappa / 2`` and a constant, so the entropy is
    what ER adds; the paper's claim is that this makes BYOL robust to small EMA coefficients
    (``base_momentum`` 0.9 or even 0.0, i.e. target = online weights with a stop-gradient).

    Args:
        proj_hidden_dim, proj_output_dim, pred_hidden_dim: lightly BYOL heads (4096, 256, 4096).
        kappa, entropy_weight, reconstruction_weight, reduction, official_constant, gather_distributed: as
            :class:`~mvssl_lightning.methods.er.ERSimCLR`.
        entropy_on: ``"prediction"`` or ``"projection"`` (online branch).
        base_momentum, final_momentum: cosine EMA schedule per optimiser step (BYOL: 0.996 -> 1).
        Other arguments: :class:`SiameseModule`'s (defaults: LARS, lr 0.2, wd 1.5e-6).
    """

    default_views = "asymmetric"

    def __init__(
        self,
        proj_hidden_dim: int = 4096,
        proj_output_dim: int = 256,
        pred_hidden_dim: int = 4096,
        kappa: float = 10.0,
        entropy_weight: float = 1.0,
        reconstruction_weight: float = 1.0,
        reduction: Reduction = "expectation",
        entropy_on: Literal["prediction", "projection"] = "prediction",
        official_constant: bool = False,
        gather_distributed: bool = False,
        base_momentum: float = 0.996,
        final_momentum: float = 1.0,
        # SiameseModule's settings; defaults: BYOL's recipe (LARS, lr 0.2 x B/256, weight decay 1.5e-6)
        backbone: Backbone = "resnet50",
        cifar_stem: bool = False,
        zero_init_residual: bool = True,
        backbone_kwargs: Optional[dict] = None,
        optimizer: OptimizerName = "lars",
        lr: float = 0.2,
        lr_scaling: LRScaling = "linear",
        reference_batch_size: int = 256,
        batch_size: Optional[int] = None,
        weight_decay: float = 1.5e-6,
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
        if entropy_on not in ("prediction", "projection"):
            raise ValueError(f"entropy_on must be 'prediction' or 'projection', got {entropy_on!r}")
        self.projector = BYOLProjectionHead(self.feat_dim, proj_hidden_dim, proj_output_dim)
        self.predictor = BYOLPredictionHead(proj_output_dim, pred_hidden_dim, proj_output_dim)
        self.teacher_backbone = make_teacher(self.backbone)
        self.teacher_projector = make_teacher(self.projector)
        self.ema = EMATeacher(
            (("backbone", "teacher_backbone"), ("projector", "teacher_projector")), base_momentum, final_momentum
        )
        self.criterion = ERSphereLoss(
            kappa, entropy_weight, reduction, official_constant, gather_distributed, reconstruction_weight
        )
        self.entropy_on = entropy_on

    @override
    def compute_loss(self, views: list[Tensor]) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        features = [self.backbone(x) for x in views]
        projections = [self.projector(h) for h in features]
        preds = [F.normalize(at_least_float32(self.predictor(z)), dim=1) for z in projections]
        with torch.no_grad():
            targets = [
                F.normalize(at_least_float32(self.teacher_projector(self.teacher_backbone(x))), dim=1) for x in views
            ]
        if self.entropy_on == "prediction":
            on = preds
        else:
            on = [F.normalize(at_least_float32(z), dim=1) for z in projections]
        loss, terms = mean_of_terms(
            [self.criterion(preds[0], targets[1], on[0]), self.criterion(preds[1], targets[0], on[1])]
        )
        cosine = 0.5 * ((preds[0] * targets[1]).sum(1).mean() + (preds[1] * targets[0]).sum(1).mean())
        terms["cosine"] = cosine.detach()
        return loss, terms, features[0]
