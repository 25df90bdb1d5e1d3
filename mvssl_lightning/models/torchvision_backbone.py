"""torchvision backbones: ``backbone: "torchvision:<model name>"``, any classification model of
``torchvision.models`` (``torchvision.models.get_model(name, weights=None, **backbone_kwargs)``) with its
classifier removed: the last ``nn.Linear`` of its classifier attribute (``fc``, ``classifier``, ``heads``
or ``head``) becomes ``nn.Identity``, so the model returns what that layer read (ResNet's pooled features,
ConvNeXt's normed and flattened pool, ViT's class token, VGG's 4096-d hidden layer).

The backbone keeps torchvision's module names, so its ``state_dict`` loads into
``torchvision.models.get_model(<name>)`` with ``strict=False`` (only the removed layer is missing).
"""

from __future__ import annotations

import difflib
from typing import Any

from torch import nn

__all__ = ["CLASSIFIER_ATTRIBUTES", "build_torchvision", "remove_classifier"]

#: where torchvision's classification models keep their classifier
CLASSIFIER_ATTRIBUTES = ("fc", "classifier", "heads", "head")


def _classification_models() -> list[str]:
    import torchvision.models

    return list(torchvision.models.list_models(module=torchvision.models))


def remove_classifier(model: nn.Module, name: str) -> int:
    """Replace the last ``nn.Linear`` of the model's classifier by ``nn.Identity`` (in place) and return its
    input dimension, the feature dimension."""
    for attr in CLASSIFIER_ATTRIBUTES:
        head = getattr(model, attr, None)
        if not isinstance(head, nn.Module):
            continue
        if isinstance(head, nn.Linear):
            setattr(model, attr, nn.Identity())
            return head.in_features
        linears = [(n, m) for n, m in head.named_modules() if isinstance(m, nn.Linear)]
        if linears:
            path, last = linears[-1]
            parent = head.get_submodule(path.rpartition(".")[0]) if "." in path else head
            setattr(parent, path.rpartition(".")[2], nn.Identity())
            return last.in_features
    raise ValueError(f"torchvision model {name!r} has no linear classifier in {CLASSIFIER_ATTRIBUTES} to remove")


def build_torchvision(name: str, **kwargs: Any) -> tuple[nn.Module, int]:
    """``(model without its classifier, feature dimension)``; an unknown name is an error listing close
    matches among torchvision's classification models."""
    import torchvision.models

    names = _classification_models()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=5, cutoff=0.6)
        hint = f"; close matches: {', '.join(close)}" if close else f"; choose one of {', '.join(sorted(names))}"
        raise ValueError(f"unknown torchvision classification model {name!r}{hint}")
    if "weights" in kwargs:
        raise ValueError("backbone_kwargs may not set 'weights' for a torchvision backbone (random weights)")
    model = torchvision.models.get_model(name, weights=None, **kwargs)
    return model, remove_classifier(model, name)
