"""torchvision ResNet backbones for self-supervised pre-training.

The classifier is replaced by ``nn.Identity`` so ``backbone(x)`` returns the pooled features
``(B, feat_dim)``.  ``cifar_stem`` swaps the 7x7/stride-2 stem and max-pool for a 3x3/stride-1
convolution, the usual choice for 32 px images (SimCLR appendix B.9).  ``width`` scales the channels
of every stage (64-128-256-512 at the default 64; 16 gives 16-32-64-128), e.g. a CPU-sized CIFAR-stem
ResNet-18 that keeps the 32 x 32 resolution in its first stage (``backbone_kwargs: {width: 16}`` on any
method); ``width`` 64 is torchvision's model.

Exported weights (:func:`export_torchvision_state_dict`) load into the torchvision model of the same
architecture: ``torchvision.models.resnet50()`` for the standard stem, and
``torchvision_resnet("resnet18", cifar_stem=True)`` (torchvision's ``resnet18`` with the CIFAR stem
put in, :func:`torchvision_resnet`) for the CIFAR stem; ``strict=False`` because ``fc`` is not exported.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn
from torchvision import models

RESNETS = {"resnet18": models.resnet18, "resnet34": models.resnet34, "resnet50": models.resnet50}
#: block type and blocks per stage of each architecture (torchvision's builders)
_SPECS: dict[str, tuple[type[models.resnet.BasicBlock | models.resnet.Bottleneck], list[int]]] = {
    "resnet18": (models.resnet.BasicBlock, [2, 2, 2, 2]),
    "resnet34": (models.resnet.BasicBlock, [3, 4, 6, 3]),
    "resnet50": (models.resnet.Bottleneck, [3, 4, 6, 3]),
}


class ScaledResNet(models.ResNet):
    """torchvision's ``ResNet`` with every stage's width scaled by ``width / 64`` (stem included)."""

    def __init__(self, name: str, width: int, num_classes: int = 1000, zero_init_residual: bool = False) -> None:
        self.width = width
        block, layers = _SPECS[name]
        super().__init__(block, layers, num_classes=num_classes, zero_init_residual=zero_init_residual)
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")
        self.bn1 = nn.BatchNorm2d(width)
        self.fc = nn.Linear(512 * block.expansion * width // 64, num_classes)

    def _make_layer(self, block, planes, blocks, stride=1, dilate=False):
        if planes == 64:  # the first stage starts from the stem's width
            self.inplanes = self.width
        return super()._make_layer(block, planes * self.width // 64, blocks, stride, dilate)


def _resnet(name: str, width: int, **kwargs: Any) -> models.ResNet:
    if name not in RESNETS:
        raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(RESNETS)}")
    if width < 1 or width % 4:
        raise ValueError(f"width must be a positive multiple of 4, got {width}")
    if width == 64:
        return RESNETS[name](weights=None, **kwargs)
    return ScaledResNet(name, width, **kwargs)


def build_resnet(
    name: Literal["resnet18", "resnet34", "resnet50"] = "resnet50",
    cifar_stem: bool = False,
    zero_init_residual: bool = True,
    width: int = 64,
) -> tuple[nn.Module, int]:
    """Returns ``(backbone, feat_dim)`` for a randomly initialised torchvision ResNet."""
    net = _resnet(name, width, zero_init_residual=zero_init_residual)
    if cifar_stem:
        apply_cifar_stem(net)
    feat_dim = net.fc.in_features
    net.fc = nn.Identity()
    return net, feat_dim


def apply_cifar_stem(net: models.ResNet) -> models.ResNet:
    """Replace a torchvision ResNet's 7x7/stride-2 stem and max-pool by a 3x3/stride-1 conv (in place)."""
    net.conv1 = nn.Conv2d(3, net.conv1.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    net.maxpool = nn.Identity()
    return net


def torchvision_resnet(
    name: Literal["resnet18", "resnet34", "resnet50"] = "resnet50",
    cifar_stem: bool = False,
    num_classes: int = 1000,
    width: int = 64,
) -> models.ResNet:
    """The plain torchvision ResNet (with its ``fc``) that :func:`export_torchvision_state_dict` loads into::

        net = torchvision_resnet("resnet18", cifar_stem=True, num_classes=10)
        net.load_state_dict(export_torchvision_state_dict(model.backbone), strict=False)  # fc stays random
    """
    net = _resnet(name, width, num_classes=num_classes)
    return apply_cifar_stem(net) if cifar_stem else net


def export_torchvision_state_dict(backbone: nn.Module) -> dict[str, torch.Tensor]:
    """The backbone's weights as a plain torchvision ``state_dict`` (CPU tensors, no ``fc``): they load
    into :func:`torchvision_resnet` of the same name and stem, i.e. ``torchvision.models.resnetXX()``
    itself for the standard stem."""
    return {k: v.detach().cpu().clone() for k, v in backbone.state_dict().items()}
