"""Exported backbones load into plain torchvision models, for both stems (issue: sharp edges)."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from mvssl_lightning import MVEB, export_torchvision_state_dict
from mvssl_lightning.models import torchvision_resnet

pytestmark = pytest.mark.usefixtures("one_thread")


def _independent_cifar_resnet18() -> nn.Module:
    """torchvision's resnet18 with the CIFAR stem written out here, independently of the library."""
    net = torchvision.models.resnet18()
    net.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    net.maxpool = nn.Identity()
    return net


@pytest.mark.parametrize("cifar_stem", [False, True])
def test_exported_weights_reproduce_the_features_in_torchvision(cifar_stem):
    torch.manual_seed(0)
    model = MVEB(backbone="resnet18", cifar_stem=cifar_stem, proj_hidden_dim=16, proj_output_dim=8).eval()
    state = export_torchvision_state_dict(model.backbone)
    reference = _independent_cifar_resnet18() if cifar_stem else torchvision.models.resnet18()
    for net in (torchvision_resnet("resnet18", cifar_stem=cifar_stem, num_classes=10), reference):
        missing, unexpected = net.load_state_dict(state, strict=False)
        assert sorted(missing) == ["fc.bias", "fc.weight"] and not unexpected
        net.fc = nn.Identity()
        x = torch.randn(4, 3, 32, 32)
        torch.testing.assert_close(net.eval()(x), model(x), rtol=0, atol=0)


def test_a_cifar_stem_does_not_load_into_the_standard_model_and_says_why():
    state = export_torchvision_state_dict(MVEB(backbone="resnet18", cifar_stem=True).backbone)
    with pytest.raises(RuntimeError, match="conv1.weight"):
        torchvision.models.resnet18().load_state_dict(state, strict=False)
