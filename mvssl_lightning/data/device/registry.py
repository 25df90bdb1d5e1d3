"""The device compiler's dispatch tables: transform type -> device step, recipe type -> multi-view hook.

:func:`~mvssl_lightning.data.device.recipe.compile_view` looks every leaf transform of a view up here by
type, and :func:`~mvssl_lightning.data.device.recipe.compile_views` calls the hook registered for the
recipe's type, if any.  Lookups walk the type's MRO (most specific class first), so a subclass of a
registered class compiles like it unless it is registered itself; registering a class again replaces
its entry.

Who registers what:

- torchvision's and lightly's transforms: :mod:`mvssl_lightning.data.device.builtin` (libraries, not
  recipes);
- every other transform and multi-view container: the module that defines it, at import (e.g.
  ``mvssl_lightning/data/views/infomin.py`` registers ``InfoMinRandAugment`` and the jigsaw hook of
  ``InfoMinViews``; ``views/amdim.py`` the reflect translation and the shared flip of ``AMDIMViews``).

So nothing under ``data/device/`` imports a recipe module, and a new recipe needs no edit here.

Table entries:

- :func:`register_device_transform` ``(cls, fn)``: ``fn(t)`` for a step ``t`` of a view (outside a
  ``RandomApply``) returns a :class:`~mvssl_lightning.data.device.step.DeviceStep`, a
  :class:`~mvssl_lightning.data.device.geometry.DeviceResizedCrop` (the view's crop; only allowed as the
  first step), or ``None`` when the step does nothing on the device (``ToTensor``, a flip with p 0...).
- ``register_device_transform(cls, fn, in_random_apply=True)``: ``fn(t, p)`` for ``t`` the only
  transform of a ``RandomApply`` with probability ``p > 0``; returns a ``DeviceStep`` that applies
  ``t`` with probability ``p``.  A transform registered only one way is refused the other way.
- :func:`register_device_recipe` ``(cls, hook)``: ``hook(recipe, device_views)`` is called with the
  :class:`~mvssl_lightning.data.device.pipeline.DeviceViews` compiled from ``recipe.transforms`` and
  returns the final ``DeviceViews`` (it may add views, e.g. jigsaw patches, or set ``shared_flip``).

A compile function that cannot reproduce a transform's settings raises :class:`UnsupportedOnDevice`
(build it with :func:`unsupported`); the data module then falls back to the CPU views.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Optional, Union

from mvssl_lightning.data.device.geometry import DeviceResizedCrop
from mvssl_lightning.data.device.pipeline import DeviceViews
from mvssl_lightning.data.device.step import DeviceStep

__all__ = [
    "CompileFn",
    "RandomApplyCompileFn",
    "RecipeHook",
    "UnsupportedOnDevice",
    "device_recipe_hook",
    "device_transform_compiler",
    "register_device_recipe",
    "register_device_transform",
    "unsupported",
]

#: ``fn(t)`` -> device step, the view's crop, or ``None`` (nothing to do on the device).
CompileFn = Callable[[Any], Optional[Union[DeviceStep, DeviceResizedCrop]]]
#: ``fn(t, p)`` -> device step applying ``t`` with probability ``p`` (``t`` inside ``RandomApply(p)``).
RandomApplyCompileFn = Callable[[Any, float], DeviceStep]
#: ``hook(recipe, compiled)`` -> the recipe's final device views.
RecipeHook = Callable[[Any, DeviceViews], DeviceViews]

Classes = Union[type, tuple[type, ...]]

_PLAIN: dict[type, CompileFn] = {}
_IN_RANDOM_APPLY: dict[type, RandomApplyCompileFn] = {}
_RECIPES: dict[type, RecipeHook] = {}


class UnsupportedOnDevice(ValueError):
    """A view transform has no batched device counterpart."""


def unsupported(t: Any, why: str = "no device counterpart") -> UnsupportedOnDevice:
    """The error naming transform ``t`` and why it cannot run on the device (to raise)."""
    return UnsupportedOnDevice(f"view step {type(t).__name__} ({t!r}) cannot run on the device: {why}")


def _classes(cls: Classes) -> tuple[type, ...]:
    classes = cls if isinstance(cls, tuple) else (cls,)
    if not classes or not all(isinstance(c, type) for c in classes):
        raise TypeError(f"expected a class or a tuple of classes, got {cls!r}")
    return classes


def register_device_transform(
    cls: Classes, compile_fn: Union[CompileFn, RandomApplyCompileFn], *, in_random_apply: bool = False
) -> None:
    """Register the device compile function of transform class(es) ``cls`` (see the module docstring).

    ``in_random_apply=False``: ``compile_fn(t)`` for ``t`` a plain step of a view;
    ``in_random_apply=True``: ``compile_fn(t, p)`` for ``t`` the only transform of ``RandomApply(p)``.
    """
    table: dict[type, Any] = _IN_RANDOM_APPLY if in_random_apply else _PLAIN
    for c in _classes(cls):
        table[c] = compile_fn


def register_device_recipe(cls: Classes, hook: RecipeHook) -> None:
    """Register ``hook(recipe, device_views) -> DeviceViews`` for multi-view container class(es) ``cls``."""
    for c in _classes(cls):
        _RECIPES[c] = hook


def _lookup(table: dict[type, Any], obj: Any) -> Optional[Any]:
    for klass in type(obj).__mro__:
        entry = table.get(klass)
        if entry is not None:
            return entry
    return None


def device_transform_compiler(t: Any, in_random_apply: bool = False) -> Optional[Callable[..., Any]]:
    """The compile function registered for ``t``'s type (plain or inside ``RandomApply``), or ``None``."""
    return _lookup(_IN_RANDOM_APPLY if in_random_apply else _PLAIN, t)


def device_recipe_hook(recipe: Any) -> Optional[RecipeHook]:
    """The hook registered for ``recipe``'s type, or ``None``."""
    return _lookup(_RECIPES, recipe)
