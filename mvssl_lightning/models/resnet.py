"""torchvision ResNet backbones for self-supervised pre-training.

The classifier is replaced by ``nn.Identity`` so ``backbone(x)`` returns the pooled features
``(B, feat_dim)``.  ``cifar_stem`` swaps the 7x7/stride-2 stem and max-pool for a 3x3/stride-1
convolution, the usual choice for 32 px images (SimCLR appendix B.9).

Exported weights (:func:`export_torchvision_state_dict`) load into the torchvision model of the same
architecture: ``torchvision.models.resnet50()`` for the standard stem, and
``torchvision_resnet("resnet18", cifar_stem=True)`` (torchvision's ``resnet18`` with the CIFAR stem
put in, :func:`torchvision_resnet`) for the CIFAR stem; ``strict=False`` because ``fc`` is not exported.
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
        apply_cifar_stem(net)
    feat_dim = net.fc.in_features
    net.fc = nn.Identity()
    return net, feat_dim


def apply_cifar_stem(net: models.ResNet) -> models.ResNet:
    """Replace a torchvision ResNet's 7x7/stride-2 stem and max-pool by a 3x3/stride-1 conv (in place)."""
    net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    net.maxpool = nn.Identity()
    return net


def torchvision_resnet(
    name: Literal["resnet18", "resnet34", "resnet50"] = "resnet50", cifar_stem: bool = False, num_classes: int = 1000
) -> models.ResNet:
    """The plain torchvision ResNet (with its ``fc``) that :func:`export_torchvision_state_dict` loads into::

        net = torchvision_resnet("resnet18", cifar_stem=True, num_classes=10)
        net.load_state_dict(export_torchvision_state_dict(model.backbone), strict=False)  # fc stays random
    """
    if name not in RESNETS:
        raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(RESNETS)}")
    net = RESNETS[name](weights=None, num_classes=num_classes)
    return apply_cifar_stem(net) if cifar_stem else net


def export_torchvision_state_dict(backbone: nn.Module) -> dict[str, torch.Tensor]:
    """The backbone's weights as a plain torchvision ``state_dict`` (CPU tensors, no ``fc``): they load
    into :func:`torchvision_resnet` of the same name and stem, i.e. ``torchvision.models.resnetXX()``
    itself for the standard stem."""
    return {k: v.detach().cpu().clone() for k, v in backbone.state_dict().items()}
