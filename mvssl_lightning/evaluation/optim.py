"""Optimisers and learning-rate schedules of the evaluation protocols.

Optimisers (``EvalOptimizer``):

* ``sgd``: ``torch.optim.SGD`` with momentum (InfoMin, Barlow Twins' semi-supervised protocol);
* ``larc``: SGD with the layer-wise rate of NVIDIA apex's ``LARC(trust_coefficient, clip=False)``, which
  MVEB's ``lineval.py`` (``wlj6816/MVEB``) and MEC's ``benchmarks/linearprob/main_lincls.py``
  (``xinliu20/MEC``) wrap around SGD with ``--lars``. For every parameter ``p`` with gradient ``g``::

      if ||p|| != 0 and ||g|| != 0:   g <- trust * ||p|| / (||g|| + wd ||p|| + eps) * (g + wd p)
      else:                           g <- g                     (and no weight decay)
      SGD step with momentum, weight decay 0 (it is already in g)

  It applies to every parameter, whatever its weight decay; lightly's ``LARS`` skips the adaptation
  for zero weight decay, so with the linear protocols' ``wd = 0`` it would be plain SGD;
* ``lars``: lightly's ``LARS`` (``lightly.utils.lars``), identical to ``larc`` when ``wd > 0``;
* ``adam``: ``torch.optim.Adam`` (AMDIM's classifiers, ``Philip-Bachman/amdim-public``
  ``task_classifiers.py``).

Schedules (:func:`lr_factor`), a multiplier of the base lr, evaluated per optimiser step ``s``:
``cosine`` ``0.5 (1 + cos(pi t / T))``, ``step`` ``gamma ** #{milestones <= t}``, ``constant`` 1. With
``interval="epoch"`` ``t = s // steps_per_epoch`` and ``T`` the number of epochs (the official loops set
the lr once per epoch: MVEB / MEC ``adjust_learning_rate``, InfoMin ``adjust_learning_rate``, Barlow
Twins ``CosineAnnealingLR`` stepped per epoch); with ``interval="step"`` ``t = s`` and ``T`` the number of
steps (milestones are still given in epochs).
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from typing import Any, Callable, Literal, Optional

import torch
from lightly.utils.lars import LARS

from mvssl_lightning.schedules import cosine_anneal

__all__ = ["LARC", "EvalOptimizer", "Schedule", "ScheduleInterval", "build_eval_optimizer", "lr_factor"]

EvalOptimizer = Literal["sgd", "larc", "lars", "adam"]
Schedule = Literal["cosine", "step", "constant"]
ScheduleInterval = Literal["epoch", "step"]


class LARC(torch.optim.SGD):
    """SGD with apex's ``LARC(clip=False)`` layer-wise learning rate (module docstring).

    Args:
        params: parameters or parameter groups (each group may set its own ``lr`` / ``weight_decay``).
        lr, momentum, weight_decay: as ``torch.optim.SGD``.
        trust_coefficient: the LARC trust ratio ``eta`` (apex default 0.02; MVEB and MEC use 0.001).
        eps: added to the denominator (apex: 1e-8).
    """

    def __init__(self, params: Iterable[Any], lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 trust_coefficient: float = 0.001, eps: float = 1e-8) -> None:
        if trust_coefficient <= 0:
            raise ValueError(f"trust_coefficient must be > 0, got {trust_coefficient}")
        super().__init__(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
        self.trust_coefficient = float(trust_coefficient)
        self.eps = float(eps)

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], float]] = None) -> Optional[float]:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        decays = [group["weight_decay"] for group in self.param_groups]
        for group, wd in zip(self.param_groups, decays, strict=True):
            group["weight_decay"] = 0.0
            for p in group["params"]:
                if p.grad is None:
                    continue
                p_norm = torch.linalg.vector_norm(p)
                g_norm = torch.linalg.vector_norm(p.grad)
                if p_norm != 0 and g_norm != 0:
                    rate = self.trust_coefficient * p_norm / (g_norm + p_norm * wd + self.eps)
                    p.grad.add_(p, alpha=wd).mul_(rate)
        try:
            super().step()
        finally:
            for group, wd in zip(self.param_groups, decays, strict=True):
                group["weight_decay"] = wd
        return loss


def build_eval_optimizer(
    name: str,
    groups: list[dict],
    lr: float,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    betas: Sequence[float] = (0.9, 0.999),
    trust_coefficient: float = 0.001,
) -> torch.optim.Optimizer:
    """The optimiser ``name`` over ``groups`` (dicts with ``params`` and optionally ``lr``)."""
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "larc":
        return LARC(groups, lr=lr, momentum=momentum, weight_decay=weight_decay, trust_coefficient=trust_coefficient)
    if name == "lars":
        return LARS(groups, lr=lr, momentum=momentum, weight_decay=weight_decay, trust_coefficient=trust_coefficient)
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr, betas=(float(betas[0]), float(betas[1])), weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; choose one of sgd, larc, lars, adam")


def lr_factor(
    step: int,
    schedule: str,
    interval: str,
    steps_per_epoch: int,
    total_steps: int,
    milestones: Sequence[int] = (),
    gamma: float = 0.1,
) -> float:
    """Multiplier of the base lr for optimiser step ``step`` (0-indexed); see the module docstring."""
    epochs = max(math.ceil(total_steps / steps_per_epoch), 1)
    epoch = step // steps_per_epoch
    if schedule == "constant":
        return 1.0
    if schedule == "step":
        return float(gamma ** bisect_right(sorted(milestones), epoch))
    if schedule == "cosine":
        t, total = (epoch, epochs) if interval == "epoch" else (step, total_steps)
        return cosine_anneal(t, total, 1.0, 0.0)
    raise ValueError(f"unknown schedule {schedule!r}; choose one of cosine, step, constant")
