"""``--to detectron2`` (issue: take the weights anywhere): the pickle holds exactly detectron2's ResNet backbone
names and shapes (a reference written here from detectron2's structure, not from the mapping), every array is
the torchvision tensor it came from, a detectron2-structured ResNet loading it computes torchvision's features,
bad backbones are one-line errors, and the torchvision export trains a torchvision Faster R-CNN for a step.

detectron2 is not installed here: the reference follows facebookresearch/detectron2
``detectron2/modeling/backbone/resnet.py`` (``BasicStem``, ``BasicBlock``, ``BottleneckBlock``,
``build_resnet_backbone``) and ``detectron2/layers/batch_norm.py`` (``FrozenBatchNorm2d``'s four buffers).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

from mvssl_lightning.export.source import ExportError, ExportSource, read_checkpoint
from mvssl_lightning.export.to_detectron2 import detectron2_key, write_detectron2
from mvssl_lightning.methods import MVEB
from mvssl_lightning.models import export_torchvision_state_dict
from mvssl_lightning.models.backbones import build_backbone

pytestmark = pytest.mark.usefixtures("one_thread")

BLOCKS = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3]}
NORM_BUFFERS = ("weight", "bias", "running_mean", "running_var")  # FrozenBatchNorm2d, no num_batches_tracked


# ----------------------------------------------------------------------------- references, from detectron2's structure
def _detectron2_resnet_shapes(depth: int) -> dict[str, tuple[int, ...]]:
    """detectron2's ResNet backbone state-dict names and shapes for ``MODEL.RESNETS.DEPTH`` = depth (defaults
    STEM_OUT_CHANNELS 64, NUM_GROUPS 1, WIDTH_PER_GROUP 64; RES2_OUT_CHANNELS 64 for R18/R34, 256 otherwise)."""
    shapes: dict[str, tuple[int, ...]] = {}

    def conv(prefix: str, out_channels: int, in_channels: int, kernel: int) -> None:
        shapes[f"{prefix}.weight"] = (out_channels, in_channels, kernel, kernel)  # detectron2's Conv2d: bias=False
        for buffer in NORM_BUFFERS:
            shapes[f"{prefix}.norm.{buffer}"] = (out_channels,)

    conv("stem.conv1", 64, 3, 7)
    basic = depth in (18, 34)
    in_channels, out_channels, bottleneck = 64, 64 if basic else 256, 64
    for stage, blocks in zip(range(2, 6), BLOCKS[depth]):
        for block in range(blocks):
            prefix = f"res{stage}.{block}"
            if in_channels != out_channels:  # both block classes: a shortcut only where the channels change
                conv(f"{prefix}.shortcut", out_channels, in_channels, 1)
            if basic:
                conv(f"{prefix}.conv1", out_channels, in_channels, 3)
                conv(f"{prefix}.conv2", out_channels, out_channels, 3)
            else:
                conv(f"{prefix}.conv1", bottleneck, in_channels, 1)
                conv(f"{prefix}.conv2", bottleneck, bottleneck, 3)
                conv(f"{prefix}.conv3", out_channels, bottleneck, 1)
            in_channels = out_channels
        out_channels, bottleneck = out_channels * 2, bottleneck * 2
    return shapes


class _FrozenBN(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        for name in NORM_BUFFERS:
            self.register_buffer(name, torch.zeros(channels))

    def forward(self, x):
        scale = self.weight * (self.running_var + 1e-5).rsqrt()
        return x * scale[None, :, None, None] + (self.bias - self.running_mean * scale)[None, :, None, None]


class _Conv(nn.Conv2d):
    """detectron2's ``Conv2d``: a conv whose ``norm`` is applied to its output."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int = 1) -> None:
        super().__init__(in_channels, out_channels, kernel, stride, padding=kernel // 2, bias=False)
        self.norm = _FrozenBN(out_channels)

    def forward(self, x):
        return self.norm(super().forward(x))


class _Block(nn.Module):
    """``BasicBlock`` / ``BottleneckBlock`` with STRIDE_IN_1X1 False (the stride in the 3x3 conv)."""

    def __init__(self, in_channels: int, out_channels: int, bottleneck: int, stride: int, basic: bool) -> None:
        super().__init__()
        self.shortcut = _Conv(in_channels, out_channels, 1, stride) if in_channels != out_channels else None
        if basic:
            self.conv1, self.conv2 = _Conv(in_channels, out_channels, 3, stride), _Conv(out_channels, out_channels, 3)
            self.conv3 = None
        else:
            self.conv1 = _Conv(in_channels, bottleneck, 1)
            self.conv2 = _Conv(bottleneck, bottleneck, 3, stride)
            self.conv3 = _Conv(bottleneck, out_channels, 1)

    def forward(self, x):
        out = self.conv2(F.relu(self.conv1(x)))
        if self.conv3 is not None:
            out = self.conv3(F.relu(out))
        return F.relu(out + (x if self.shortcut is None else self.shortcut(x)))


class _Detectron2ResNet(nn.Module):
    """detectron2's ResNet backbone (``BasicStem`` + res2..res5), returning res5."""

    def __init__(self, depth: int) -> None:
        super().__init__()
        self.stem = nn.Module()
        self.stem.conv1 = _Conv(3, 64, 7, 2)
        basic = depth in (18, 34)
        in_channels, out_channels, bottleneck = 64, 64 if basic else 256, 64
        for index, blocks in enumerate(BLOCKS[depth]):
            stage = []
            for block in range(blocks):
                stride = 2 if index > 0 and block == 0 else 1
                stage.append(_Block(in_channels, out_channels, bottleneck, stride, basic))
                in_channels = out_channels
            self.add_module(f"res{index + 2}", nn.Sequential(*stage))
            out_channels, bottleneck = out_channels * 2, bottleneck * 2

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.stem.conv1(x)), kernel_size=3, stride=2, padding=1)
        return self.res5(self.res4(self.res3(self.res2(x))))


