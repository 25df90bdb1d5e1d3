"""Learning-rate and momentum schedules, as multipliers evaluated per optimiser step.

Pre-training (:func:`warmup_cosine_factor`): linear warm-up followed by cosine annealing.
Evaluation protocols (:func:`lr_factor`): ``cosine`` ``0.5 (1 + cos(pi t / T))``, ``step``
``gamma ** #{milestones <= t}``, ``constant`` 1. With ``interval="epoch"`` ``t = s // steps_per_epoch``
and ``T`` the number of epochs (the official loops set the lr once per epoch: MVEB / MEC
``adjust_learning_rate``, InfoMin ``adjust_learning_rate``, Barlow Twins ``CosineAnnealingLR`` stepped per
epoch); with ``interval="step"`` ``t = s`` and ``T`` the number of steps (milestones are still given in
epochs).

lightly's ``cosine_schedule`` divides by ``max_steps - 1`` and clamps the last step, which is
right for its own epoch-based callers but one step off the papers' per-iteration formulas.  The
official MVEB and MEC code both anneal per optimiser step as written below, so we keep the two
closed forms here, exactly, and test them against hand-computed values.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Sequence
from typing import Literal

__all__ = ["Schedule", "ScheduleInterval", "cosine_anneal", "lr_factor", "warmup_cosine_factor"]

Schedule = Literal["cosine", "step", "constant"]
ScheduleInterval = Literal["epoch", "step"]


def cosine_anneal(step: float, total_steps: float, start: float, end: float) -> float:
    """``end + (start - end) * (1 + cos(pi * step / total_steps)) / 2``, clamped to ``end`` past the end.

    Used for the EMA momentum ``m_t = 1 - (1 - m_0)(cos(pi t / T) + 1) / 2`` (BYOL, MVEB, MEC).
    """
    if total_steps <= 0:
        return float(end)
    progress = min(max(step / total_steps, 0.0), 1.0)
    return float(end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def warmup_cosine_factor(
    step: int,
    total_steps: int,
    warmup_steps: int,
    warmup_start_factor: float = 0.0,
    end_factor: float = 0.0,
    cosine_over_total: bool = False,
) -> float:
    """Multiplier of the base learning rate at optimiser step ``step`` (0-indexed).

    Warm-up: ``f = s + (1 - s) * step / W`` for ``step < W`` (``s = warmup_start_factor``).
    Then cosine from 1 to ``end_factor``: ``f = e + (1 - e) * (1 + cos(pi * p)) / 2`` with
    ``p = (step - W) / (T - W)``, or ``p = (step - W) / T`` when ``cosine_over_total`` is True.
    The latter reproduces the official MVEB code (``project/pretrainer.py``), whose cosine divides by
    the total number of steps, so the rate never quite reaches its floor.
    """
    if step < warmup_steps:
        return warmup_start_factor + (1.0 - warmup_start_factor) * step / warmup_steps
    span = total_steps if cosine_over_total else total_steps - warmup_steps
    return cosine_anneal(step - warmup_steps, span, 1.0, end_factor)


def lr_factor(
    step: int,
    schedule: str,
    interval: str,
    steps_per_epoch: int,
    total_steps: int,
    milestones: Sequence[int] = (),
    gamma: float = 0.1,
) -> float:
    """Multiplier of the base lr for optimiser step ``step`` (0-indexed) under an evaluation protocol's
    ``schedule`` (:data:`Schedule`) set per ``interval`` (:data:`ScheduleInterval`); module docstring."""
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
