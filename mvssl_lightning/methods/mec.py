"""MEC as a LightningModule (Liu et al., "Self-Supervised Learning via Maximum Entropy Coding",
NeurIPS 2022), following the official code ``xinliu20/MEC`` (``main_pretrain.py``, ``mec/builder.py``).

Algorithm (one training step; the objective is :mod:`mvssl_lightning.losses.mec`)::

    z_v = h(g(f(x_v)))                            v = 1, 2   (online: backbone, projector, predictor)
    with no_grad:  p_v = g_ema(f_ema(x_v))                   (EMA teacher, no predictor)
    lambda = d / (m eps^2),  m = global batch,  eps^2 = 64
    lambda_inv_t: linear from 8 / lambda to 1 / lambda over the first 10 epochs, then 1 / lambda
    L = -lambda_inv_t * (T(p1, z2) + T(p2, z1)) / (2 m)      (4th-order Taylor log det, gathered)
    optimiser step, then EMA: theta_ema <- m_t theta_ema + (1 - m_t) theta,
    m_t = 1 - (1 - 0.996)(cos(pi t / T) + 1) / 2

Projector: feat-2048 (BN, ReLU)-2048 (BN, ReLU)-2048, BN(affine=False); the hidden Linears have no
bias and the last Linear's bias is frozen in the code, i.e. irrelevant before BN, so it is dropped
here.  Predictor: 2048-512 (BN, ReLU)-2048.  The teacher is a copy of backbone + projector, in train
mode (batch statistics), only parameters averaged.  Official recipe: SGD, lr 0.5 x B/256, momentum
0.9, wd 1e-5 on all parameters, warm-up 10 epochs from 0, cosine to 0, 100 epochs, batch 1024 on
8 GPUs, SyncBN, fp32, asymmetric BYOL / MoCo v3 views.
"""

from __future__ import annotations

from typing import Literal, Optional

import torch
from lightly.models.modules.heads import ProjectionHead
from torch import Tensor, nn
from typing_extensions import override

from mvssl_lightning.core.compat import attached_trainer
from mvssl_lightning.core.optim import OptimizerName
from mvssl_lightning.core.steps import LRScaling
from mvssl_lightning.losses.mec import MECLoss, mec_lambda
from mvssl_lightning.methods.base import SiameseModule
from mvssl_lightning.methods.momentum import EMATeacher, make_teacher
from mvssl_lightning.models.backbones import Backbone


def mec_projector(input_dim: int, hidden_dim: int = 2048, output_dim: int = 2048) -> ProjectionHead:
    """3-layer MLP: bias-free Linears, BN + ReLU on the hidden layers, BN(affine=False) on the output."""
    return ProjectionHead(
        [
            (input_dim, hidden_dim, nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True), False),
            (hidden_dim, hidden_dim, nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True), False),
            (hidden_dim, output_dim, nn.BatchNorm1d(output_dim, affine=False), None, False),
        ]
    )


def mec_predictor(dim: int = 2048, hidden_dim: int = 512) -> ProjectionHead:
    """2-layer bottleneck MLP: Linear (no bias)-BN-ReLU, then Linear with bias."""
    return ProjectionHead(
        [
            (dim, hidden_dim, nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True), False),
            (hidden_dim, dim, None, None, True),
        ]
    )


def lambda_inv_schedule(step: int, warmup_steps: int, lambda_inv: float, start_factor: float = 8.0) -> float:
    """``1 / lambda`` at iteration ``step`` (0-indexed): ``np.linspace(start_factor / lambda, 1 / lambda, W)``
    over the first ``W = warmup_steps`` iterations, then constant (official ``lamda_scheduler``; the
    linspace includes its end point, so iteration ``W - 1`` already uses ``1 / lambda``)."""
    if step >= warmup_steps:
        return lambda_inv
    start = start_factor * lambda_inv
    if warmup_steps == 1:
        return start
    return start + (lambda_inv - start) * step / (warmup_steps - 1)


