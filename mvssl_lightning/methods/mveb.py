"""MVEB as a LightningModule (Wen et al., "MVEB: Self-Supervised Learning with Multi-View Entropy
Bottleneck", TPAMI 2024), following the official code ``wlj6816/MVEB`` (``project/model.py``).

Algorithm (one training step; the objective is :mod:`mvssl_lightning.losses.mveb`)::

    for every crop v (2 globals + locals):  z_v = normalize(g(f(x_v)))        # one pass per crop
    with no_grad:                           t_k = normalize(g_ema(f_ema(x_k))), k = 1, 2 (globals)
    L = -A(z, t) - lambda * U(z)            # alignment + Stein entropy surrogate
    optimiser step, then EMA: theta_ema <- m_t theta_ema + (1 - m_t) theta,
    m_t = 1 - (1 - 0.996)(cos(pi t / T) + 1) / 2

Each crop goes through the networks on its own, as in the official code, so BatchNorm statistics
are per crop.  Projector: 2048-2048 (BN, ReLU)-2048 (BN, ReLU)-2048 (bias, no BN); no predictor.
Official recipe (``configs/mveb.py``): LARS, lr 0.3 x B/256, wd 1e-6, warm-up 10 epochs from
1e-3 lr, cosine over the *total* steps to 1e-3 lr, 800 epochs, batch 4096, SyncBN.
Paper vs code: the paper writes a Siamese objective; the code uses the EMA target (followed here).
Optimiser difference: we use lightly's LARS, whose trust ratio is ``||p|| / (||g|| + wd ||p||)``;
the official (Barlow Twins) LARS uses ``||p|| / ||g + wd p||``; both skip 1-D parameters.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from lightly.models.modules.heads import ProjectionHead
from torch import Tensor, nn
from typing_extensions import override

from mvssl_lightning.core.optim import OptimizerName
from mvssl_lightning.core.steps import LRScaling
from mvssl_lightning.losses.mveb import MVEBLoss
from mvssl_lightning.losses.precision import at_least_float32
from mvssl_lightning.methods.base import SiameseModule
from mvssl_lightning.methods.momentum import EMATeacher, make_teacher
from mvssl_lightning.models.backbones import Backbone


def mveb_projector(input_dim: int, hidden_dim: int = 2048, output_dim: int = 2048) -> ProjectionHead:
    """3-layer MLP: bias-free hidden Linears with BN + ReLU, output Linear with bias and no BN."""
    return ProjectionHead(
        [
            (input_dim, hidden_dim, nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True), False),
            (hidden_dim, hidden_dim, nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True), False),
            (hidden_dim, output_dim, None, None, True),
        ]
    )


class MVEB(SiameseModule):
    """Multi-view entropy bottleneck with an EMA target.

    Args:
        proj_hidden_dim, proj_output_dim: projector widths (2048, 2048 in the paper's code).
        lambd: weight of the entropy term (``lambd`` = 0.01, "balance factor for neg grad").
        eta: ridge of the Stein estimator's kernel inverse (0.01).
        min_bandwidth: floor of the median-heuristic kernel width (0.1).
        base_momentum, final_momentum: cosine EMA schedule (0.996 -> 1, per optimiser step).
        gather_distributed: estimate the entropy on the batch gathered from all processes (the
            official code uses the per-GPU batch, so the default is False).
        Other arguments: :class:`SiameseModule`'s, with the official recipe as defaults.
    """

    default_views = "mveb_multicrop"

    min_views = 2
    max_views = None

    def __init__(
        self,
        proj_hidden_dim: int = 2048,
        proj_output_dim: int = 2048,
        lambd: float = 0.01,
        eta: float = 0.01,
        min_bandwidth: float = 0.1,
        base_momentum: float = 0.996,
        final_momentum: float = 1.0,
        gather_distributed: bool = False,
        # SiameseModule's settings; defaults: the official recipe (``configs/mveb.py``)
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
        warmup_start_factor: float = 1e-3,
        min_lr_factor: float = 1e-3,
        cosine_over_total: bool = True,
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
        self.projector = mveb_projector(self.feat_dim, proj_hidden_dim, proj_output_dim)
        self.teacher_backbone = make_teacher(self.backbone)
        self.teacher_projector = make_teacher(self.projector)
        # the official code updates with m_t at the start of iteration t, i.e. after t optimiser steps
        self.ema = EMATeacher(
            (("backbone", "teacher_backbone"), ("projector", "teacher_projector")), base_momentum, final_momentum
        )
        self.criterion = MVEBLoss(lambd, eta, min_bandwidth, gather_distributed)

    @override
    def compute_loss(self, views: list[Tensor]) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        features = [self.backbone(x) for x in views]
        online = [F.normalize(at_least_float32(self.projector(h)), dim=1) for h in features]
        with torch.no_grad():
            teacher = [self.teacher_projector(self.teacher_backbone(x)) for x in views[:2]]
            targets = [F.normalize(at_least_float32(t), dim=1) for t in teacher]
        loss, terms = self.criterion(online, targets)
        return loss, terms, features[0]
