"""``--to detectron2``: a ``.pkl`` that detectron2's ``DetectionCheckpointer`` reads into its ResNet backbone.

The file is a pickled dict, the layout detectron2 reads from a ``.pkl`` whose dict has ``"model"`` and
``"__author__"`` (``DetectionCheckpointer._load_file``, facebookresearch/detectron2
``detectron2/checkpoint/detection_checkpoint.py``), as MoCo's converter writes it (facebookresearch/moco
``detection/convert-pretrain-to-detectron2.py``)::

    {"model": {detectron2 name: numpy array}, "__author__": "mvssl_lightning", "matching_heuristics": True}

``matching_heuristics`` makes detectron2 match each name as a suffix of its model's names
(``align_and_update_state_dicts``, ``detectron2/checkpoint/c2_model_loading.py``), so ``res2.0.conv1.weight``
lands on ``backbone.res2.0.conv1.weight`` (C4: ``roi_heads.res5.*`` for res5; FPN: ``backbone.bottom_up.*``).
Any ``__author__`` other than ``"Caffe2"`` skips detectron2's Caffe2 renaming, so the names are used as written.

The names are torchvision's ResNet names renamed as MoCo's converter renames them, onto detectron2's ResNet
(``BasicStem``, ``BasicBlock``, ``BottleneckBlock``, ``build_resnet_backbone`` in
``detectron2/modeling/backbone/resnet.py``): :func:`detectron2_key`. ``fc.*`` is dropped (not a backbone
weight), and so is BatchNorm's ``num_batches_tracked``: detectron2's default norm, ``FrozenBatchNorm2d``
(``detectron2/layers/batch_norm.py``), keeps only ``weight``, ``bias``, ``running_mean`` and ``running_var``.

Which backbones can go there: torchvision's ResNet family with the ImageNet stem (7x7/2 conv, 3x3/2 max-pool)
and 64 stem channels -- the library's ``resnet18/34/50`` with ``cifar_stem=False`` and width 64, and
``torchvision:resnet*``, ``torchvision:resnext*``, ``torchvision:wide_resnet*``. detectron2 builds the same
network from its config: ``MODEL.RESNETS.DEPTH`` (18/34/50/101/152), ``STRIDE_IN_1X1: False`` (torchvision puts
a block's stride in the 3x3 conv; detectron2's default ``True`` is MSRA's stride in the first 1x1), and for a
ResNeXt / wide ResNet ``NUM_GROUPS`` / ``WIDTH_PER_GROUP`` (32/4 for ``resnext50_32x4d``, 1/128 for
``wide_resnet50_2``). detectron2 builds R18/R34 with ``BasicBlock`` (conv1, conv2, a shortcut only where the
channels change) and asserts ``MODEL.RESNETS.RES2_OUT_CHANNELS: 64`` and ``RES5_DILATION: 1`` for them
(``build_resnet_backbone``); the default 256 is for the bottleneck depths. A CIFAR-stem ResNet, a scaled width,
AMDIM's encoder, timm models and user modules have no detectron2 ResNet counterpart: the error says what works.

The weights are float32 numpy arrays (a half-precision backbone is converted; a float32 one is copied bit for
bit). Each array is pickled as ``numpy.ndarray(shape, dtype, bytearray)`` instead of numpy's own reduction,
because an array pickled by numpy 2 names ``numpy._core``, which numpy 1.x before 1.26 cannot import, and
detectron2 environments often run an older numpy; ``pickle.load`` gives back a plain writable ``ndarray``
either way.
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from mvssl_lightning.export.source import ExportError, ExportSource

__all__ = ["AUTHOR", "check_detectron2_source", "detectron2_key", "detectron2_state_dict", "write_detectron2"]

#: what ``"__author__"`` says; detectron2 logs it ("Reading a file from ...") and only treats "Caffe2" specially
AUTHOR = "mvssl_lightning"
#: MoCo's converter calls ``pickle.dump`` without a protocol: Python's default, 4 on Python 3.8-3.13. Fixed here so
#: the file does not change with the Python that writes it (protocol 4 is read by every Python 3.4+).
PICKLE_PROTOCOL = 4
#: what can go to detectron2, for the errors
WORKS = ("--to detectron2 takes the library's resnet18/34/50 (ImageNet stem, width 64) and torchvision:resnet*, "
         "resnext*, wide_resnet*")
#: torchvision stem module -> detectron2 (``BasicStem``: its conv is ``stem.conv1``, the conv's norm ``.norm``)
_STEM = {"conv1": "stem.conv1", "bn1": "stem.conv1.norm"}
#: torchvision block module (``BasicBlock``/``Bottleneck``) -> detectron2 block module
_BLOCK = {
    "conv1": "conv1", "bn1": "conv1.norm",
    "conv2": "conv2", "bn2": "conv2.norm",
    "conv3": "conv3", "bn3": "conv3.norm",
    "downsample.0": "shortcut", "downsample.1": "shortcut.norm",
}
_STAGE = re.compile(r"layer([1-4])\.(\d+)\.(.+)")
_TORCHVISION_RESNETS = ("resnet", "resnext", "wide_resnet")


def detectron2_key(torchvision_key: str) -> Optional[str]:
    """detectron2's name for a torchvision ResNet ``state_dict`` name, or ``None`` for what is dropped.

    ``conv1`` -> ``stem.conv1``, ``bn1`` -> ``stem.conv1.norm``, ``layerN.B`` -> ``res{N+1}.B``, and in a block
    ``convK`` -> ``convK``, ``bnK`` -> ``convK.norm``, ``downsample.0`` -> ``shortcut``, ``downsample.1`` ->
    ``shortcut.norm`` (the renaming of facebookresearch/moco ``detection/convert-pretrain-to-detectron2.py``;
    the same names hold for the bottleneck's conv1-conv3 and the basic block's conv1-conv2). ``fc.*`` and
    ``*.num_batches_tracked`` give ``None``; a name that is not a torchvision ResNet's is an error.
    """
    module, _, param = torchvision_key.rpartition(".")
    if param == "num_batches_tracked" or module == "fc":
        return None
    if module in _STEM:
        return f"{_STEM[module]}.{param}"
    match = _STAGE.fullmatch(module)
    if match is not None and match.group(3) in _BLOCK:
        stage, block, inner = match.groups()
        return f"res{int(stage) + 1}.{block}.{_BLOCK[inner]}.{param}"
    raise ExportError(f"{torchvision_key!r} is not a torchvision ResNet weight name, so it has no detectron2 name")


def _reason(source: ExportSource) -> Optional[str]:
    """Why the source cannot go to detectron2 (by what the checkpoint records), or None."""
    name = source.name
    if source.kind == "amdim":
        return (f"backbone {name} is AMDIM's own encoder, which has no ResNet stem and stages for detectron2's ResNet; "
                f"export it with --to hf or --to safetensors")
    if source.kind == "timm":
        return (f"backbone {name} is a timm model, not a torchvision ResNet (a ViT or ConvNeXt has no ResNet stages "
                f"for detectron2's ResNet); export it with --to timm or --to hf")
    if source.kind == "module":
        return f"backbone {name} is a user module, not a torchvision ResNet; export it with --to hf or --to safetensors"
    if source.kind == "torchvision" and not name.partition(":")[2].startswith(_TORCHVISION_RESNETS):
        return (f"backbone {name} is not a torchvision ResNet, so it has no stages for detectron2's ResNet; export it "
                f"with --to torchvision")
    if source.kind == "resnet" and source.cifar_stem:
        return (f"backbone {name} has the CIFAR stem (3x3/1 conv1, no max-pool), detectron2's ResNet the ImageNet "
                f"stem (7x7/2 conv, max-pool); export it with --to hf or --to safetensors")
    width = int(source.backbone_kwargs.get("width", 64))
    if source.kind == "resnet" and width != 64:
        return (f"backbone {name} with width {width} is not torchvision's width 64 (detectron2's R18/R34 require 64 "
                f"channels at res2); export it with --to hf or --to safetensors")
    return None


def _structure_reason(backbone: nn.Module, name: str) -> Optional[str]:
    """Why the module is not a standard-stem torchvision ResNet (e.g. ``backbone_kwargs`` changed it), or None."""
    if not isinstance(backbone, ResNet):
        return f"backbone {name} is a {type(backbone).__name__}, not torchvision's ResNet"
    conv = backbone.conv1
    if not (isinstance(conv, nn.Conv2d) and conv.kernel_size == (7, 7) and conv.stride == (2, 2)
            and conv.out_channels == 64 and isinstance(backbone.maxpool, nn.MaxPool2d)):
        return f"backbone {name} does not have the ImageNet stem (7x7/2 conv with 64 channels, max-pool)"
    for module_name, module in backbone.named_modules():
        if module_name.startswith("layer") and module_name.count(".") == 1 and not isinstance(
                module, (BasicBlock, Bottleneck)):
            return f"backbone {name} has a {type(module).__name__} block at {module_name}, not a ResNet block"
        if "bn" in module_name.rpartition(".")[2] and not isinstance(module, nn.BatchNorm2d):
            return f"backbone {name} has a {type(module).__name__} at {module_name}, not BatchNorm2d"
    return None


def check_detectron2_source(source: ExportSource) -> None:
    """Raise :class:`~mvssl_lightning.export.source.ExportError` (a ``ValueError``) with one line saying why,
    and what does work, when the backbone cannot go to detectron2 (module docstring)."""
    reason = _reason(source) or _structure_reason(source.backbone, source.name)
    if reason is not None:
        raise ExportError(f"{reason} ({WORKS})")


def detectron2_state_dict(backbone: nn.Module) -> dict[str, np.ndarray]:
    """The backbone's ``state_dict`` under detectron2's names (:func:`detectron2_key`), as float32 numpy arrays
    (copies, in ``state_dict`` order)."""
    model: dict[str, np.ndarray] = {}
    for key, value in backbone.state_dict().items():
        name = detectron2_key(key)
        if name is None:
            continue
        tensor = value.detach().cpu()
        if tensor.is_floating_point() and tensor.dtype != torch.float32:
            tensor = tensor.float()
        model[name] = tensor.numpy().copy()
    return model


class _PortablePickler(pickle.Pickler):
    """Pickles numpy arrays as ``numpy.ndarray(shape, dtype, bytearray)``: readable by numpy 1.x and 2.x alike
    (module docstring)."""

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, np.ndarray):
            array = np.ascontiguousarray(obj)
            return np.ndarray, (array.shape, array.dtype.str, bytearray(array.tobytes()))
        return NotImplemented


def write_detectron2(source: ExportSource, out: Path) -> Path:
    """Write the backbone as detectron2's ``.pkl`` (module docstring) to ``out`` and return it.

    ``out`` must end in ``.pkl``: detectron2 reads any other name with ``torch.load``. The file is written next
    to ``out`` and renamed into place, so an interrupted export leaves no half-written ``.pkl``. Train with it::

        python tools/train_net.py --config-file docs/detectron2/faster_rcnn_R_50_C4_syncbn.yaml MODEL.WEIGHTS r50.pkl
    """
    out = Path(out)
    if out.suffix != ".pkl":
        raise ExportError(f"--out {out} must end in .pkl: detectron2's DetectionCheckpointer reads only a .pkl "
                          f"as this format (any other name goes to torch.load)")
    check_detectron2_source(source)
    checkpoint = {"model": detectron2_state_dict(source.backbone), "__author__": AUTHOR, "matching_heuristics": True}
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    with open(partial, "wb") as f:
        _PortablePickler(f, protocol=PICKLE_PROTOCOL).dump(checkpoint)
    os.replace(partial, out)
    return out
