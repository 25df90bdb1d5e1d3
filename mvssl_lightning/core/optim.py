"""The optimiser factory of pre-training and evaluation: LARS (lightly), LARC (apex), SGD, AdamW, Adam.

Parameter groups (:func:`parameter_groups`): following Barlow Twins / BYOL and the official MVEB code,
biases and normalisation parameters get no weight decay and, under LARS, no layer-wise adaptation
(lightly's ``LARS`` skips adaptation for groups whose ``weight_decay`` is 0, so putting them in a
zero-decay group does both).

Optimisers (:data:`OptimizerName`, :func:`build_optimizer`):

* ``lars``: lightly's ``LARS`` (``lightly.utils.lars``), trust ratio ``||p|| / (||g|| + wd ||p||)``,
  skipped for groups with zero weight decay;
* ``larc``: SGD with the layer-wise rate of NVIDIA apex's ``LARC(trust_coefficient, clip=False)``, which
  MVEB's ``lineval.py`` (``wlj6816/MVEB``) and MEC's ``benchmarks/linearprob/main_lincls.py``
  (``xinliu20/MEC``) wrap around SGD with ``--lars``. For every parameter ``p`` with gradient ``g``::

      if ||p|| != 0 and ||g|| != 0:   g <- trust * ||p|| / (||g|| + wd ||p|| + eps) * (g + wd p)
      else:                           g <- g                     (and no weight decay)
      SGD step with momentum, weight decay 0 (it is already in g)

  It applies to every parameter, whatever its weight decay; lightly's ``LARS`` skips the adaptation
  for zero weight decay, so with the linear protocols' ``wd = 0`` it would be plain SGD;
* ``sgd``: ``torch.optim.SGD`` with momentum; ``adamw`` / ``adam``: ``torch.optim.AdamW`` / ``Adam``
  (AMDIM's classifiers, ``Philip-Bachman/amdim-public`` ``task_classifiers.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal, Optional

import torch
from lightly.models.utils import get_weight_decay_parameters
from lightly.utils.lars import LARS
from torch import nn

__all__ = [
    "LARC", "OPTIMIZERS", "OptimizerName", "build_optimizer", "clip_per_parameter", "embedding_parameters",
    "parameter_groups",
]

OptimizerName = Literal["lars", "larc", "sgd", "adamw", "adam"]
OPTIMIZERS: tuple[str, ...] = ("lars", "larc", "sgd", "adamw", "adam")


def embedding_parameters(modules: Iterable[nn.Module]) -> set[int]:
    """``id`` of every parameter that a submodule's ``no_weight_decay()`` names (timm's convention:
    ``pos_embed``, ``cls_token``, ``reg_token``, ``dist_token``, relative position tables...)."""
    found: set[int] = set()
    for module in modules:
        for sub in module.modules():
            method = getattr(sub, "no_weight_decay", None)
            names = method() if callable(method) else ()
            for name, param in sub.named_parameters():
                if name in names or name.split(".")[0] in names:
                    found.add(id(param))
    return found


def parameter_groups(
    modules: Iterable[nn.Module], weight_decay: float, exclude_bias_and_norm: bool = True,
    exclude_embeddings: bool = True,
) -> list[dict]:
    """Trainable parameters split into a decayed group and a zero-decay group: biases and norm parameters
    (``exclude_bias_and_norm``), and what :func:`embedding_parameters` finds (``exclude_embeddings``)."""
    modules = list(modules)
    if exclude_bias_and_norm:
        decay, no_decay = get_weight_decay_parameters(modules)
    else:
        decay, no_decay = [p for m in modules for p in m.parameters()], []
    if exclude_embeddings:
        embeddings = embedding_parameters(modules)
        no_decay = no_decay + [p for p in decay if id(p) in embeddings]
        decay = [p for p in decay if id(p) not in embeddings]
    decay = [p for p in decay if p.requires_grad]
    no_decay = [p for p in no_decay if p.requires_grad]
    groups = [{"name": "decay", "params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"name": "no_decay", "params": no_decay, "weight_decay": 0.0})
    return groups


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


def build_optimizer(
    name: str,
    groups: list[dict],
    lr: float,
    momentum: float = 0.9,
    betas: Sequence[float] = (0.9, 0.999),
    weight_decay: float = 0.0,
    trust_coefficient: float = 0.001,
) -> torch.optim.Optimizer:
    """The optimiser ``name`` (:data:`OptimizerName`) over ``groups`` (dicts with ``params`` and optionally
    ``lr`` / ``weight_decay``, e.g. from :func:`parameter_groups`); ``weight_decay`` applies to the groups
    that do not set their own."""
    betas_ = (float(betas[0]), float(betas[1]))
    if name == "lars":
        return LARS(groups, lr=lr, momentum=momentum, weight_decay=weight_decay, trust_coefficient=trust_coefficient)
    if name == "larc":
        return LARC(groups, lr=lr, momentum=momentum, weight_decay=weight_decay, trust_coefficient=trust_coefficient)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=betas_, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr, betas=betas_, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")


@torch.no_grad()
def clip_per_parameter(parameters: Iterable[nn.Parameter], max_norm: float) -> None:
    """DINO's ``utils.clip_gradients`` (``facebookresearch/dino``): every gradient ``g`` with
    ``||g|| > max_norm`` is scaled by ``max_norm / (||g|| + 1e-6)``, each parameter on its own (no host sync)."""
    for p in parameters:
        if p.grad is not None:
            norm = torch.linalg.vector_norm(p.grad)
            p.grad.mul_(torch.clamp(max_norm / (norm + 1e-6), max=1.0))
