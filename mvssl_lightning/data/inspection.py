"""Looking inside a dataset from outside: its untransformed images, its class names, its items as tensors.

For code that reads a dataset it did not build (the representation diagnostics read the validation
dataset of whatever loader the Trainer holds): a dataset with a ``transform`` attribute applied in
``__getitem__`` (torchvision's and this library's), possibly inside ``torch.utils.data.Subset``
wrappers, is read untransformed by a shallow copy with ``transform = None``; its class names are its
``classes`` list, as in torchvision.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any, Optional

import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset

__all__ = ["as_tensor", "class_names", "stack_cpu", "untransformed_reader"]


def untransformed_reader(dataset: Dataset) -> Optional[Callable[[int], Any]]:
    """``i -> item i without the dataset's transform`` (through ``Subset`` wrappers), or None."""
    chain: list[Sequence[int]] = []
    base: Any = dataset
    while isinstance(base, Subset):
        chain.append(base.indices)
        base = base.dataset
    if not hasattr(base, "transform"):
        return None
    raw = copy.copy(base)
    raw.transform = None

    def read(i: int) -> Any:
        for indices in chain:
            i = int(indices[i])
        return raw[i]

    return read


def class_names(dataset: Dataset) -> Optional[list[str]]:
    """``dataset.classes`` (through ``Subset`` wrappers) when it is a list of names, as in torchvision."""
    base: Any = dataset
    while isinstance(base, Subset):
        base = base.dataset
    names = getattr(base, "classes", None)
    return [str(c) for c in names] if isinstance(names, (list, tuple)) else None


def as_tensor(x: Any) -> Optional[Tensor]:
    """``x`` if it is a tensor, else None."""
    return x if isinstance(x, Tensor) else None


def stack_cpu(items: list[Tensor]) -> Tensor:
    """The detached tensors ``items`` stacked on the CPU."""
    return torch.stack([t.detach().cpu() for t in items])
