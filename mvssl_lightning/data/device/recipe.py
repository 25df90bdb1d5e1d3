"""Compile a CPU view recipe into its device counterpart, and run it on a batch.

:func:`compile_views` walks the transforms of a recipe from ``data/views.py`` (or any lightly /
torchvision pipeline made of the same building blocks) and builds the batched device steps with the
**same parameters**, read from the transform objects themselves, so the two paths cannot drift
apart.  A transform with no device counterpart raises :class:`UnsupportedOnDevice` naming it; the
data module then falls back to the CPU path with that message.

Supported: ``RandomResizedCrop`` (first step), ``RandomHorizontalFlip``, ``RandomVerticalFlip``,
lightly ``RandomRotate`` (90 degrees), ``ColorJitter`` (plain or in ``RandomApply``),
``RandomGrayscale``, lightly ``GaussianBlur``, torchvision ``GaussianBlur`` in ``RandomApply``,
lightly ``RandomSolarization``, ``InfoMinRandAugment``, AMDIM's ``RandomTranslateWithReflect`` in
``RandomApply``, ``ToTensor``, ``Normalize``; multi-view containers (lightly
``MultiViewTransform``, our recipes), AMDIM's shared flip and InfoMin's jigsaw patches.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
import torchvision.transforms as T
import torchvision.transforms.v2 as T2
from torch import Tensor

from mvssl_lightning.data.device.color import (
    DeviceColorJitter,
    DeviceGaussianBlur,
    DeviceGrayscale,
    DeviceNormalize,
    DeviceSolarize,
)
from mvssl_lightning.data.device.geometry import (
    DeviceFlip,
    DeviceResizedCrop,
    DeviceRotate90,
    DeviceTranslateReflect,
    crop_patches,
    resized_crops,
)
from mvssl_lightning.data.device.step import DeviceStep

__all__ = ["DeviceView", "DeviceViews", "UnsupportedOnDevice", "compile_view", "compile_views"]


# torchvision's v1 and v2 classes of each supported transform (lightly uses both)
_HFLIP = (T.RandomHorizontalFlip, T2.RandomHorizontalFlip)
_VFLIP = (T.RandomVerticalFlip, T2.RandomVerticalFlip)
_RANDOM_APPLY = (T.RandomApply, T2.RandomApply)
_COLOR_JITTER = (T.ColorJitter, T2.ColorJitter)
_GAUSSIAN_BLUR = (T.GaussianBlur, T2.GaussianBlur)
_RESIZED_CROP = (T.RandomResizedCrop, T2.RandomResizedCrop)
_GRAYSCALE = (T.RandomGrayscale, T2.RandomGrayscale)
_NORMALIZE = (T.Normalize, T2.Normalize)
_COMPOSE = (T.Compose, T2.Compose)


class UnsupportedOnDevice(ValueError):
    """A view transform has no batched device counterpart."""


@dataclass(eq=False)
class DeviceView:
    """One view: an optional random resized crop of the source, then per-sample steps.

    ``crop=None`` uses the whole source image (all images of a batch must then have one size).
    ``jigsaw = (grid, cell, patch)`` cuts ``grid**2`` patches after the steps (InfoMin).
    """

    crop: Optional[DeviceResizedCrop]
    steps: list[DeviceStep] = field(default_factory=list)
    jigsaw: Optional[tuple[int, int, int]] = None

    @property
    def num_outputs(self) -> int:
        return 1 if self.jigsaw is None else self.jigsaw[0] ** 2


def _unsupported(t: Any, why: str = "no device counterpart") -> UnsupportedOnDevice:
    return UnsupportedOnDevice(f"view step {type(t).__name__} ({t!r}) cannot run on the device: {why}")


def _size(t: Any) -> int:
    size = t.size if isinstance(t.size, (tuple, list)) else (t.size, t.size)
    if len(size) != 2 or size[0] != size[1]:
        raise _unsupported(t, "only square output sizes are supported")
    return int(size[0])


def _random_apply(t: Any) -> DeviceStep:
    from mvssl_lightning.data.views_amdim import RandomTranslateWithReflect

    if len(t.transforms) != 1:
        raise _unsupported(t, "RandomApply of several transforms")
    inner, p = t.transforms[0], float(t.p)
    if isinstance(inner, _COLOR_JITTER):
        return DeviceColorJitter(inner.brightness, inner.contrast, inner.saturation, inner.hue, p)
    if isinstance(inner, _GAUSSIAN_BLUR):
        return DeviceGaussianBlur(p, inner.sigma, kernel_size=int(inner.kernel_size[0]))
    if isinstance(inner, RandomTranslateWithReflect):
        return DeviceTranslateReflect(inner.max_translation, p)
    raise _unsupported(inner)


def _flatten(transform: Any) -> list[Any]:
    """The leaf transforms of (nested) ``Compose`` / lightly view transforms, in order.

    lightly's view transforms (and ``RandomRotateDegrees``) keep their pipeline in ``.transform``.
    """
    if isinstance(transform, _COMPOSE):
        return [leaf for t in transform.transforms for leaf in _flatten(t)]
    inner = getattr(transform, "transform", None)
    if inner is not None and not inspect.ismethod(inner):
        return _flatten(inner)
    return [transform]


def compile_view(transform: Callable) -> DeviceView:
    """The device counterpart of one single-view transform (see the module docstring)."""
    from lightly.transforms.gaussian_blur import GaussianBlur as LightlyBlur
    from lightly.transforms.rotation import RandomRotate
    from lightly.transforms.solarize import RandomSolarization

    from mvssl_lightning.data.device.randaugment import DeviceRandAugment
    from mvssl_lightning.data.views_infomin import InfoMinRandAugment

    leaves = _flatten(transform)
    crop: Optional[DeviceResizedCrop] = None
    steps: list[DeviceStep] = []
    for i, t in enumerate(leaves):
        if isinstance(t, _RESIZED_CROP):
            if i != 0:
                raise _unsupported(t, "a random resized crop must be the first step")
            bicubic = t.interpolation in (T.InterpolationMode.BICUBIC, "bicubic")
            crop = DeviceResizedCrop(_size(t), t.scale, t.ratio, bicubic=bicubic)
        elif isinstance(t, _HFLIP + _VFLIP):
            if t.p > 0:
                steps.append(DeviceFlip(t.p, dim=-1 if isinstance(t, _HFLIP) else -2))
        elif isinstance(t, RandomRotate):
            if t.prob > 0:
                if t.angle % 360 != 90:
                    raise _unsupported(t, "only 90-degree rotations")
                steps.append(DeviceRotate90(t.prob))
        elif isinstance(t, _RANDOM_APPLY):
            if t.p > 0:
                steps.append(_random_apply(t))
        elif isinstance(t, _COLOR_JITTER):
            steps.append(DeviceColorJitter(t.brightness, t.contrast, t.saturation, t.hue, 1.0))
        elif isinstance(t, _GRAYSCALE):
            if t.p > 0:
                steps.append(DeviceGrayscale(t.p))
        elif isinstance(t, LightlyBlur):
            if t.prob > 0:
                steps.append(DeviceGaussianBlur(t.prob, t.sigmas))
        elif isinstance(t, RandomSolarization):
            if t.prob > 0:
                steps.append(DeviceSolarize(t.prob, t.threshold))
        elif isinstance(t, InfoMinRandAugment):
            steps.append(DeviceRandAugment.from_cpu(t))
        elif isinstance(t, _NORMALIZE):
            steps.append(DeviceNormalize(t.mean, t.std))
        elif isinstance(t, T.ToTensor) or type(t).__name__ in ("ToTensor", "ToImage", "ToDtype"):
            continue
        else:
            raise _unsupported(t)
    return DeviceView(crop, steps)


def _compile_jigsaw(jigsaw: Any) -> DeviceView:
    view = compile_view(jigsaw.crop)
    view.jigsaw = (int(jigsaw.grid), int(jigsaw.cell), int(jigsaw.patch_size))
    return view


class DeviceViews:
    """A multi-view recipe on the device: ``views`` in output order, optional shared flip.

    ``__call__(src, sizes, generator)`` takes the decoded batch ``src (B, 3, H, W)`` uint8 (images
    padded at the bottom/right to the largest) with the true ``sizes (B, 2)`` (height, width; CPU
    int64) and returns the list of view tensors ``(B, 3, S_v, S_v)`` float32, in the recipe's order.
    Repeated uses of one transform (e.g. MVEB's 6 local crops) run as one batch.
    """

    def __init__(self, views: list[DeviceView], shared_flip: float = 0.0, name: str = "") -> None:
        if not views:
            raise ValueError("a device recipe needs at least one view")
        self.views = views
        self.shared_flip = float(shared_flip)
        self.name = name

    @property
    def num_views(self) -> int:
        return sum(v.num_outputs for v in self.views)

    def _source(self, view: DeviceView, src: Tensor, sizes: Tensor, k: int, gen: torch.Generator) -> Tensor:
        b = src.shape[0]
        index = torch.arange(b).repeat(k)
        if view.crop is not None:
            boxes = torch.cat([view.crop.sample(sizes, gen) for _ in range(k)])
            return resized_crops(src, boxes, index, view.crop.size, bicubic=view.crop.bicubic)
        if not bool((sizes == torch.tensor(src.shape[-2:])).all()):
            raise ValueError(
                "this view recipe has no random resized crop, so every image of a batch must have the "
                f"same size; got sizes from {tuple(sizes.min(0).values.tolist())} to "
                f"{tuple(sizes.max(0).values.tolist())}"
            )
        x = src.float().div_(255) if src.dtype == torch.uint8 else src.float()
        return x.repeat(k, 1, 1, 1)

    def __call__(self, src: Tensor, sizes: Tensor, generator: torch.Generator) -> list[Tensor]:
        b = src.shape[0]
        sizes = sizes.cpu()
        flip = (torch.rand(b, generator=generator) < self.shared_flip).to(src.device)
        uses: dict[int, list[int]] = {}
        for pos, view in enumerate(self.views):
            uses.setdefault(id(view), []).append(pos)
        outputs: list[list[Tensor]] = [[] for _ in self.views]
        for positions in uses.values():
            view, k = self.views[positions[0]], len(positions)
            x = self._source(view, src, sizes, k, generator)
            if self.shared_flip > 0:
                x = torch.where(flip.repeat(k).view(-1, 1, 1, 1), x.flip(-1), x)
            for step in view.steps:
                x = step(x, generator)
            pieces = [x] if view.jigsaw is None else crop_patches(x, *view.jigsaw, generator)
            for j, pos in enumerate(positions):
                outputs[pos] = [p[j * b:(j + 1) * b] for p in pieces]
        return [t for out in outputs for t in out]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, num_views={self.num_views})"


def compile_views(recipe: Callable) -> DeviceViews:
    """The device counterpart of a multi-view recipe (``MultiViewRecipe``, lightly ``MultiViewTransform``...).

    Raises:
        UnsupportedOnDevice: a step has no device counterpart (the message names it).
    """
    from mvssl_lightning.data.views_amdim import AMDIMViews
    from mvssl_lightning.data.views_infomin import InfoMinViews

    transforms = getattr(recipe, "transforms", None)
    if not isinstance(transforms, (list, tuple)) or isinstance(recipe, _COMPOSE):
        raise UnsupportedOnDevice(
            f"{type(recipe).__name__} is not a multi-view recipe (a lightly MultiViewTransform or one of "
            "mvssl_lightning.data.views.VIEW_RECIPES)"
        )
    compiled: dict[int, DeviceView] = {}
    views = [compiled.setdefault(id(t), compile_view(t)) for t in transforms]
    if isinstance(recipe, InfoMinViews) and recipe.jigsaw is not None:
        views.append(_compile_jigsaw(recipe.jigsaw))
    shared_flip = recipe.hf_prob if isinstance(recipe, AMDIMViews) else 0.0
    return DeviceViews(views, shared_flip=shared_flip, name=str(getattr(recipe, "name", "")))
