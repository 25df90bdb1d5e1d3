"""Compile a CPU view recipe into its device counterpart.

:func:`compile_views` walks the transforms of a multi-view recipe (one of
``mvssl_lightning.data.views.VIEW_RECIPES``, or any lightly / torchvision pipeline made of registered
building blocks) and builds the batched device steps with the **same parameters**, read from the
transform objects themselves, so the two paths cannot drift apart.  Every step is dispatched by type
through the table of :mod:`mvssl_lightning.data.device.registry`: torchvision's and lightly's transforms
are registered by :mod:`mvssl_lightning.data.device.builtin`, the recipe families' own transforms and
multi-view containers by their modules (``views/infomin.py``, ``views/amdim.py``).  A transform with no
registered counterpart raises :class:`UnsupportedOnDevice` naming it; the data module then falls back
to the CPU path with that message.

The structure is handled here: nested ``Compose`` and lightly view transforms (which keep their
pipeline in ``.transform``) are flattened, a ``RandomApply`` of one transform looks that transform up
among the ``in_random_apply`` entries (``RandomApply`` with p 0 is dropped), and a random resized crop
must be a view's first step.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Optional

import torchvision.transforms as T
import torchvision.transforms.v2 as T2

from mvssl_lightning.data.device import builtin  # noqa: F401  (registers torchvision's and lightly's transforms)
from mvssl_lightning.data.device.geometry import DeviceResizedCrop
from mvssl_lightning.data.device.pipeline import DeviceView, DeviceViews
from mvssl_lightning.data.device.registry import (
    UnsupportedOnDevice,
    device_recipe_hook,
    device_transform_compiler,
    register_device_recipe,
    register_device_transform,
    unsupported,
)
from mvssl_lightning.data.device.step import DeviceStep

__all__ = [
    "DeviceView",
    "DeviceViews",
    "UnsupportedOnDevice",
    "compile_view",
    "compile_views",
    "register_device_recipe",
    "register_device_transform",
]

# torchvision's v1 and v2 container classes (lightly uses both)
_RANDOM_APPLY = (T.RandomApply, T2.RandomApply)
_COMPOSE = (T.Compose, T2.Compose)


def _random_apply(t: Any) -> DeviceStep:
    if len(t.transforms) != 1:
        raise unsupported(t, "RandomApply of several transforms")
    inner = t.transforms[0]
    compile_fn = device_transform_compiler(inner, in_random_apply=True)
    if compile_fn is None:
        raise unsupported(inner)
    return compile_fn(inner, float(t.p))


def _flatten(transform: Any) -> list[Any]:
    """The leaf transforms of (nested) ``Compose`` / lightly view transforms, in order.

    A registered transform is a leaf.  lightly's view transforms (and ``RandomRotateDegrees``) keep
    their pipeline in ``.transform``.
    """
    if device_transform_compiler(transform) is not None:
        return [transform]
    if isinstance(transform, _COMPOSE):
        return [leaf for t in transform.transforms for leaf in _flatten(t)]
    inner = getattr(transform, "transform", None)
    if inner is not None and not inspect.ismethod(inner):
        return _flatten(inner)
    return [transform]


def compile_view(transform: Callable) -> DeviceView:
    """The device counterpart of one single-view transform (see the module docstring).

    Raises:
        UnsupportedOnDevice: a step has no device counterpart (the message names it).
    """
    crop: Optional[DeviceResizedCrop] = None
    steps: list[DeviceStep] = []
    for i, t in enumerate(_flatten(transform)):
        if isinstance(t, _RANDOM_APPLY):
            if t.p > 0:
                steps.append(_random_apply(t))
            continue
        compile_fn = device_transform_compiler(t)
        if compile_fn is None:
            raise unsupported(t)
        out = compile_fn(t)
        if isinstance(out, DeviceResizedCrop):
            if i != 0:
                raise unsupported(t, "a random resized crop must be the first step")
            crop = out
        elif out is not None:
            steps.append(out)
    return DeviceView(crop, steps)


def compile_views(recipe: Callable) -> DeviceViews:
    """The device counterpart of a multi-view recipe (``MultiViewRecipe``, lightly ``MultiViewTransform``...).

    Compiles every transform of ``recipe.transforms`` (a transform used several times is compiled
    once and run as one batch), then passes the result through the hook registered for the recipe's
    type (:func:`~mvssl_lightning.data.device.registry.register_device_recipe`), if any.

    Raises:
        UnsupportedOnDevice: a step has no device counterpart (the message names it).
    """
    transforms = getattr(recipe, "transforms", None)
    if not isinstance(transforms, (list, tuple)) or isinstance(recipe, _COMPOSE):
        raise UnsupportedOnDevice(
            f"{type(recipe).__name__} is not a multi-view recipe (a lightly MultiViewTransform or one of "
            "mvssl_lightning.data.views.VIEW_RECIPES)"
        )
    compiled: dict[int, DeviceView] = {}
    views = [compiled.setdefault(id(t), compile_view(t)) for t in transforms]
    device_views = DeviceViews(views, name=str(getattr(recipe, "name", "")))
    hook = device_recipe_hook(recipe)
    return hook(recipe, device_views) if hook is not None else device_views
