"""Optimiser factory: LARS (lightly), SGD, AdamW or Adam, with bias and norm parameters excluded.

Following Barlow Twins / BYOL and the official MVEB code, biases and normalisation parameters get
no weight decay and, under LARS, no layer-wise adaptation (lightly's ``LARS`` skips adaptation for
groups whose ``weight_decay`` is 0, so putting them in a zero-decay group does both).
"""

from __future__ import annotations

from typing import Iterable, Literal

import torch
from lightly.models.utils import get_weight_decay_parameters
from lightly.utils.lars import LARS
from torch import nn

OptimizerName = Literal["lars", "sgd", "adamw", "adam"]
OPTIMIZERS = ("lars", "sgd", "adamw", "adam")


def parameter_groups(
    modules: Iterable[nn.Module], weight_decay: float, exclude_bias_and_norm: bool = True
) -> list[dict]:
    """Trainable parameters split into a decayed group and a zero-decay group (bias + norm)."""
    modules = list(modules)
    if exclude_bias_and_norm:
        decay, no_decay = get_weight_decay_parameters(modules)
    else:
        decay, no_decay = [p for m in modules for p in m.parameters()], []
    decay = [p for p in decay if p.requires_grad]
    no_decay = [p for p in no_decay if p.requires_grad]
    groups = [{"name": "decay", "params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"name": "no_decay", "params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(
    name: OptimizerName,
    groups: list[dict],
    lr: float,
    momentum: float = 0.9,
    betas: tuple[float, float] = (0.9, 0.999),
    trust_coefficient: float = 0.001,
) -> torch.optim.Optimizer:
    """``name`` in ``("lars", "sgd", "adamw", "adam")``; ``groups`` from :func:`parameter_groups`."""
    if name == "lars":
        return LARS(groups, lr=lr, momentum=momentum, trust_coefficient=trust_coefficient)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=betas)
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr, betas=betas)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {OPTIMIZERS}")
