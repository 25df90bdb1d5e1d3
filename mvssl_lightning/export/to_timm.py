"""``--to timm``: a ``.pth`` state dict for ``timm.create_model(<name>)``.

* a ``timm:<name>`` backbone *is* the timm model: its state dict loads into ``timm.create_model(<name>,
  num_classes=0, **backbone_kwargs)`` with ``strict=True``;
* the library's ImageNet-stem ResNets (and ``torchvision:resnet*``) map to timm's ResNets of the same name,
  whose module names are torchvision's: ``timm.create_model("resnet50", num_classes=0)`` loads them with
  ``strict=True`` and gives the same features (tested).

With ``num_classes`` a classifier is added (an evaluation checkpoint's trained head when it has that many
outputs, else timm's fresh one, seeded), so ``timm.create_model(<name>, num_classes=N)`` loads it with
``strict=True``. Load into timm with ``pretrained=True, pretrained_cfg_overlay={"file": "<path>"}`` or
``model.load_state_dict(torch.load(path))``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

from mvssl_lightning.export.source import ExportError, ExportSource
from mvssl_lightning.export.to_torchvision import state_dict_with_classifier, torchvision_architecture

__all__ = ["timm_architecture", "timm_state_dict", "write_timm"]

#: torchvision ResNets whose timm namesake has the same module names
_SAME_NAMES = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")


def timm_architecture(source: ExportSource) -> tuple[str, dict]:
    """``(timm model name, its create_model kwargs)`` of the backbone, or an :class:`ExportError`."""
    if source.kind == "timm":
        return source.name.partition(":")[2], dict(source.backbone_kwargs)
    if source.kind in ("resnet", "torchvision"):
        name = torchvision_architecture(source, fmt="timm")
        if name in _SAME_NAMES:
            return name, {}
        raise ExportError(f"backbone {source.name} has no timm namesake with the same weights layout; export it with "
                          f"--to torchvision or --to hf")
    what = "AMDIM's own encoder" if source.kind == "amdim" else "a user module"
    raise ExportError(f"backbone {source.name} is {what}, which timm does not have; export it with --to hf or "
                      f"--to safetensors")


def timm_state_dict(source: ExportSource, num_classes: Optional[int] = None) -> dict[str, Tensor]:
    """The backbone's state dict for timm (module docstring), on the CPU."""
    import timm

    name, kwargs = timm_architecture(source)
    return state_dict_with_classifier(
        source, num_classes, lambda n: timm.create_model(name, pretrained=False, num_classes=n, **kwargs))


def write_timm(source: ExportSource, out: Path, num_classes: Optional[int] = None) -> Path:
    """Write :func:`timm_state_dict` to ``out`` (``torch.save``)."""
    state = timm_state_dict(source, num_classes)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, out)
    return out
