"""Deterministic single-view evaluation transforms, for the linear probe and kNN loaders."""

from __future__ import annotations

import torchvision.transforms as T

from mvssl_lightning.data.views.base import CIFAR10_NORMALIZE, IMAGENET_NORMALIZE, Normalize, to_tensor_normalize

__all__ = ["eval_view", "eval_view_cifar"]


def eval_view(size: int = 224, resize: int = 256, normalize: Normalize = IMAGENET_NORMALIZE) -> T.Compose:
    """Deterministic evaluation view: Resize(``resize``), CenterCrop(``size``), ToTensor, Normalize.

    The standard ImageNet linear-evaluation transform (Resize 256, CenterCrop 224; e.g. MEC's official
    ``xinliu20/MEC`` ``main_lincls.py``). Returns one tensor ``(3, size, size)``.
    """
    return T.Compose([T.Resize(resize), T.CenterCrop(size), *to_tensor_normalize(normalize)])


def eval_view_cifar(normalize: Normalize = CIFAR10_NORMALIZE) -> T.Compose:
    """Deterministic CIFAR evaluation view: ToTensor and Normalize only (images stay 32 px)."""
    return T.Compose(to_tensor_normalize(normalize))
