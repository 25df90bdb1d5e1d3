"""AMDIM's views (official code ``Philip-Bachman/amdim-public``, ``datasets.py``).

Both recipes first flip the image horizontally with probability 1/2, **once** for the pair (so both
views are flipped or neither), then augment each view independently:

- :func:`amdim_views` (``TransformsImageNet128``): bicubic RandomResizedCrop(128, scale (0.3, 1),
  ratio (0.7, 1.4)), ColorJitter(0.4, 0.4, 0.4, 0.1) with p 0.8, grayscale p 0.25, ImageNet
  normalisation.  (An earlier revision of the file had hue 0.2 and grayscale p 0.2; the README's
  best results also add the Fast-AutoAugment policy, which is not in the repository.)
- :func:`amdim_views_cifar` (``TransformsC10``, also used for CIFAR-100): no crop-resize; a random
  translation by up to 4 px in each axis with reflect padding (:class:`RandomTranslateWithReflect`)
  with p 0.8, ColorJitter(0.4, 0.4, 0.4, **0.2**) with p 0.8, grayscale p 0.25, CIFAR-10
  normalisation.  The official statistics (mean ``[125.3, 123.0, 113.9] / 255``, std
  ``[63.0, 62.1, 66.7] / 255``) equal the library's ``CIFAR10_NORMALIZE`` to 3 decimals, so the
  default uses the latter and matches :func:`~mvssl_lightning.data.views.eval.eval_view_cifar`.

Evaluation views: :class:`AMDIMEvalView` (bicubic Resize 146, CenterCrop 128, as the official test
transform) and :class:`AMDIMEvalViewCifar` (ToTensor + Normalize).  They are classes so that YAML
configs can name them with ``class_path``.

The recipes return an :class:`AMDIMViews`: a :class:`~mvssl_lightning.data.views.base.MultiViewRecipe`
(``.transforms`` holds the per-view transform twice, ``num_views = 2``) with the shared flip.

Device compiler entries registered here (:mod:`mvssl_lightning.data.device.registry`):
:class:`RandomTranslateWithReflect` inside ``RandomApply(p)`` -> ``DeviceTranslateReflect``, and the
:class:`AMDIMViews` hook, which sets the device recipe's shared flip to ``hf_prob``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import cast

import numpy as np
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image

from mvssl_lightning.data.device.geometry import DeviceTranslateReflect
from mvssl_lightning.data.device.pipeline import DeviceViews
from mvssl_lightning.data.device.registry import register_device_recipe, register_device_transform
from mvssl_lightning.data.views.base import (
    CIFAR10_NORMALIZE,
    IMAGENET_NORMALIZE,
    MultiViewRecipe,
    Normalize,
    to_tensor_normalize,
)

__all__ = [
    "AMDIMEvalView",
    "AMDIMEvalViewCifar",
    "AMDIMViews",
    "AMDIM_CIFAR10_NORMALIZE",
    "AMDIM_IMAGENET_NORMALIZE",
    "RandomTranslateWithReflect",
    "amdim_views",
    "amdim_views_cifar",
]

#: ImageNet statistics of the official ``TransformsImageNet128`` (the library's ``IMAGENET_NORMALIZE``).
AMDIM_IMAGENET_NORMALIZE = IMAGENET_NORMALIZE
#: CIFAR-10 statistics (the library's ``CIFAR10_NORMALIZE``; the official values agree to 3 decimals).
AMDIM_CIFAR10_NORMALIZE = CIFAR10_NORMALIZE


class AMDIMViews(MultiViewRecipe):
    """Two views of one image that share a horizontal flip, then augment independently.

    ``__call__(image)``: flip with probability ``hf_prob`` (decided once), then
    ``[t(image) for t in transforms]``.
    """

    def __init__(self, view_transform: Callable, hf_prob: float = 0.5, name: str = "amdim") -> None:
        super().__init__([view_transform, view_transform], name=name)
        self.hf_prob = float(hf_prob)

    def __call__(self, image: Image.Image | torch.Tensor) -> list[torch.Tensor]:
        if torch.rand(()).item() < self.hf_prob:
            image = TF.hflip(image)
        return cast(list[torch.Tensor], super().__call__(image))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, num_views={self.num_views}, hf_prob={self.hf_prob})"


class RandomTranslateWithReflect:
    """Translate by integers ``(dx, dy)`` drawn uniformly from ``[-m, m]``; fill by reflection.

    Equivalent to the official class: reflect-pad by ``m`` (mirror without repeating the edge pixel),
    then cut the original size at offset ``(m - dx, m - dy)``, so pixel ``(i, j)`` of the output is
    ``(i - dy, j - dx)`` of the input.  Needs ``m`` smaller than the image sides.
    """

    def __init__(self, max_translation: int = 4) -> None:
        self.max_translation = int(max_translation)

    def __call__(self, image: Image.Image) -> Image.Image:
        m = self.max_translation
        dx, dy = (int(v) for v in torch.randint(-m, m + 1, (2,)))
        array = np.asarray(image)
        pad = ((m, m), (m, m)) + ((0, 0),) * (array.ndim - 2)
        padded = np.pad(array, pad, mode="reflect")
        h, w = array.shape[:2]
        return Image.fromarray(padded[m - dy:m - dy + h, m - dx:m - dx + w])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(max_translation={self.max_translation})"


def _color(color_jitter: Sequence[float], cj_prob: float, gray: float) -> list[Callable]:
    b, c, s, h = (float(v) for v in color_jitter)
    return [T.RandomApply([T.ColorJitter(b, c, s, h)], p=cj_prob), T.RandomGrayscale(p=gray)]


def amdim_views(
    size: int = 128,
    scale: Sequence[float] = (0.3, 1.0),
    ratio: Sequence[float] = (0.7, 1.4),
    color_jitter: Sequence[float] = (0.4, 0.4, 0.4, 0.1),
    cj_prob: float = 0.8,
    gray: float = 0.25,
    hf_prob: float = 0.5,
    normalize: Normalize = AMDIM_IMAGENET_NORMALIZE,
) -> AMDIMViews:
    """AMDIM's ImageNet pair (official ``TransformsImageNet128``): shared flip, then per view
    bicubic RandomResizedCrop(``size``, ``scale``, ``ratio``), ColorJitter p ``cj_prob``, grayscale
    p ``gray``, normalisation.
    """
    view = T.Compose([
        T.RandomResizedCrop(size, scale=tuple(scale), ratio=tuple(ratio),
                            interpolation=T.InterpolationMode.BICUBIC),
        *_color(color_jitter, cj_prob, gray),
        *to_tensor_normalize(normalize),
    ])
    return AMDIMViews(view, hf_prob, name="amdim")


def amdim_views_cifar(
    max_translation: int = 4,
    translate_prob: float = 0.8,
    color_jitter: Sequence[float] = (0.4, 0.4, 0.4, 0.2),
    cj_prob: float = 0.8,
    gray: float = 0.25,
    hf_prob: float = 0.5,
    normalize: Normalize = AMDIM_CIFAR10_NORMALIZE,
) -> AMDIMViews:
    """AMDIM's CIFAR pair (official ``TransformsC10``): shared flip, then per view a reflect-padded
    translation by up to ``max_translation`` px with p ``translate_prob``, ColorJitter(0.4, 0.4, 0.4,
    0.2) p ``cj_prob``, grayscale p ``gray``, normalisation.  Images keep their 32 px size.
    """
    view = T.Compose([
        T.RandomApply([RandomTranslateWithReflect(max_translation)], p=translate_prob),
        *_color(color_jitter, cj_prob, gray),
        *to_tensor_normalize(normalize),
    ])
    return AMDIMViews(view, hf_prob, name="amdim_cifar")


class AMDIMEvalView(T.Compose):
    """Official test transform: bicubic Resize(``resize``), CenterCrop(``size``), ToTensor, Normalize."""

    def __init__(self, size: int = 128, resize: int = 146, normalize: Normalize = AMDIM_IMAGENET_NORMALIZE) -> None:
        super().__init__([
            T.Resize(resize, interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(size),
            *to_tensor_normalize(normalize),
        ])


class AMDIMEvalViewCifar(T.Compose):
    """Official CIFAR test transform: ToTensor and Normalize (images stay 32 px)."""

    def __init__(self, normalize: Normalize = AMDIM_CIFAR10_NORMALIZE) -> None:
        super().__init__(to_tensor_normalize(normalize))


# ----------------------------------------------------------------------------- device compiler entries
def _device_translate(t: RandomTranslateWithReflect, p: float) -> DeviceTranslateReflect:
    return DeviceTranslateReflect(t.max_translation, p)


def _device_shared_flip(recipe: AMDIMViews, device_views: DeviceViews) -> DeviceViews:
    device_views.shared_flip = recipe.hf_prob
    return device_views


register_device_transform(RandomTranslateWithReflect, _device_translate, in_random_apply=True)
register_device_recipe(AMDIMViews, _device_shared_flip)
