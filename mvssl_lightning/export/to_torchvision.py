"""``--to torchvision``: a ``.pth`` state dict for the torchvision model of the backbone's architecture.

Without ``num_classes`` it holds the backbone only and loads with ``strict=True`` into the torchvision model
whose classifier is removed (``net.fc = nn.Identity()`` for a ResNet)::

    net = torchvision.models.resnet50(); net.fc = torch.nn.Identity(); net.load_state_dict(state)

With ``num_classes`` it also holds a classifier for that many classes, so it loads with ``strict=True`` into
``torchvision.models.resnet50(num_classes=N)`` as it is: an evaluation checkpoint's trained linear head when
it has ``N`` outputs, else a fresh one (torchvision's own initialisation, seeded).

Which backbones can go there: the library's ResNets with the ImageNet stem and torchvision's width (they
are torchvision's ``resnet18/34/50``), and any ``torchvision:<name>`` backbone. A CIFAR-stem ResNet (3x3
stem, no max-pool), a scaled width, AMDIM's encoder, timm models and user modules have no torchvision
counterpart: the error says which format does work.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Optional

import torch
import torchvision
from torch import Tensor, nn

from mvssl_lightning.export.source import ExportError, ExportSource

__all__ = [
    "classifier_entries", "state_dict_with_classifier", "torchvision_architecture", "torchvision_state_dict",
    "write_torchvision",
]


def torchvision_architecture(source: ExportSource, fmt: str = "torchvision") -> str:
    """The name of the torchvision model the backbone is, or an :class:`ExportError` saying why none is."""
    if source.kind == "torchvision":
        return source.name.partition(":")[2]
    if source.kind == "resnet":
        if source.cifar_stem:
            raise ExportError(
                f"{source.name} has the CIFAR stem (3x3 conv1, no max-pool), which no stock {fmt} model has; export "
                f"it with --to hf or --to safetensors (load_pretrained rebuilds it)"
            )
        if int(source.backbone_kwargs.get("width", 64)) != 64:
            raise ExportError(
                f"{source.name} with width {source.backbone_kwargs['width']} is not a stock {fmt} ResNet; export it "
                f"with --to hf or --to safetensors"
            )
        return source.name
    what = {"amdim": "AMDIM's own encoder", "timm": "a timm model", "module": "a user module"}[source.kind]
    works = "--to timm, --to hf or --to safetensors" if source.kind == "timm" else "--to hf or --to safetensors"
    raise ExportError(f"backbone {source.name} is {what}, not a torchvision model; export it with {works}")


def classifier_entries(reference: nn.Module, backbone_keys: set[str], source: ExportSource) -> dict[str, Tensor]:
    """The classifier entries of ``reference`` (the keys the backbone lacks): the trained head when it fits."""
    extra = {k: v for k, v in reference.state_dict().items() if k not in backbone_keys}
    head = source.head
    weights = [k for k in extra if k.endswith("weight")]
    if head is not None and len(weights) == 1:
        key = weights[0]
        bias = key[: -len("weight")] + "bias"
        if extra[key].shape == head.weight.shape and bias in extra:
            extra[key], extra[bias] = head.weight.detach().clone(), head.bias.detach().clone()
    return extra


def state_dict_with_classifier(
    source: ExportSource, num_classes: Optional[int], build: Callable[[int], nn.Module]
) -> dict[str, Tensor]:
    """The backbone's state dict on the CPU; with ``num_classes``, plus the classifier of ``build(num_classes)``
    (a model of the target library, built under a fixed seed), or the source's trained head when it fits."""
    state = {k: v.detach().cpu().clone() for k, v in source.backbone.state_dict().items()}
    if num_classes is None:
        return state
    if num_classes < 1:
        raise ExportError(f"--num-classes must be >= 1, got {num_classes}")
    torch.manual_seed(0)
    state.update(classifier_entries(build(num_classes), set(state), source))
    return state


def torchvision_state_dict(source: ExportSource, num_classes: Optional[int] = None) -> dict[str, Tensor]:
    """The backbone's state dict in torchvision's names (module docstring), on the CPU."""
    name = torchvision_architecture(source)
    return state_dict_with_classifier(
        source, num_classes, lambda n: torchvision.models.get_model(name, weights=None, num_classes=n,
                                                                    **source.backbone_kwargs))


def write_torchvision(source: ExportSource, out: Path, num_classes: Optional[int] = None) -> Path:
    """Write :func:`torchvision_state_dict` to ``out`` (``torch.save``)."""
    state = torchvision_state_dict(source, num_classes)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, out)
    return out