class MEC(SiameseModule):
    """Maximum entropy coding with an EMA teacher and a predictor.

    Args:
        proj_hidden_dim, proj_output_dim: projector widths (2048, 2048 in the code; ``d`` is
            ``proj_output_dim``).
        pred_hidden_dim: predictor bottleneck (512).
        eps_sq: ``eps^2`` of ``lambda = d / (m eps^2)`` (the code's ``--eps``, 64).
        order: Taylor order of the log det (4).
        lambda_warmup_epochs: epochs of the linear ``1 / lambda`` warm-up (10, per optimiser step).
        lambda_warmup_factor: the warm-up starts at ``lambda_warmup_factor / lambda`` (8).
        loss_scaling: ``"code"`` (default; what the official code optimises: ``-lambda_inv * mec``,
            i.e. eq. 3 with ``mu`` replaced by ``1 / (lambda m)``) or ``"paper_mu"`` (``-mu * mec``,
            ``mu = (m + d) / 2``, eq. 3's factor per sample; retune the lr, it is ~48x larger at
            m = 1024, d = 2048).
        base_momentum, final_momentum: cosine EMA schedule (0.996 -> 1, per optimiser step).
        gather_distributed: compute the loss on the batch gathered from all processes with gradients
            (default True, as the official code); ``m`` is then the global batch.
        Other arguments: :class:`SiameseModule`'s, with the official recipe as defaults.

    Logs ``train/loss``, ``train/mec`` (``mu * mec``, the per-sample coding length the code logs),
    ``train/lambda_inv`` and ``train/ema_momentum``.
    """

    default_views = "asymmetric"

    min_views = 2
    max_views = 2

    def __init__(
        self,
        proj_hidden_dim: int = 2048,
        proj_output_dim: int = 2048,
        pred_hidden_dim: int = 512,
        eps_sq: float = 64.0,
        order: int = 4,
        lambda_warmup_epochs: float = 10.0,
        lambda_warmup_factor: float = 8.0,
        loss_scaling: Literal["code", "paper_mu"] = "code",
        base_momentum: float = 0.996,
        final_momentum: float = 1.0,
        gather_distributed: bool = True,
        # SiameseModule's settings; defaults: the official recipe (``main_pretrain.py``)
        backbone: Backbone = "resnet50",
        cifar_stem: bool = False,
        zero_init_residual: bool = True,
        backbone_kwargs: Optional[dict] = None,
        optimizer: OptimizerName = "sgd",
        lr: float = 0.5,
        lr_scaling: LRScaling = "linear",
        reference_batch_size: int = 256,
        batch_size: Optional[int] = None,
        weight_decay: float = 1e-5,
        momentum: float = 0.9,
        betas: tuple[float, float] = (0.9, 0.999),
        trust_coefficient: float = 0.001,
        exclude_bias_and_norm: bool = False,
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
        if eps_sq <= 0 or lambda_warmup_epochs < 0 or lambda_warmup_factor <= 0:
            raise ValueError(
                f"need eps_sq > 0, lambda_warmup_epochs >= 0, lambda_warmup_factor > 0; "
                f"got {eps_sq}, {lambda_warmup_epochs}, {lambda_warmup_factor}"
            )
        self.projector = mec_projector(self.feat_dim, proj_hidden_dim, proj_output_dim)
        self.predictor = mec_predictor(proj_output_dim, pred_hidden_dim)
        self.teacher_backbone = make_teacher(self.backbone)
        self.teacher_projector = make_teacher(self.projector)
        # official order: iteration it (0-indexed) steps, then updates the teacher with m_it, it = step - 1
        self.ema = EMATeacher(
            (("backbone", "teacher_backbone"), ("projector", "teacher_projector")),
            base_momentum,
            final_momentum,
            step_offset=-1,
        )
        self.criterion = MECLoss(order, gather_distributed, loss_scaling)
        self.proj_output_dim = proj_output_dim
        self.eps_sq = eps_sq
        self.lambda_warmup_epochs = lambda_warmup_epochs
        self.lambda_warmup_factor = lambda_warmup_factor
        self.gather_distributed = gather_distributed

    # ------------------------------------------------------------------ lambda schedule
    def _lambda_warmup_steps(self) -> int:
        return self.epochs_to_steps(self.lambda_warmup_epochs) if attached_trainer(self) is not None else 0

    def current_lambda_inv(self, batch_size: int) -> float:
        """``1 / lambda`` for this optimiser step, with ``m = batch_size x world_size`` when gathering."""
        trainer = attached_trainer(self)
        world = trainer.world_size if (trainer is not None and self.gather_distributed) else 1
        step = trainer.global_step if trainer is not None else 0
        lambda_inv = 1.0 / mec_lambda(self.proj_output_dim, batch_size * world, self.eps_sq)
        return lambda_inv_schedule(step, self._lambda_warmup_steps(), lambda_inv, self.lambda_warmup_factor)

    # ------------------------------------------------------------------ steps
    @override
    def compute_loss(self, views: list[Tensor]) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        x1, x2 = views
        f1, f2 = self.backbone(x1), self.backbone(x2)
        z1, z2 = self.predictor(self.projector(f1)), self.predictor(self.projector(f2))
        with torch.no_grad():
            p1 = self.teacher_projector(self.teacher_backbone(x1))
            p2 = self.teacher_projector(self.teacher_backbone(x2))
        lambda_inv = self.current_lambda_inv(x1.shape[0])
        loss, terms = self.criterion(p1, p2, z1, z2, lambda_inv)
        terms["lambda_inv"] = torch.full((), lambda_inv, device=loss.device)  # a fill: no host-to-device copy
        return loss, terms, f1
