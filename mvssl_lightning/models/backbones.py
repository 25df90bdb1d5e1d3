"""Backbone factory: a name (and keyword arguments) -> ``(module, feat_dim)``.

``module(x)`` returns pooled features ``(B, feat_dim)``.  ResNets come from torchvision
(:mod:`mvssl_lightning.models.resnet`); ``amdim`` is AMDIM's own encoder
(:mod:`mvssl_lightning.models.amdim`), whose ``cifar_stem`` selects its small-image variant.
"""

from __future__ import annotations

from typing import Any, Literal

from torch import nn

from mvssl_lightning.models.resnet import RESNETS, build_resnet

BACKBONES = (*RESNETS, "amdim")
#: the backbone names as a closed choice (the CLI validates and lists them)
Backbone = Literal["resnet18", "resnet34", "resnet50", "amdim"]


def build_backbone(name: str, **kwargs: Any) -> tuple[nn.Module, int]:
    """``name`` in :data:`BACKBONES`; ``kwargs`` go to the family's builder (e.g. ``cifar_stem``)."""
    if name in RESNETS:
        return build_resnet(name, **kwargs)  # type: ignore[arg-type]  # checked: a key of RESNETS
    if name == "amdim":
        from mvssl_lightning.models.amdim import build_amdim_encoder

        return build_amdim_encoder(**kwargs)
    raise ValueError(f"unknown backbone {name!r}; choose one of {list(BACKBONES)}")
