"""InfoMin as a LightningModule (Tian, Sun, Poole, Krishnan, Schmid, Isola, "What Makes for Good Views
for Contrastive Learning?", NeurIPS 2020), following the official code ``HobbitLong/PyContrast``
(``pycontrast/``, method preset ``InfoMin``: RGB, MoCo queue, MLP head, jigsaw, augmentation 'D',
tau 0.15).  The paper's point is the *views* (the InfoMin augmentation,
:mod:`mvssl_lightning.data.views.infomin`); the learner is MoCo v2 plus a PIRL-style jigsaw branch.

Algorithm (one training step; ``learning/contrast_trainer.py`` ``_train_moco``)::

    q     = normalize(g(f(x1)))                        online encoder, view 1
    k     = normalize(g_ema(f_ema(x2)))                momentum encoder, view 2, shuffled BN, no grad
    q_jig = J(f(p_1), ..., f(p_9))                     9 jigsaw patches of the same image
    L     = (1 - beta) l(q) + beta l(q_jig),   beta = 0.5   (l(q) alone without jigsaw)
    l(a)  = CE([<a, k>, a Q^T] / tau, label 0)         :func:`~mvssl_lightning.losses.infonce.infonce_queue_loss`
    enqueue the keys of all processes (after the logits; :class:`~mvssl_lightning.methods.queue.KeyQueue`)
    optimiser step, then EMA: theta_ema <- 0.999 theta_ema + 0.001 theta   (constant momentum)

Only view 1 queries view 2 (the official loss is not symmetrised).  ``g`` is 2048-2048 (ReLU, no
BN)-128; ``J`` is the official ``JigsawHead`` (:class:`JigsawHead`).  The EMA covers the parameters of
backbone and head (BN buffers are the teacher's own); the teacher runs with BN in train mode (the
official ``model_ema.eval()`` + ``set_bn_train``: the same for a ResNet).  The patches go through the
online backbone only, as one batch of ``9 B`` images (their own BN statistics).

Official recipe (``options/``, ``learning/base_trainer.py``): SGD, lr 0.03 at batch 256,
momentum 0.9, weight decay 1e-4 on *all* parameters, cosine to lr * 1e-3, 100/200/800 epochs, batch
256, DDP without SyncBN, queue 65,536.  The official code does not scale the lr with the batch (its
README sets 0.06 by hand for 512); our default ``lr_scaling="linear"`` with reference 256 gives the
same numbers.  Warm-up only when the batch exceeds 256 (5 epochs, 10 if epochs > 500, linear from
an absolute lr of 0.01): set ``warmup_epochs`` and ``warmup_start_factor = 0.01 / scaled lr``
(default: no warm-up).  Differences: our cosine is per step (official: per epoch); our ShuffleBN
permutes across all processes (official: within a node; identical on one node), see
:mod:`mvssl_lightning.methods.shuffle_bn`.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from lightly.models.modules.heads import MoCoProjectionHead
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from torch import Tensor, nn
from typing_extensions import override

from mvssl_lightning.core.optim import OptimizerName
from mvssl_lightning.core.steps import LRScaling
from mvssl_lightning.losses.infonce import InfoNCEQueueLoss
from mvssl_lightning.losses.precision import at_least_float32
from mvssl_lightning.methods.base import SiameseModule
from mvssl_lightning.methods.momentum import EMATeacher, make_teacher
from mvssl_lightning.methods.queue import KeyQueue
from mvssl_lightning.methods.shuffle_bn import shuffled_key_forward
from mvssl_lightning.models.backbones import Backbone

_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)

__all__ = ["InfoMin", "JigsawHead"]


class JigsawHead(nn.Module):
    """PIRL-style jigsaw head (official ``pycontrast/networks/util.py`` ``JigsawHead``, ``head='mlp'``).

    For the ``n`` patch features ``h_1..h_n`` of one image (rows ``n i .. n i + n - 1`` of the input)::

        e_j   = W2 relu(W1 h_j + b1) + b2                      per-patch MLP, 2048-2048-128
        q_jig = normalize(W3 [e_pi(1), ..., e_pi(n)] + b3)     pi a random permutation per image

    ``W3`` maps the concatenation (``n * 128 = 1152``) to 128.  The permutation is redrawn at every
    call, so the head cannot rely on patch positions.
    """

    def __init__(self, input_dim: int = 2048, hidden_dim: int = 2048, output_dim: int = 128,
                 num_patches: int = 9) -> None:
        super().__init__()
        self.num_patches = num_patches
        self.patch_mlp = nn.Sequential(
            nn.Linear(input_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, output_dim)
        )
        self.fuse = nn.Linear(num_patches * output_dim, output_dim)

    def forward(self, h: Tensor) -> Tensor:
        """``h (B * n, input_dim)`` patch features, image-major -> unit-norm ``(B, output_dim)`` (float32)."""
        n = self.num_patches
        if h.shape[0] % n:
            raise ValueError(f"expected a multiple of {n} patch features, got {h.shape[0]}")
        e = self.patch_mlp(h).unflatten(0, (-1, n))  # (B, n, d)
        order = torch.argsort(torch.rand(e.shape[0], n, device=e.device), dim=1)
        e = torch.gather(e, 1, order[..., None].expand_as(e))
        return F.normalize(at_least_float32(self.fuse(e.flatten(1))), dim=1)


class InfoMin(SiameseModule):
    """MoCo-style InfoNCE with a queue, a momentum key encoder with shuffled BN, and a jigsaw branch.

    Views: ``[x1, x2]`` (two InfoMin-augmented crops), plus ``num_patches`` jigsaw patches when
    ``jigsaw`` is on (recipe :func:`mvssl_lightning.data.views.infomin.infomin_views`).

    Args:
        proj_hidden_dim, proj_output_dim: head 2048-2048 (ReLU, no BN)-128 (official ``head='mlp'``).
        temperature: ``tau`` of the InfoNCE (0.15).
        queue_size: negatives ``K`` (65,536 on ImageNet).
        queue_seed: seed of the queue's random unit-vector initialisation (same on every process).
        ema_momentum: constant EMA coefficient of the key encoder (0.999).
        jigsaw: add the jigsaw branch (official InfoMin preset: on).
        jigsaw_beta: ``beta``, weight of the jigsaw loss (0.5).
        num_patches: jigsaw patches per image (3 x 3 = 9).
        shuffle_bn: shuffled BN for the key encoder (official: on).
        shuffle_bn_groups: BN groups per process for the keys (1 under DDP as official; e.g. 8 on a
            single device to imitate 8 GPUs).
        gather_distributed: average the InfoNCE over the gathered global batch (same update as the
            official local average; see :mod:`mvssl_lightning.losses.infonce`).
        Other arguments: :class:`SiameseModule`'s, with the official recipe as defaults (
            ``zero_init_residual`` is off, as PyContrast's ResNet, ``networks/resnet.py``, is built).

    Logged: ``train/loss``, ``train/nce`` (``l(q)``), ``train/nce_jigsaw`` (``l(q_jig)``),
    ``train/pos_logit`` (mean ``<q, k>``), ``train/acc`` (and ``train/acc_jigsaw``): contrastive
    top-1 among ``1 + K`` candidates.
    """

    default_views = "infomin"

    min_views = 2
    max_views = 11

    def __init__(
        self,
        proj_hidden_dim: int = 2048,
        proj_output_dim: int = 128,
        temperature: float = 0.15,
        queue_size: int = 65536,
        queue_seed: int = 0,
        ema_momentum: float = 0.999,
        jigsaw: bool = True,
        jigsaw_beta: float = 0.5,
        num_patches: int = 9,
        shuffle_bn: bool = True,
        shuffle_bn_groups: int = 1,
        gather_distributed: bool = False,
        # SiameseModule's settings; defaults: the official recipe (``options/``, ``learning/base_trainer.py``);
        # PyContrast's ResNet has no zero-initialised residuals
        backbone: Backbone = "resnet50",
        cifar_stem: bool = False,
        zero_init_residual: bool = False,
        backbone_kwargs: Optional[dict] = None,
        optimizer: OptimizerName = "sgd",
        lr: float = 0.03,
        lr_scaling: LRScaling = "linear",
        reference_batch_size: int = 256,
        batch_size: Optional[int] = None,
        weight_decay: float = 1e-4,
        momentum: float = 0.9,
        betas: tuple[float, float] = (0.9, 0.999),
        trust_coefficient: float = 0.001,
        exclude_bias_and_norm: bool = False,
        warmup_epochs: float = 0.0,
        warmup_steps: Optional[int] = None,
        warmup_start_factor: float = 0.0,
        min_lr_factor: float = 1e-3,
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
        if not 0.0 <= ema_momentum <= 1.0 or not 0.0 <= jigsaw_beta <= 1.0:
            raise ValueError(f"ema_momentum and jigsaw_beta must be in [0, 1], got {ema_momentum}, {jigsaw_beta}")
        if shuffle_bn_groups < 1 or num_patches < 1:
            raise ValueError(f"shuffle_bn_groups and num_patches must be >= 1, got {shuffle_bn_groups}, {num_patches}")
        self.projector = MoCoProjectionHead(self.feat_dim, proj_hidden_dim, proj_output_dim)
        self.teacher_backbone = make_teacher(self.backbone)
        self.teacher_projector = make_teacher(self.projector)
        self.ema = EMATeacher(
            (("backbone", "teacher_backbone"), ("projector", "teacher_projector")), ema_momentum, schedule="constant"
        )
        self.jigsaw_head = (
            JigsawHead(self.feat_dim, proj_hidden_dim, proj_output_dim, num_patches) if jigsaw else None
        )
        self.queue = KeyQueue(queue_size, proj_output_dim, seed=queue_seed)
        self.criterion = InfoNCEQueueLoss(temperature, gather_distributed)
        self.jigsaw = jigsaw
        self.jigsaw_beta = jigsaw_beta
        self.num_patches = num_patches
        # ShuffleBN hides a query's batch statistics from its key; a key encoder without BatchNorm (a ViT, a
        # LayerNorm ConvNeXt) has none to hide, and a permuted batch gives the same keys: encode it as it is
        has_batchnorm = any(isinstance(m, _BATCHNORMS) for m in (*self.teacher_backbone.modules(),
                                                                  *self.teacher_projector.modules()))
        if shuffle_bn and not has_batchnorm:
            rank_zero_info(
                "InfoMin: the key encoder has no BatchNorm, so ShuffleBN has nothing to hide: keys are encoded "
                "without shuffling (same keys, no all-gather of the images)"
            )
        self.shuffle_bn = shuffle_bn and has_batchnorm
        self.shuffle_bn_groups = shuffle_bn_groups
        # the view count this configuration needs exactly (checked by SiameseModule._check_views)
        self.min_views = self.max_views = 2 + (num_patches if jigsaw else 0)

    @override
    def views_hint(self) -> str:
        if self.jigsaw:  # the 32 px recipe (infomin_cifar, what views: auto takes on small images) has no jigsaw
            return ("the jigsaw branch (model.jigsaw: true, the official preset) needs the recipe's jigsaw patches: "
                    "set --model.jigsaw false, or --data.view_kwargs '{jigsaw: true}'")
        return ("jigsaw is off (model.jigsaw: false): use a recipe without jigsaw patches "
                "(data.view_kwargs: {jigsaw: false})")

    def _key(self, x: Tensor) -> Tensor:
        return F.normalize(at_least_float32(self.teacher_projector(self.teacher_backbone(x))), dim=1)

    @override
    def compute_loss(self, views: list[Tensor]) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        h1 = self.backbone(views[0])
        q = F.normalize(at_least_float32(self.projector(h1)), dim=1)
        k, k_all = shuffled_key_forward(self._key, views[1], self.shuffle_bn_groups, self.shuffle_bn)
        # the loss keeps the queue for backward: use a copy so that the enqueue below may write in place
        queue = self.queue.keys.clone()
        nce, stats = self.criterion(q, k, queue)
        terms = {"nce": nce.detach(), **stats}
        loss = nce
        if self.jigsaw_head is not None:
            patches = torch.stack(views[2:], dim=1).flatten(0, 1)  # (B * n, 3, h, w), image-major
            q_jig = self.jigsaw_head(self.backbone(self._prepare(patches)))
            nce_jig, stats_jig = self.criterion(q_jig, k, queue)
            loss = (1.0 - self.jigsaw_beta) * nce + self.jigsaw_beta * nce_jig
            terms.update(nce_jigsaw=nce_jig.detach(), acc_jigsaw=stats_jig["acc"])
        self.queue.enqueue(k_all, gather=False)
        return loss, terms, h1
