"""EMA teachers (BYOL-style momentum encoders) and their momentum schedules.

``m_t = 1 - (1 - m_0) * (cos(pi * t / T) + 1) / 2`` per optimiser step ``t`` of ``T`` (BYOL §3.2;
MVEB and MEC use ``m_0 = 0.996``), or a constant ``m`` (MoCo / InfoMin: 0.999).  The teacher is
updated *after* each optimiser step (:meth:`SiameseModule.on_after_optimizer_step`), so gradient
accumulation counts optimiser steps, not batches.  Each method picks the step index its official
code uses through ``step_offset`` (MVEB updates with ``m_t`` at the start of iteration ``t``, i.e.
after ``t`` steps: offset 0; MEC updates with ``m_t`` right after step ``t``, 0-based: offset -1).
Only parameters are averaged; BN buffers are the teacher's own (as in the official codes).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal

from lightly.models.utils import deactivate_requires_grad, update_momentum
from torch import nn

from mvssl_lightning.core.schedules import cosine_anneal

__all__ = ["EMATeacher", "cosine_momentum", "make_teacher", "update_momentum"]


def cosine_momentum(step: int, total_steps: int, base: float = 0.996, final: float = 1.0) -> float:
    """EMA coefficient at optimiser step ``step`` of ``total_steps`` (cosine from ``base`` to ``final``)."""
    return cosine_anneal(step, total_steps, base, final)


def make_teacher(module: nn.Module) -> nn.Module:
    """A frozen deep copy of ``module`` (no gradients); an :class:`EMATeacher` keeps it up to date.

    Stochastic depth (timm's ``DropPath``, any module with a ``drop_prob``) is switched off in the copy: the
    targets of BYOL / DINO teachers are deterministic functions of the input (DINO builds its teacher
    without ``drop_path_rate``, ``main_dino.py``)."""
    teacher = copy.deepcopy(module)
    deactivate_requires_grad(teacher)
    for sub in teacher.modules():
        if isinstance(getattr(sub, "drop_prob", None), float):
            setattr(sub, "drop_prob", 0.0)  # noqa: B010 (any module type with this attribute)
    return teacher


@dataclass(frozen=True)
class EMATeacher:
    """Which submodules are EMA copies of which, and with what momentum.

    ``theta_teacher <- m theta_teacher + (1 - m) theta_student`` for every ``(student, teacher)``
    pair of attribute names, with ``m = base`` (``schedule="constant"``) or
    ``m = cosine_momentum(step + step_offset, total_steps, base, final)`` (``"cosine"``).

    A method sets ``self.ema = EMATeacher(...)`` in its constructor; the base class calls
    :meth:`update` after every optimiser step and logs ``train/ema_momentum``.
    """

    pairs: tuple[tuple[str, str], ...]
    base: float = 0.996
    final: float = 1.0
    schedule: Literal["cosine", "constant"] = "cosine"
    step_offset: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.base <= 1.0 or not 0.0 <= self.final <= 1.0:
            raise ValueError(f"EMA momenta must lie in [0, 1], got base={self.base}, final={self.final}")

    def momentum(self, step: int, total_steps: int) -> float:
        """``m`` after ``step`` optimiser steps (1, 2, ...) of ``total_steps``."""
        if self.schedule == "constant":
            return self.base
        return cosine_momentum(step + self.step_offset, total_steps, self.base, self.final)

    def update(self, module: nn.Module, step: int, total_steps: int) -> float:
        """Move every teacher of ``module`` towards its student; returns the momentum used."""
        m = self.momentum(step, total_steps)
        for student, teacher in self.pairs:
            update_momentum(getattr(module, student), getattr(module, teacher), m)
        return m