def _torchvision_name(detectron2_name: str) -> str:
    """The inverse renaming, written as MoCo's converter writes the forward one (string replacements)."""
    k = detectron2_name.replace("stem.conv1.norm.", "bn1.").replace("stem.conv1.", "conv1.")
    for t in [2, 3, 4, 5]:
        k = k.replace(f"res{t}.", f"layer{t - 1}.")
    k = k.replace("shortcut.norm.", "downsample.1.").replace("shortcut.", "downsample.0.")
    for t in [1, 2, 3]:
        k = k.replace(f"conv{t}.norm.", f"bn{t}.")
    return k


# ----------------------------------------------------------------------------- helpers
def _randomised(net: nn.Module) -> nn.Module:
    """Every BatchNorm's affine and running statistics random (so a swapped norm shows in values)."""
    g = torch.Generator().manual_seed(0)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data = torch.rand(m.num_features, generator=g) * 0.5 + 0.5
            m.bias.data = torch.randn(m.num_features, generator=g) * 0.1
            m.running_mean = torch.randn(m.num_features, generator=g) * 0.1
            m.running_var = torch.rand(m.num_features, generator=g) + 0.5
            m.num_batches_tracked.fill_(7)
    return net.eval()


def _source(backbone: nn.Module, name: str, kind: str, cifar_stem: bool = False, **kwargs) -> ExportSource:
    return ExportSource(backbone=backbone, feat_dim=0, name=name, kind=kind, cifar_stem=cifar_stem,  # type: ignore[arg-type]
                        backbone_kwargs=kwargs, checkpoint=Path("in-memory.ckpt"), sha256="0" * 64, method=None)


def _torchvision(name: str) -> nn.Module:
    torch.manual_seed(0)
    net = getattr(torchvision.models, name)()
    net.fc = nn.Identity()
    return _randomised(net)


def _load(path: Path) -> dict:
    with open(path, "rb") as f:
        return pickle.load(f)


@pytest.fixture(scope="module")
def r18_checkpoint(tmp_path_factory) -> ExportSource:
    """A ResNet-18 pre-training checkpoint after one step (32 px, batch 2), read back by ``read_checkpoint``."""
    torch.manual_seed(0)
    model = MVEB(backbone="resnet18", proj_hidden_dim=8, proj_output_dim=8, batch_size=2)
    views = [torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)]
    loader = torch.utils.data.DataLoader([(views, 0)] * 2, batch_size=None)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(model, train_dataloaders=loader)
    path = tmp_path_factory.mktemp("pretrain") / "r18.ckpt"
    trainer.save_checkpoint(path)
    return read_checkpoint(path)


# ----------------------------------------------------------------------------- the mapping
@pytest.mark.parametrize("torchvision_key, expected", [
    ("conv1.weight", "stem.conv1.weight"),
    ("bn1.running_var", "stem.conv1.norm.running_var"),
    ("layer1.0.conv3.weight", "res2.0.conv3.weight"),
    ("layer1.2.bn3.bias", "res2.2.conv3.norm.bias"),
    ("layer2.0.downsample.0.weight", "res3.0.shortcut.weight"),
    ("layer4.0.downsample.1.running_mean", "res5.0.shortcut.norm.running_mean"),
    ("layer3.5.bn2.weight", "res4.5.conv2.norm.weight"),
    ("layer4.1.conv2.weight", "res5.1.conv2.weight"),  # BasicBlock
    ("layer3.10.bn1.weight", "res4.10.conv1.norm.weight"),  # two-digit block (R101)
    ("fc.weight", None), ("fc.bias", None), ("bn1.num_batches_tracked", None),
    ("layer1.0.bn1.num_batches_tracked", None),
])
def test_detectron2_key(torchvision_key, expected):
    assert detectron2_key(torchvision_key) == expected


