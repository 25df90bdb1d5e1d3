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


def eval_view_cifar(normalize: Normalize = CIFAR10_NORMALIZE, size: int = 32) -> T.Compose:
    """Deterministic evaluation view of the small-image recipes: Resize(``size``), CenterCrop(``size``),
    ToTensor, Normalize.

    A ``size`` x ``size`` image (all of CIFAR at 32) passes the resize and the crop unchanged, so this is
    ToTensor and Normalize there, as in the CIFAR protocols; an image of another size (a 40 px dataset, or
    one large photo among small ones) is brought to the size the recipe trains at instead of breaking the
    batch.
    """
    return T.Compose([T.Resize(size), T.CenterCrop(size), *to_tensor_normalize(normalize)])
