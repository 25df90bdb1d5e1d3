"""AMDIM as a LightningModule (Bachman, Hjelm, Buchwalter, "Learning Representations by Maximizing
Mutual Information Across Views", NeurIPS 2019), following ``Philip-Bachman/amdim-public``
(``model.py``, ``costs.py``, ``task_self_supervised.py``).

Algorithm (one training step; the objective is :mod:`mvssl_lightning.losses.amdim`)::

    for both views v = 1, 2 (shared flip, independent crops):
        r1_v, h5_v, h7_v = encoder(x_v)                  # 1x1, 5x5, 7x7 maps, one pass per view
        r5_v, r7_v = head5(h5_v), head7(h7_v)              # "fake RKHS" 1x1-conv residual heads
    L = L_1t5 + L_1t7 + L_5t5 + 1/2 * sum(reg)            # symmetrised global->local InfoNCE
    Adam step (lr 2e-4, betas (0.8, 0.999), wd 1e-5)

No EMA, no projector: both views train the same encoder.  ``forward(x)`` and the features handed to
the callbacks are ``r1`` flattened ``(B, n_rkhs)`` (the official online classifiers use the same
detached ``r1``; here :class:`OnlineLinearProbe` plays their part).

Schedule (``task_self_supervised.py``): the learning rate warms up linearly over the first 500
updates, factor ``min(1, (t + 1) / 500)`` at update ``t`` (0-indexed), then a step decay by
``lr_gamma = 0.2`` at epochs ``lr_milestones``: ``[30, 45]`` of 50 on ImageNet, ``[250, 280]`` of 300
on CIFAR/STL.  As in the official loop, which calls ``MultiStepLR.step(epoch)`` (closed form) at
the *end* of 0-indexed epoch ``epoch``, a milestone ``m`` decays the lr from the first step of epoch
``m + 1`` (after ``m + 1`` full epochs; one epoch later than the usual MultiStepLR meaning).  No lr
scaling with the batch size and no weight-decay exclusions (the official Adam decays every parameter).
"""

from __future__ import annotations

from bisect import bisect_right
from functools import partial
from typing import Callable, Optional, Sequence, cast

import torch
from torch import Tensor
from typing_extensions import override

from mvssl_lightning.core.optim import OptimizerName
from mvssl_lightning.core.steps import LRScaling
from mvssl_lightning.losses.amdim import AMDIMLoss
from mvssl_lightning.methods.base import SiameseModule
from mvssl_lightning.models.amdim import AMDIMEncoder, amdim_heads
from mvssl_lightning.models.backbones import Backbone, backbone_name

__all__ = ["AMDIM", "amdim_lr_factor"]


def amdim_lr_factor(step: int, warmup_steps: int, milestone_steps: Sequence[int], gamma: float) -> float:
    """Multiplier of the base lr at optimiser step ``step`` (0-indexed)::

        f = min(1, (step + 1) / W) * gamma ** #{m in milestone_steps : step >= m}

    (warm-up as the official loop: the first update already uses ``lr / W``; ``W = 0``: none).
    """
    warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    return warm * gamma ** bisect_right(sorted(milestone_steps), step)


