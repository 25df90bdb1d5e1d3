"""torchvision ResNet backbones for self-supervised pre-training.

The classifier is replaced by ``nn.Identity`` so ``backbone(x)`` returns the pooled features
``(B, feat_dim)`` and ``backbone.state_dict()`` loads into ``torchvision.models.resnetXX()`` with
``strict=False`` (only ``fc.*`` is missing).  ``cifar_stem`` swaps the 7x7/stride-2 stem and max-pool
for a 3x3/stride-1 convolution, the usual choice for 32 px images (SimCLR appendix B.9).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from torchvision import models

RESNETS = {"resnet18": models.resnet18, "resnet34": models.resnet34, "resnet50": models.resnet50}


def build_resnet(
    name: Literal["resnet18", "resnet34", "resnet50"] = "resnet50",
    cifar_stem: bool = False,
    zero_init_residual: bool = True,
) -> tuple[nn.Module, int]:
    """Returns ``(backbone, feat_dim)`` for a randomly initialised torchvision ResNet."""
    if name not in RESNETS:
        raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(RESNETS)}")
    net = RESNETS[name](weights=None, zero_init_residual=zero_init_residual)
    if cifar_stem:
        net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
        net.maxpool = nn.Identity()
    feat_dim = net.fc.in_features
    net.fc = nn.Identity()
    return net, feat_dim


def export_torchvision_state_dict(backbone: nn.Module) -> dict[str, torch.Tensor]:
    """The backbone's weights as a plain torchvision ``state_dict`` (CPU tensors, no ``fc``)."""
    return {k: v.detach().cpu().clone() for k, v in backbone.state_dict().items()}