@pytest.mark.parametrize("key", ["blocks.0.attn.qkv.weight", "layer5.0.conv1.weight", "layer1.0.conv4.weight"])
def test_a_name_no_torchvision_resnet_has_is_an_error(key):
    with pytest.raises(ValueError, match="not a torchvision ResNet weight name"):
        detectron2_key(key)


# ----------------------------------------------------------------------------- the pickle
@pytest.mark.parametrize("name, depth", [("resnet50", 50), ("resnet18", 18)])
def test_names_shapes_and_values_are_detectron2_resnet(tmp_path, name, depth):
    net = _torchvision(name)
    out = write_detectron2(_source(net, name, "resnet"), tmp_path / f"{name}.pkl")
    model = _load(out)["model"]
    assert {k: v.shape for k, v in model.items()} == _detectron2_resnet_shapes(depth)
    state = net.state_dict()
    for key, array in model.items():
        assert type(array) is np.ndarray and array.dtype == np.float32 and array.flags.writeable
        assert torch.equal(torch.from_numpy(array), state[_torchvision_name(key)]), key
    expected = {k for k in state if not k.endswith("num_batches_tracked")}
    assert {_torchvision_name(k) for k in model} == expected


def test_r18_basic_block_shortcuts_follow_detectron2():
    shapes = _detectron2_resnet_shapes(18)
    shortcuts = sorted({k.rsplit(".shortcut", 1)[0] for k in shapes if ".shortcut" in k})
    assert shortcuts == ["res3.0", "res4.0", "res5.0"]  # res2.0: 64 -> 64, no shortcut
    assert not any(".conv3" in k for k in shapes)
    r50 = _detectron2_resnet_shapes(50)
    assert sorted({k.rsplit(".shortcut", 1)[0] for k in r50 if ".shortcut" in k}) == [
        "res2.0", "res3.0", "res4.0", "res5.0"]  # res2.0: 64 -> 256
    assert len([k for k in r50 if k.endswith(".weight") and ".norm" not in k]) == 53  # 1 + 16 * 3 + 4 convs


