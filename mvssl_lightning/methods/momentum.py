"""EMA teachers (BYOL-style momentum encoders) with the cosine momentum schedule.

``m_t = 1 - (1 - m_0) * (cos(pi * t / T) + 1) / 2`` per optimiser step ``t`` of ``T`` (BYOL §3.2;
MVEB and MEC use ``m_0 = 0.996``).  The teacher is updated *after* each optimiser step (see
``SiameseModule.on_after_optimizer_step``), so gradient accumulation counts optimiser steps, not
batches.  Each method picks the step index its official code uses (MVEB updates with ``m_t`` at the
start of iteration t, i.e. after t steps; MEC updates with ``m_t`` right after step t, 0-based).
Only parameters are averaged; BN buffers are the teacher's own (as in the official code).
"""

from __future__ import annotations

import copy

from lightly.models.utils import deactivate_requires_grad, update_momentum
from torch import nn

from mvssl_lightning.schedules import cosine_anneal

__all__ = ["cosine_momentum", "make_teacher", "update_momentum"]


def cosine_momentum(step: int, total_steps: int, base: float = 0.996, final: float = 1.0) -> float:
    """EMA coefficient at optimiser step ``step`` of ``total_steps`` (cosine from ``base`` to ``final``)."""
    return cosine_anneal(step, total_steps, base, final)


def make_teacher(module: nn.Module) -> nn.Module:
    """A frozen deep copy of ``module`` (no gradients); update it with ``update_momentum``."""
    teacher = copy.deepcopy(module)
    deactivate_requires_grad(teacher)
    return teacher