class AMDIM(SiameseModule):
    """Augmented Multiscale Deep InfoMax.

    Args:
        backbone: must be ``amdim`` (the encoder with ``forward_maps``); widths via
            ``backbone_kwargs`` (``ndf``, ``n_rkhs``, ``depth``, ``use_bn``) and the 32 px variant via
            ``cifar_stem=True``.
        tclip: soft clip of the NCE scores (20).
        reg_weight: weight of the squared-score penalty (0.05).
        gather_distributed: under DDP, contrast each anchor with the images of all processes
            (default True: the official single-process DataParallel code uses the whole batch).
        lr_milestones: the official ``MultiStepLR`` milestones ([30, 45] ImageNet, [250, 280] CIFAR);
            milestone ``m`` multiplies the lr by ``lr_gamma`` from epoch ``m + 1`` on (0-indexed).
        lr_gamma: step-decay factor (0.2).
        warmup_steps: linear warm-up length in optimiser steps (500).
        Other arguments: :class:`SiameseModule`'s, with the recipe above as defaults (
            ``warmup_start_factor``, ``min_lr_factor`` and ``cosine_over_total`` are unused: the
            schedule is :func:`amdim_lr_factor`; ``warmup_steps=None`` falls back to ``warmup_epochs``).
    """

    default_views = "amdim"

    min_views = 2
    max_views = 2

    def __init__(
        self,
        tclip: float = 20.0,
        reg_weight: float = 0.05,
        gather_distributed: bool = True,
        lr_milestones: Sequence[int] = (30, 45),
        lr_gamma: float = 0.2,
        # SiameseModule's settings; defaults: the official recipe (``task_self_supervised.py``): Adam, no lr
        # scaling, every parameter decayed
        backbone: Backbone = "amdim",
        cifar_stem: bool = False,
        zero_init_residual: bool = True,
        backbone_kwargs: Optional[dict] = None,
        optimizer: OptimizerName = "adam",
        lr: float = 2e-4,
        lr_scaling: LRScaling = "none",
        reference_batch_size: int = 256,
        batch_size: Optional[int] = None,
        weight_decay: float = 1e-5,
        momentum: float = 0.9,
        betas: tuple[float, float] = (0.8, 0.999),
        trust_coefficient: float = 0.001,
        exclude_bias_and_norm: bool = False,
        warmup_epochs: float = 10.0,
        warmup_steps: Optional[int] = 500,
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
        if backbone != "amdim" and not hasattr(backbone, "forward_maps"):
            raise ValueError(
                f"AMDIM is tied to its own encoder: its loss reads the encoder's 1x1, 5x5 and 7x7 feature maps "
                f"(forward_maps), which backbone {backbone_name(backbone)} does not have; use backbone: amdim "
                f"(sizes via backbone_kwargs ndf, n_rkhs, depth)"
            )
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
        if lr_gamma <= 0:
            raise ValueError(f"lr_gamma must be positive, got {lr_gamma}")
        self.heads = amdim_heads(self.backbone)
        self.criterion = AMDIMLoss(tclip, reg_weight, gather_distributed)
        self.lr_milestones = sorted(int(m) for m in lr_milestones)
        self.lr_gamma = lr_gamma
        self._compiled_multiscale: Optional[Callable[[Tensor], tuple[Tensor, Tensor, Tensor]]] = None

    def multiscale_features(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(r1 (B, n_rkhs, 1, 1), r5 (B, n_rkhs, 5, 5), r7 (B, n_rkhs, 7, 7))`` after the heads; compiled
        with ``compile=True`` (the training path: the encoder's ``forward_maps`` and the heads)."""
        if self._compiled_multiscale is not None:
            return self._compiled_multiscale(x)
        return self._multiscale(x)

    def _multiscale(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        r1, h5, h7 = cast(AMDIMEncoder, self.backbone).forward_maps(x)
        return r1, self.heads["r5"](h5), self.heads["r7"](h7)

    @override
    def configure_model(self) -> None:
        """As :class:`SiameseModule` (the encoder's ``forward``, which features and evaluation use), and
        :meth:`multiscale_features`, which training uses: ``forward_maps`` bypasses the compiled ``forward``."""
        super().configure_model()
        if self.compile_backbone and self._compiled_multiscale is None:
            self._compiled_multiscale = torch.compile(self._multiscale)

    @override
    def compute_loss(self, views: list[Tensor]) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        feats1 = self.multiscale_features(views[0])
        feats2 = self.multiscale_features(views[1])
        loss, terms = self.criterion(feats1, feats2)
        return loss, terms, feats1[0].flatten(1)

    # ------------------------------------------------------------------ optimisation
    @override
    def lr_factor(self, total_steps: int) -> Callable[[int], float]:
        """:func:`amdim_lr_factor` with the milestones in optimiser steps (official: ``step(epoch)`` at
        the end of each epoch, so milestone ``m`` takes effect after ``m + 1`` epochs)."""
        per_epoch = self.steps_per_epoch()
        return partial(
            amdim_lr_factor,
            warmup_steps=self._warmup_steps(total_steps),
            milestone_steps=[(m + 1) * per_epoch for m in self.lr_milestones],
            gamma=self.lr_gamma,
        )
