"""ER-DINO: DINO's student/teacher with prototype probabilities and an explicit discrete entropy."""

from __future__ import annotations

from typing import Literal, Optional

import torch
import torch.nn.functional as F
from lightly.models.modules.center import Center
from lightly.models.modules.heads import DINOProjectionHead
from lightly.models.utils import deactivate_requires_grad
from torch import Tensor
from typing_extensions import override

from mvssl_lightning.core.optim import OptimizerName
from mvssl_lightning.core.steps import LRScaling
from mvssl_lightning.losses.er import ERPrototypeLoss, Reduction, er_discrete_entropy
from mvssl_lightning.losses.precision import at_least_float32
from mvssl_lightning.methods.base import SiameseModule
from mvssl_lightning.methods.momentum import EMATeacher, make_teacher
from mvssl_lightning.models.backbones import Backbone

__all__ = ["ERDINO"]


class ERDINO(SiameseModule):
    """ER-DINO: DINO's cross-entropy (or the ER discrete reconstruction) minus the student's entropy.

    Algorithm (one step; views: 2 globals first, then any local crops)::

        s_v = h(f(x_v)) for every view;     with no_grad: t_i = h_ema(f_ema(x_i)), i = 1, 2
        q_i = softmax((t_i - c) / tau_t)    (c: EMA centre of the teacher logits, if centering)
        p_v = softmax(s_v / tau_s)
        R   = mean_{i, v != i} CE(q_i, p_v)           ("cross_entropy", DINO's own loss)
            or mean_{i, v != i} R_disc(p_v, q_i)      ("er", official symmetrised discrete reconstruction)
        H   = mean_v H_disc(p_v)                      (entropy of the student's batch-mean assignment)
        L   = w_rec R - w_ent H;  update c;  optimiser step;  EMA (cosine base -> final)

    The objective is :class:`~mvssl_lightning.losses.er.ERPrototypeLoss`; with ``entropy_weight=0`` it
    is lightly's ``DINOLoss`` (tested).  Rationale (UNVERIFIED, see :mod:`mvssl_lightning.methods.er`):
    DINO's centering (with sharpening) keeps the teacher's marginal over the prototypes spread, i.e. it
    acts on the entropy term of the bound implicitly; ER-DINO maximises the entropy of the student's
    average prototype distribution explicitly (the teacher has no gradient).  ``centering=False``
    replaces the centering by the entropy term; the default keeps both.

    Args:
        head_hidden_dim, bottleneck_dim, output_dim, batch_norm_head, freeze_last_layer: lightly
            ``DINOProjectionHead`` (``output_dim`` = number of prototypes; the weight-normalised last
            layer is frozen for the first ``freeze_last_layer`` epochs).
        norm_last_layer: weight-normalised last layer with its norm fixed to 1 (DINO's default; its ViT-S/16
            300-epoch recipe sets False).
        teacher_temp, student_temp: 0.04 and 0.1 (DINO).
        warmup_teacher_temp, warmup_teacher_temp_epochs: DINO's teacher-temperature warm-up: in epoch ``e <
            W`` the temperature is ``linspace(warmup_teacher_temp, teacher_temp, W)[e]`` (``main_dino.py``
            ``DINOLoss``), then ``teacher_temp``; ``W = 0`` (default) keeps ``teacher_temp`` throughout.
        centering, center_momentum: teacher centering (lightly ``Center``, momentum 0.9).
        reconstruction: ``"cross_entropy"`` or ``"er"``.
        entropy_weight, reconstruction_weight, reduction, gather_distributed: as
            :class:`~mvssl_lightning.methods.er.ERSimCLR` (discrete estimators).
        base_momentum, final_momentum: teacher EMA (DINO: 0.996 -> 1).
        Other arguments: :class:`SiameseModule`'s (defaults: LARS, lr 0.3, wd 1e-6).

    Logs ``train/teacher_entropy`` (the discrete entropy of the teacher's batch-mean assignment) too.
    """

    default_views = "mveb_multicrop"

    min_views = 2
    max_views = None

    def __init__(
        self,
        head_hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        output_dim: int = 65536,
        batch_norm_head: bool = False,
        freeze_last_layer: int = 1,
        norm_last_layer: bool = True,
        teacher_temp: float = 0.04,
        warmup_teacher_temp: float = 0.04,
        warmup_teacher_temp_epochs: int = 0,
        student_temp: float = 0.1,
        centering: bool = True,
        center_momentum: float = 0.9,
        reconstruction: Literal["cross_entropy", "er"] = "cross_entropy",
        entropy_weight: float = 1.0,
        reconstruction_weight: float = 1.0,
        reduction: Reduction = "expectation",
        gather_distributed: bool = False,
        base_momentum: float = 0.996,
        final_momentum: float = 1.0,
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
        if warmup_teacher_temp_epochs < 0:
            raise ValueError(f"warmup_teacher_temp_epochs must be >= 0, got {warmup_teacher_temp_epochs}")
        head_args = (self.feat_dim, head_hidden_dim, bottleneck_dim, output_dim, batch_norm_head, freeze_last_layer,
                     norm_last_layer)
        self.head = DINOProjectionHead(*head_args)
        self.teacher_backbone = make_teacher(self.backbone)
        # a weight-normalised layer cannot be deep-copied: build the teacher head and copy the weights
        self.teacher_head = DINOProjectionHead(*head_args)
        self.teacher_head.load_state_dict(self.head.state_dict())
        deactivate_requires_grad(self.teacher_head)
        self.ema = EMATeacher(
            (("backbone", "teacher_backbone"), ("head", "teacher_head")), base_momentum, final_momentum
        )
        self.center = Center((1, output_dim), momentum=center_momentum)
        self.criterion = ERPrototypeLoss(
            reconstruction, entropy_weight, reconstruction_weight, reduction, gather_distributed
        )
        self.teacher_temp = teacher_temp
        self.warmup_teacher_temp = warmup_teacher_temp
        self.warmup_teacher_temp_epochs = int(warmup_teacher_temp_epochs)
        self.student_temp = student_temp
        self.centering = centering

    def current_teacher_temp(self) -> float:
        """The teacher temperature of the current epoch (class docstring)."""
        epoch, warmup = self.current_epoch, self.warmup_teacher_temp_epochs
        if epoch >= warmup:
            return self.teacher_temp
        if warmup == 1:
            return self.warmup_teacher_temp
        return self.warmup_teacher_temp + (self.teacher_temp - self.warmup_teacher_temp) * epoch / (warmup - 1)

    @override
    def compute_loss(self, views: list[Tensor]) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        features = [self.backbone(x) for x in views]
        log_p = [F.log_softmax(at_least_float32(self.head(h)) / self.student_temp, dim=1) for h in features]
        with torch.no_grad():
            t_logits = [at_least_float32(self.teacher_head(self.teacher_backbone(x))) for x in views[:2]]
            shift = self.center.value if self.centering else 0.0
            tau = self.current_teacher_temp()
            q = [F.softmax((t - shift) / tau, dim=1) for t in t_logits]
        loss, terms = self.criterion(q, log_p)
        terms["teacher_entropy"] = sum(er_discrete_entropy(qi) for qi in q) / len(q)
        if self.centering:
            self.center.update(torch.cat(t_logits))
        return loss, terms, features[0]

    @override
    def on_after_backward(self) -> None:
        self.head.cancel_last_layer_gradients(self.current_epoch)
