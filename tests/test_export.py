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


@pytest.mark.parametrize("name, expansion", [("resnet18", 1), ("resnet50", 4)])
def test_width_scales_every_stage_and_64_is_torchvision(name, expansion):
    from mvssl_lightning.models.resnet import ScaledResNet, build_resnet

    default, dim = build_resnet(name, width=64)
    reference = getattr(torchvision.models, name)()
    shapes = {k: v.shape for k, v in reference.state_dict().items() if not k.startswith("fc.")}
    assert {k: v.shape for k, v in default.state_dict().items()} == shapes and dim == 512 * expansion
    # the scaling code itself (used for every width but 64), at width 64, against torchvision
    scaled = ScaledResNet(name, 64)
    assert {k: v.shape for k, v in scaled.state_dict().items()} == {**shapes, **{
        k: v.shape for k, v in reference.state_dict().items() if k.startswith("fc.")}}
    narrow, dim = build_resnet(name, width=16, cifar_stem=True)
    sd = narrow.state_dict()
    # closed form: stage k has 16 * 2**(k-1) planes (times the bottleneck's expansion at its output)
    assert sd["conv1.weight"].shape == (16, 3, 3, 3) and dim == 128 * expansion
    for k in range(1, 5):
        planes = 16 * 2 ** (k - 1)
        assert sd[f"layer{k}.0.conv1.weight"].shape[0] == planes
        assert sd[f"layer{k}.0.bn1.weight"].shape == (planes,)
    assert narrow(torch.randn(2, 3, 32, 32)).shape == (2, 128 * expansion)
    with pytest.raises(ValueError, match="width must be a positive multiple of 4, got 6"):
        build_resnet(name, width=6)


def test_a_narrow_backbone_exports_into_torchvision_resnet_of_the_same_width():
    torch.manual_seed(0)
    model = MVEB(backbone="resnet18", cifar_stem=True, backbone_kwargs={"width": 16}, proj_hidden_dim=16,
                 proj_output_dim=8).eval()
    state = export_torchvision_state_dict(model.backbone)
    # named as torchvision's own resnet18 (an independent reference), only the shapes are narrower
    assert set(state) == {k for k in torchvision.models.resnet18().state_dict() if not k.startswith("fc.")}
    net = torchvision_resnet("resnet18", cifar_stem=True, num_classes=10, width=16)
    missing, unexpected = net.load_state_dict(state, strict=False)
    assert sorted(missing) == ["fc.bias", "fc.weight"] and not unexpected
    net.fc = nn.Identity()
    x = torch.randn(4, 3, 32, 32)
    torch.testing.assert_close(net.eval()(x), model(x), rtol=0, atol=0)