@pytest.mark.parametrize("name, depth", [("resnet50", 50), ("resnet18", 18)])
def test_a_detectron2_structured_resnet_with_the_pickle_computes_torchvision_features(tmp_path, name, depth):
    net = _torchvision(name)
    out = write_detectron2(_source(net, name, "resnet"), tmp_path / "r.pkl")
    reference = _Detectron2ResNet(depth).eval()
    assert {k: tuple(v.shape) for k, v in reference.state_dict().items()} == _detectron2_resnet_shapes(depth)
    reference.load_state_dict({k: torch.from_numpy(v) for k, v in _load(out)["model"].items()}, strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        features = nn.Sequential(*list(net.children())[:-2])(x)  # conv1 ... layer4
        torch.testing.assert_close(reference(x), features, rtol=1e-4, atol=1e-4)


def test_the_pickle_is_detectron2_model_zoo_format_and_portable(tmp_path, r18_checkpoint):
    out = write_detectron2(r18_checkpoint, tmp_path / "sub" / "r18.pkl")
    raw = out.read_bytes()
    with open(out, "rb") as f:
        loaded = pickle.load(f, encoding="latin1")  # as DetectionCheckpointer._load_file reads it
    assert set(loaded) == {"model", "__author__", "matching_heuristics"}
    assert loaded["__author__"] == "mvssl_lightning" and loaded["matching_heuristics"] is True
    assert {k: v.shape for k, v in loaded["model"].items()} == _detectron2_resnet_shapes(18)
    assert b"numpy._core" not in raw and b"numpy.core" not in raw  # loads with numpy 1.x and 2.x
    assert raw[:2] == b"\x80\x04"  # pickle protocol 4
    state = r18_checkpoint.backbone.state_dict()
    for key, array in loaded["model"].items():
        assert torch.equal(torch.from_numpy(array), state[_torchvision_name(key)]), key
    assert not list(out.parent.glob("*.partial"))


def test_the_output_must_be_a_pkl(tmp_path):
    with pytest.raises(ValueError, match="must end in .pkl"):
        write_detectron2(_source(_torchvision("resnet18"), "resnet18", "resnet"), tmp_path / "r18.pth")


@pytest.mark.parametrize("name", ["resnext50_32x4d"])  # wide_resnet50_2: the same check, 5 s to build here
def test_torchvision_resnext_goes_there(tmp_path, name):
    torch.manual_seed(0)
    net, _ = build_backbone(f"torchvision:{name}")
    model = _load(write_detectron2(_source(net, f"torchvision:{name}", "torchvision"), tmp_path / "x.pkl"))["model"]
    assert set(model) == set(_detectron2_resnet_shapes(50))  # same names; shapes follow NUM_GROUPS/WIDTH_PER_GROUP
    assert model["res2.0.conv2.weight"].shape == net.state_dict()["layer1.0.conv2.weight"].shape


# ----------------------------------------------------------------------------- what cannot go there
def _bad_sources():
    vit, _ = build_backbone("timm:vit_tiny_patch16_224", img_size=32, patch_size=4)
    amdim, _ = build_backbone("amdim", cifar_stem=True)
    cifar, _ = build_backbone("resnet18", cifar_stem=True)
    narrow, _ = build_backbone("resnet18", width=16)
    mobile, _ = build_backbone("torchvision:mobilenet_v3_small")
    group_norm = torchvision.models.resnet18(norm_layer=lambda c: nn.GroupNorm(8, c))
    return [
        (_source(vit, "timm:vit_tiny_patch16_224", "timm", img_size=32, patch_size=4), "timm model.*--to timm"),
        (_source(amdim, "amdim", "amdim", cifar_stem=True), "AMDIM's own encoder"),
        (_source(cifar, "resnet18", "resnet", cifar_stem=True), "CIFAR stem"),
        (_source(narrow, "resnet18", "resnet", width=16), "width 16"),
        (_source(mobile, "torchvision:mobilenet_v3_small", "torchvision"), "not a torchvision ResNet"),
        (_source(group_norm, "torchvision:resnet18", "torchvision"), "GroupNorm at bn1, not BatchNorm2d"),
        (_source(nn.Linear(2, 2), "module:torch.nn.Linear", "module"), "user module"),
    ]


def test_backbones_without_detectron2_resnet_layout_are_one_line_errors(tmp_path):
    for source, reason in _bad_sources():
        out = tmp_path / "x.pkl"
        with pytest.raises(ExportError, match=reason) as error:
            write_detectron2(source, out)
        message = str(error.value)
        assert isinstance(error.value, ValueError) and "\n" not in message, message
        assert "--to" in message and "resnet18/34/50" in message, message
        assert not out.exists()


# ----------------------------------------------------------------------------- dense transfer in torchvision
def test_exported_weights_train_a_torchvision_faster_rcnn(r18_checkpoint):
    state = export_torchvision_state_dict(r18_checkpoint.backbone)
    assert not any(k.startswith("fc.") for k in state)
    backbone = resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=3)
    missing, unexpected = backbone.body.load_state_dict(state, strict=False)
    assert missing == [] and unexpected == []
    assert torch.equal(backbone.body.conv1.weight, state["conv1.weight"])
    torch.manual_seed(0)
    model = FasterRCNN(backbone, num_classes=3, min_size=128, max_size=128).train()
    images = [torch.rand(3, 128, 128), torch.rand(3, 128, 128)]
    targets = [
        {"boxes": torch.tensor([[10.0, 12.0, 60.0, 70.0]]), "labels": torch.tensor([1])},
        {"boxes": torch.tensor([[5.0, 5.0, 40.0, 50.0], [64.0, 60.0, 120.0, 118.0]]), "labels": torch.tensor([2, 1])},
    ]
    before = {k: v.detach().clone() for k, v in backbone.body.layer2.named_parameters()}
    frozen = backbone.body.layer1[0].conv1.weight.detach().clone()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    losses = model(images, targets)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    assert all(torch.isfinite(v) for v in losses.values()), losses
    optimizer.zero_grad()
    sum(losses.values()).backward()
    optimizer.step()
    changed = {k for k, v in backbone.body.layer2.named_parameters() if not torch.equal(v, before[k])}
    # the shortcut always trains; a residual branch whose last (frozen) BN scale is still zero, as MVEB's
    # zero_init_residual leaves it before training moves it, passes no gradient to its convs
    assert "0.downsample.0.weight" in changed, sorted(changed)
    assert torch.equal(backbone.body.layer1[0].conv1.weight, frozen)  # trainable_layers=3: layer2..layer4
