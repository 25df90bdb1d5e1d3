"""ER versions of SimCLR, BYOL, DINO and SwAV (Rodríguez-Gálvez et al., "The Role of Entropy and
Reconstruction in Multi-View Self-Supervised Learning", ICML 2023, arXiv 2307.10907).

Every variant minimises the ER bound's negative (estimators: :mod:`mvssl_lightning.losses.er`)::

    L = w_rec * reconstruction - w_ent * entropy,    I(Z1; Z2) >= H(Z2) + E[log q(Z2 | Z1)]

The official code (``apple/ml-entropy-reconstruction``) provides only the estimators.  How each host
method is turned into its ER version (which branch the entropy is estimated on, kappa, weights,
stop-gradients, EMA) is in the paper body, which could not be read (methods.md §4, §10.1): the
choices below are **UNVERIFIED**, derived from the bound, and every one is a constructor argument.
Common to all variants: the entropy is estimated on a branch that receives gradients (an EMA target
has none), the reconstruction predicts the (stop-gradient) target when there is one, and
``gather_distributed`` estimates the entropy on the global batch.

Logged terms: ``train/reconstruction``, ``train/entropy`` and the method-specific ones.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from lightly.loss.swav_loss import sinkhorn
from lightly.models.modules.center import Center
from lightly.models.modules.heads import (
    BYOLPredictionHead,
    BYOLProjectionHead,
    DINOProjectionHead,
    SimCLRProjectionHead,
    SwaVProjectionHead,
    SwaVPrototypes,
)
from lightly.models.utils import deactivate_requires_grad
from torch import Tensor

from mvssl_lightning.losses.precision import at_least_float32
from mvssl_lightning.losses.er import (
    REDUCTIONS,
    er_discrete_entropy,
    er_discrete_reconstruction,
    er_sphere_entropy,
    er_sphere_reconstruction,
)
from mvssl_lightning.methods.base import SiameseModule
from mvssl_lightning.methods.momentum import cosine_momentum, make_teacher, update_momentum

__all__ = ["ERBYOL", "ERDINO", "ERSimCLR", "ERSwAV"]


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


class _ERModule(SiameseModule):
    """The shared pieces: the ER weighting and logging, and the EMA of (student, teacher) pairs.

    Subclasses set ``reconstruction_weight``, ``entropy_weight`` and, with an EMA teacher,
    ``ema_pairs`` (names of ``(student, teacher)`` submodules), ``base_momentum``, ``final_momentum``.
    """

    reconstruction_weight: float = 1.0
    entropy_weight: float = 1.0
    ema_pairs: tuple[tuple[str, str], ...] = ()
    base_momentum: float = 0.996
    final_momentum: float = 1.0

    def er_objective(self, reconstruction: Tensor, entropy: Tensor, **extra: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """``(w_rec R - w_ent H, {"reconstruction": R, "entropy": H, **extra})`` (terms detached)."""
        loss = self.reconstruction_weight * reconstruction - self.entropy_weight * entropy
        terms = {"reconstruction": reconstruction, "entropy": entropy, **extra}
        return loss, {k: v.detach() for k, v in terms.items()}

    def on_after_optimizer_step(self, step: int) -> None:
        """EMA ``theta_t <- m theta_t + (1 - m) theta_s``, ``m`` cosine from ``base`` to ``final``."""
        if not self.ema_pairs:
            return
        momentum = cosine_momentum(step, self.total_steps(), self.base_momentum, self.final_momentum)
        for student, teacher in self.ema_pairs:
            update_momentum(getattr(self, student), getattr(self, teacher), momentum)
        self.log("train/ema_momentum", momentum)


# ============================================================================ ER-SimCLR


class ERSimCLR(_ERModule):
    """ER-SimCLR: SimCLR's network, InfoNCE replaced by the ER objective on the sphere.

    Algorithm (one step)::

        z_v = normalize(g(f(x_v))),  v = 1, 2                       # SimCLR projector, both online
        R   = [R_vMF(z_1, z_2) + R_vMF(z_2, z_1)] / 2                # = mean_b[-kappa z_1.z_2] - log C_d
        H   = [H_KDE(z_1) + H_KDE(z_2)] / 2                          # vMF-KDE, per branch
        L   = w_rec R - w_ent H

    Rationale (UNVERIFIED, paper body unread): InfoNCE is a vMF reconstruction plus a KDE entropy
    estimated across the two views; ER-SimCLR estimates ``H(Z)`` of each branch on its own batch,
    both branches receive gradients, no EMA.  ``kappa = 10`` is the official estimators' default
    (= 1 / SimCLR's temperature 0.1).

    Args:
        proj_hidden_dim, proj_output_dim, proj_num_layers: lightly ``SimCLRProjectionHead`` (BN).
        kappa: vMF concentration of both estimators.
        entropy_weight, reconstruction_weight: ``w_ent``, ``w_rec``.
        reduction: sphere-entropy reduction (``"expectation"``, official default, or ``"average"``).
        official_constant: reproduce the official ``log(iv + 1e-7)`` constant (value only).
        gather_distributed: estimate the entropy on the batch of all processes (official: False).
        **kwargs: backbone and optimisation settings of :class:`SiameseModule`.
    """

    def __init__(
        self,
        backbone: str = "resnet50",
        proj_hidden_dim: int = 2048,
        proj_output_dim: int = 128,
        proj_num_layers: int = 2,
        kappa: float = 10.0,
        entropy_weight: float = 1.0,
        reconstruction_weight: float = 1.0,
        reduction: str = "expectation",
        official_constant: bool = False,
        gather_distributed: bool = False,
        optimizer: str = "lars",
        lr: float = 0.3,
        weight_decay: float = 1e-6,
        **kwargs: Any,
    ) -> None:
        super().__init__(backbone=backbone, optimizer=optimizer, lr=lr, weight_decay=weight_decay, **kwargs)
        self.save_hyperparameters()
        _choice("reduction", reduction, REDUCTIONS)
        self.projector = SimCLRProjectionHead(self.feat_dim, proj_hidden_dim, proj_output_dim, proj_num_layers)
        self.kappa = kappa
        self.entropy_weight = entropy_weight
        self.reconstruction_weight = reconstruction_weight
        self.reduction = reduction
        self.official_constant = official_constant
        self.gather_distributed = gather_distributed

    def compute_loss(self, views: list[Tensor]) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        h1, h2 = (self.backbone(x) for x in views)
        z1, z2 = (F.normalize(at_least_float32(self.projector(h)), dim=1) for h in (h1, h2))
        k, c = self.kappa, self.official_constant
        rec = 0.5 * (er_sphere_reconstruction(z1, z2, k, c) + er_sphere_reconstruction(z2, z1, k, c))
        ent = 0.5 * sum(er_sphere_entropy(z, k, self.reduction, c, self.gather_distributed) for z in (z1, z2))
        loss, terms = self.er_objective(rec, ent, cosine=(z1 * z2).sum(dim=1).mean())
        return loss, terms, h1


# ============================================================================ ER-BYOL


class ERBYOL(_ERModule):
    """ER-BYOL: BYOL's online/target networks, the cosine loss replaced by the ER objective.

    Algorithm (one step)::

        p_v = normalize(q(g(f(x_v))))                         # online projector + predictor
        with no_grad: t_v = normalize(g_ema(f_ema(x_v)))      # EMA target
        R   = [R_vMF(p_1, t_2) + R_vMF(p_2, t_1)] / 2          # vMF centred on the prediction
        H   = [H_KDE(e_1) + H_KDE(e_2)] / 2,  e = p ("prediction") or normalize(g(f(x))) ("projection")
        L   = w_rec R - w_ent H;  optimiser step;  EMA with m cosine base -> final

    Rationale (UNVERIFIED): in the bound the reconstructed variable is the target ``Z2``, but the
    target has no gradient, so ``H`` is estimated on the online branch (default: the predictor
    output, i.e. the variable that the reconstruction moves).  ``R`` equals BYOL's loss
    ``2 - 2 cos`` up to the scale ``kappa / 2`` and a constant, so the entropy is what ER adds; the
    paper's claim is that this makes BYOL robust to small EMA coefficients (``base_momentum`` 0.9 or
    even 0.0, i.e. target = online weights with a stop-gradient).

    Args:
        proj_hidden_dim, proj_output_dim, pred_hidden_dim: lightly BYOL heads (4096, 256, 4096).
        kappa, entropy_weight, reconstruction_weight, reduction, official_constant,
        gather_distributed: as :class:`ERSimCLR`.
        entropy_on: ``"prediction"`` or ``"projection"`` (online branch).
        base_momentum, final_momentum: cosine EMA schedule per optimiser step (BYOL: 0.996 -> 1).
        **kwargs: backbone and optimisation settings of :class:`SiameseModule`.
    """

    ema_pairs = (("backbone", "teacher_backbone"), ("projector", "teacher_projector"))

    def __init__(
        self,
        backbone: str = "resnet50",
        proj_hidden_dim: int = 4096,
        proj_output_dim: int = 256,
        pred_hidden_dim: int = 4096,
        kappa: float = 10.0,
        entropy_weight: float = 1.0,
        reconstruction_weight: float = 1.0,
        reduction: str = "expectation",
        entropy_on: str = "prediction",
        official_constant: bool = False,
        gather_distributed: bool = False,
        base_momentum: float = 0.996,
        final_momentum: float = 1.0,
        optimizer: str = "lars",
        lr: float = 0.2,
        weight_decay: float = 1.5e-6,
        **kwargs: Any,
    ) -> None:
        super().__init__(backbone=backbone, optimizer=optimizer, lr=lr, weight_decay=weight_decay, **kwargs)
        self.save_hyperparameters()
        _choice("reduction", reduction, REDUCTIONS)
        _choice("entropy_on", entropy_on, ("prediction", "projection"))
        self.projector = BYOLProjectionHead(self.feat_dim, proj_hidden_dim, proj_output_dim)
        self.predictor = BYOLPredictionHead(proj_output_dim, pred_hidden_dim, proj_output_dim)
        self.teacher_backbone = make_teacher(self.backbone)
        self.teacher_projector = make_teacher(self.projector)
        self.kappa = kappa
        self.entropy_weight = entropy_weight
        self.reconstruction_weight = reconstruction_weight
        self.reduction = reduction
        self.entropy_on = entropy_on
        self.official_constant = official_constant
        self.gather_distributed = gather_distributed
        self.base_momentum = base_momentum
        self.final_momentum = final_momentum

    def compute_loss(self, views: list[Tensor]) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        features = [self.backbone(x) for x in views]
        projections = [self.projector(h) for h in features]
        preds = [F.normalize(at_least_float32(self.predictor(z)), dim=1) for z in projections]
        with torch.no_grad():
            targets = [F.normalize(at_least_float32(self.teacher_projector(self.teacher_backbone(x))), dim=1) for x in views]
        k, c = self.kappa, self.official_constant
        rec = 0.5 * (er_sphere_reconstruction(preds[0], targets[1], k, c) + er_sphere_reconstruction(preds[1], targets[0], k, c))
        on = preds if self.entropy_on == "prediction" else [F.normalize(at_least_float32(z), dim=1) for z in projections]
        ent = 0.5 * sum(er_sphere_entropy(e, k, self.reduction, c, self.gather_distributed) for e in on)
        cosine = 0.5 * ((preds[0] * targets[1]).sum(1).mean() + (preds[1] * targets[0]).sum(1).mean())
        loss, terms = self.er_objective(rec, ent, cosine=cosine)
        return loss, terms, features[0]


# ============================================================================ ER-DINO


class ERDINO(_ERModule):
    """ER-DINO: DINO's student/teacher with prototype probabilities and an explicit discrete entropy.

    Algorithm (one step; views: 2 globals first, then any local crops)::

        s_v = h(f(x_v)) for every view;     with no_grad: t_i = h_ema(f_ema(x_i)), i = 1, 2
        q_i = softmax((t_i - c) / tau_t)    (c: EMA centre of the teacher logits, if centering)
        p_v = softmax(s_v / tau_s)
        R   = mean_{i, v != i} CE(q_i, p_v)           ("cross_entropy", DINO's own loss)
            or mean_{i, v != i} R_disc(p_v, q_i)      ("er", official symmetrised discrete reconstruction)
        H   = mean_v H_disc(p_v)                      (entropy of the student's batch-mean assignment)
        L   = w_rec R - w_ent H;  update c;  optimiser step;  EMA (cosine base -> final)

    Rationale (UNVERIFIED): DINO's centering (with sharpening) keeps the teacher's marginal over the
    prototypes spread, i.e. it acts on the entropy term of the bound implicitly; ER-DINO maximises
    the entropy of the student's average prototype distribution explicitly (the teacher has no
    gradient).  ``centering=False`` replaces the centering by the entropy term; the default keeps both.
    The teacher-temperature warm-up of DINO is not implemented (constant ``teacher_temp``).

    Args:
        head_hidden_dim, bottleneck_dim, output_dim, batch_norm_head, freeze_last_layer: lightly
            ``DINOProjectionHead`` (``output_dim`` = number of prototypes; the weight-normalised last
            layer is frozen for the first ``freeze_last_layer`` epochs).
        teacher_temp, student_temp: 0.04 and 0.1 (DINO).
        centering, center_momentum: teacher centering (lightly ``Center``, momentum 0.9).
        reconstruction: ``"cross_entropy"`` or ``"er"``.
        entropy_weight, reconstruction_weight, reduction, gather_distributed: as :class:`ERSimCLR`
            (discrete estimators).
        base_momentum, final_momentum: teacher EMA (DINO: 0.996 -> 1).
    """

    min_views = 2
    max_views = None
    ema_pairs = (("backbone", "teacher_backbone"), ("head", "teacher_head"))

    def __init__(
        self,
        backbone: str = "resnet50",
        head_hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        output_dim: int = 65536,
        batch_norm_head: bool = False,
        freeze_last_layer: int = 1,
        teacher_temp: float = 0.04,
        student_temp: float = 0.1,
        centering: bool = True,
        center_momentum: float = 0.9,
        reconstruction: str = "cross_entropy",
        entropy_weight: float = 1.0,
        reconstruction_weight: float = 1.0,
        reduction: str = "expectation",
        gather_distributed: bool = False,
        base_momentum: float = 0.996,
        final_momentum: float = 1.0,
        optimizer: str = "lars",
        lr: float = 0.3,
        weight_decay: float = 1e-6,
        **kwargs: Any,
    ) -> None:
        super().__init__(backbone=backbone, optimizer=optimizer, lr=lr, weight_decay=weight_decay, **kwargs)
        self.save_hyperparameters()
        _choice("reduction", reduction, REDUCTIONS)
        _choice("reconstruction", reconstruction, ("cross_entropy", "er"))
        head_args = (self.feat_dim, head_hidden_dim, bottleneck_dim, output_dim, batch_norm_head, freeze_last_layer)
        self.head = DINOProjectionHead(*head_args)
        self.teacher_backbone = make_teacher(self.backbone)
        # a weight-normalised layer cannot be deep-copied: build the teacher head and copy the weights
        self.teacher_head = DINOProjectionHead(*head_args)
        self.teacher_head.load_state_dict(self.head.state_dict())
        deactivate_requires_grad(self.teacher_head)
        self.center = Center((1, output_dim), momentum=center_momentum)
        self.teacher_temp = teacher_temp
        self.student_temp = student_temp
        self.centering = centering
        self.reconstruction = reconstruction
        self.entropy_weight = entropy_weight
        self.reconstruction_weight = reconstruction_weight
        self.reduction = reduction
        self.gather_distributed = gather_distributed
        self.base_momentum = base_momentum
        self.final_momentum = final_momentum

    def compute_loss(self, views: list[Tensor]) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        features = [self.backbone(x) for x in views]
        log_p = [F.log_softmax(at_least_float32(self.head(h)) / self.student_temp, dim=1) for h in features]
        with torch.no_grad():
            t_logits = [at_least_float32(self.teacher_head(self.teacher_backbone(x))) for x in views[:2]]
            shift = self.center.value if self.centering else 0.0
            q = [F.softmax((t - shift) / self.teacher_temp, dim=1) for t in t_logits]
        pairs = [(i, v) for i in range(len(q)) for v in range(len(log_p)) if v != i]
        if self.reconstruction == "cross_entropy":
            rec = sum(-(q[i] * log_p[v]).sum(dim=1).mean() for i, v in pairs) / len(pairs)
        else:
            rec = sum(er_discrete_reconstruction(log_p[v].exp(), q[i]) for i, v in pairs) / len(pairs)
        ent = sum(er_discrete_entropy(lp.exp(), self.reduction, gather_distributed=self.gather_distributed) for lp in log_p)
        ent = ent / len(log_p)
        teacher_entropy = sum(er_discrete_entropy(qi) for qi in q) / len(q)
        if self.centering:
            self.center.update(torch.cat(t_logits))
        loss, terms = self.er_objective(rec, ent, teacher_entropy=teacher_entropy)
        return loss, terms, features[0]

    def on_after_backward(self) -> None:
        self.head.cancel_last_layer_gradients(self.current_epoch)


# ============================================================================ ER-SwAV


class ERSwAV(_ERModule):
    """ER-SwAV: SwAV's swapped prediction as the reconstruction plus an explicit discrete entropy.

    Algorithm (one step; views: 2 globals first, then any local crops)::

        normalise the prototypes C;   z_v = normalize(g(f(x_v)));   s_v = C^T z_v   (cosines)
        with no_grad: q_i = Sinkhorn(s_i)  (or softmax(s_i / epsilon) with use_sinkhorn=False), i = 1, 2
        p_v = softmax(s_v / tau)
        R   = mean_i mean_{v != i} CE(q_i, p_v)        (SwAV's swapped prediction, as lightly SwaVLoss)
        H   = mean_v H_disc(p_v)                       (entropy of the batch-mean prototype assignment)
        L   = w_rec R - w_ent H

    Rationale (UNVERIFIED): Sinkhorn's equipartition constraint keeps the marginal over prototypes
    uniform, i.e. it maximises the entropy term implicitly; ER-SwAV adds the explicit estimate
    (default: in addition to Sinkhorn; ``use_sinkhorn=False`` uses it instead).  No queue.

    Args:
        proj_hidden_dim, proj_output_dim: lightly ``SwaVProjectionHead`` (2048, 128).
        n_prototypes, n_steps_frozen_prototypes: lightly ``SwaVPrototypes`` (3000; frozen steps).
        temperature: ``tau`` of the predictions (0.1).
        sinkhorn_iterations, sinkhorn_epsilon: 3 and 0.05 (SwAV).
        use_sinkhorn: Sinkhorn codes (True) or plain ``softmax(s / epsilon)`` targets (False).
        sinkhorn_gather_distributed: Sinkhorn over all processes (as SwAV's distributed code).
        entropy_weight, reconstruction_weight, reduction, gather_distributed: as :class:`ERDINO`.
    """

    min_views = 2
    max_views = None

    def __init__(
        self,
        backbone: str = "resnet50",
        proj_hidden_dim: int = 2048,
        proj_output_dim: int = 128,
        n_prototypes: int = 3000,
        n_steps_frozen_prototypes: int = 0,
        temperature: float = 0.1,
        sinkhorn_iterations: int = 3,
        sinkhorn_epsilon: float = 0.05,
        use_sinkhorn: bool = True,
        sinkhorn_gather_distributed: bool = True,
        entropy_weight: float = 1.0,
        reconstruction_weight: float = 1.0,
        reduction: str = "expectation",
        gather_distributed: bool = False,
        optimizer: str = "lars",
        lr: float = 0.3,
        weight_decay: float = 1e-6,
        **kwargs: Any,
    ) -> None:
        super().__init__(backbone=backbone, optimizer=optimizer, lr=lr, weight_decay=weight_decay, **kwargs)
        self.save_hyperparameters()
        _choice("reduction", reduction, REDUCTIONS)
        self.projector = SwaVProjectionHead(self.feat_dim, proj_hidden_dim, proj_output_dim)
        self.prototypes = SwaVPrototypes(proj_output_dim, n_prototypes, n_steps_frozen_prototypes)
        self.temperature = temperature
        self.sinkhorn_iterations = sinkhorn_iterations
        self.sinkhorn_epsilon = sinkhorn_epsilon
        self.use_sinkhorn = use_sinkhorn
        self.sinkhorn_gather_distributed = sinkhorn_gather_distributed
        self.entropy_weight = entropy_weight
        self.reconstruction_weight = reconstruction_weight
        self.reduction = reduction
        self.gather_distributed = gather_distributed

    @torch.no_grad()
    def codes(self, scores: Tensor) -> Tensor:
        """Targets ``q`` of one global view's prototype scores (no gradient)."""
        if self.use_sinkhorn:
            return sinkhorn(scores, self.sinkhorn_iterations, self.sinkhorn_epsilon, self.sinkhorn_gather_distributed)
        return F.softmax(scores / self.sinkhorn_epsilon, dim=1)

    def compute_loss(self, views: list[Tensor]) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        with torch.no_grad():
            self.prototypes.normalize()
        features = [self.backbone(x) for x in views]
        scores = [self.prototypes(F.normalize(self.projector(h), dim=1), self.global_step) for h in features]
        with torch.autocast(device_type=features[0].device.type, enabled=False):
            scores = [at_least_float32(s) for s in scores]
            q = [self.codes(s.detach()) for s in scores[:2]]
            log_p = [F.log_softmax(s / self.temperature, dim=1) for s in scores]
        n_views = len(views)
        rec = sum(-(q[i] * log_p[v]).sum(dim=1).mean() for i in range(2) for v in range(n_views) if v != i)
        rec = rec / (2 * (n_views - 1))
        ent = sum(er_discrete_entropy(lp.exp(), self.reduction, gather_distributed=self.gather_distributed) for lp in log_p)
        loss, terms = self.er_objective(rec, ent / n_views)
        return loss, terms, features[0]
