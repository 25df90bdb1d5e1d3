"""Which view recipe the data module trains with, and whether the training images fit it.

- :func:`resolve_views`: the data module's ``views`` argument (a recipe name, an import path or a
  callable) -> :class:`ChosenViews` (name, training transform, eval transform);
- ``views: auto``, resolved in ``setup``: :func:`method_default_views` reads the trained method's
  ``default_views``, :func:`recipe_views` builds it, its ``_cifar`` variant on 32 px data
  (``CIFAR_SIZED``) or on images whose median shorter side is small (:func:`cifar_sized_images`);
- image sizes: :func:`shorter_sides` reads a few image headers, :func:`small_image_message` words the
  warning for images much smaller than the recipe's largest crop (:func:`largest_crop`).
"""

from __future__ import annotations

import importlib
import inspect
import statistics
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, NamedTuple, Optional, Union

import torchvision.transforms as T
import torchvision.transforms.v2 as T2
from torch.utils.data import Dataset

from mvssl_lightning.data.datasets import sample_image_sizes
from mvssl_lightning.data.views import (
    IMAGENET_NORMALIZE,
    VIEW_RECIPES,
    default_eval_view,
    eval_view,
    eval_view_cifar,
    get_view_recipe,
)

if TYPE_CHECKING:
    import lightning as L

__all__ = [
    "CIFAR_SIZED",
    "CIFAR_SIZED_MAX_SIDE",
    "ChosenViews",
    "cifar_sized_images",
    "import_transform",
    "largest_crop",
    "method_default_views",
    "recipe_views",
    "resolve_views",
    "shorter_sides",
    "small_image_message",
    "small_images",
]

#: Datasets of 32 px images.
CIFAR_SIZED = ("default", "cifar10", "cifar100")
#: ``views: auto`` on other datasets takes the ``_cifar`` recipe when the images' median shorter side is at most this
CIFAR_SIZED_MAX_SIDE = 64

#: The data module reads the header of this many training images to compare their size with the recipe's crops.
SIZE_SAMPLE = 8
#: ... and warns when the median shorter side is below this fraction of the largest crop.
SMALL_IMAGE_FRACTION = 0.5


class ChosenViews(NamedTuple):
    """A resolved ``views`` argument: its name, the training transform and the eval transform."""

    name: str
    transform: Callable
    eval_transform: Callable


def recipe_views(name: str, view_kwargs: dict, eval_transform: Optional[Callable] = None) -> ChosenViews:
    """Recipe ``name`` of ``VIEW_RECIPES`` with ``view_kwargs``, and its own eval view unless one is given."""
    transform = get_view_recipe(name, **view_kwargs)
    if eval_transform is None:
        eval_transform = default_eval_view(name, **view_kwargs)
    return ChosenViews(name, transform, eval_transform)


def import_transform(path: str, kwargs: dict) -> Callable:
    """Resolve ``"package.module.Name"`` and call it with ``kwargs`` (a transform class or factory)."""
    module_name, _, attr = path.rpartition(".")
    if not module_name:
        raise ValueError(
            f"unknown view recipe {path!r}; valid names: {', '.join(VIEW_RECIPES)} "
            "(or an import path such as lightly.transforms.SimCLRTransform, or any callable)"
        )
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(
            f"cannot import view transform {path!r} ({e}); valid recipe names: {', '.join(VIEW_RECIPES)}"
        ) from e
    return factory(**kwargs)


def resolve_views(
    views: Union[str, Callable], view_kwargs: dict, eval_transform: Optional[Callable], dataset_name: str
) -> ChosenViews:
    """``views`` other than ``"auto"``: a recipe name, or an import path or callable (a foreign transform).

    A foreign transform's default eval transform normalises with ImageNet statistics, as lightly's
    transforms do by default: ToTensor + normalisation on 32 px datasets, ``eval_view()`` otherwise.
    """
    if isinstance(views, str) and views in VIEW_RECIPES:
        return recipe_views(views, view_kwargs, eval_transform)
    name = views if isinstance(views, str) else str(getattr(views, "name", "") or type(views).__name__)
    if isinstance(views, str):
        views = import_transform(views, view_kwargs)
    elif view_kwargs:
        raise ValueError("view_kwargs is only used when views is a recipe name or import path")
    if not callable(views):
        raise TypeError(f"views must be a recipe name or a callable, got {type(views).__name__}")
    if eval_transform is None:
        eval_transform = eval_view_cifar(normalize=IMAGENET_NORMALIZE) if dataset_name in CIFAR_SIZED else eval_view()
    return ChosenViews(name, views, eval_transform)


def method_default_views(trainer: Optional[L.Trainer]) -> tuple[str, str]:
    """``views: auto``: the recipe name the trained method asks for (its ``default_views``) and its class name.

    This is the data module's one read of the model: through Lightning's public
    ``trainer.lightning_module``, in ``setup`` (the model is attached by then), so switching
    ``--model.class_path`` switches the views too.  ``ValueError`` without a trainer or without a
    ``default_views`` string on the model.
    """
    model: Any = trainer.lightning_module if trainer is not None else None
    name = getattr(model, "default_views", None)
    if not isinstance(name, str):
        raise ValueError(
            "views: auto takes the view recipe from the method being trained (its default_views); "
            f"{'there is no Trainer' if model is None else type(model).__name__ + ' has none'}: set data.views"
        )
    return name, type(model).__name__


def shorter_sides(dataset: Dataset) -> list[int]:
    """Shorter sides of ``SIZE_SAMPLE`` images spread over ``dataset`` (headers only; ``[]`` when unknown)."""
    return [min(h, w) for h, w in sample_image_sizes(dataset, SIZE_SAMPLE)]


def cifar_sized_images(sides: list[int]) -> bool:
    """Whether images with these sampled shorter sides take the ``_cifar`` recipes (median at most 64 px)."""
    return bool(sides) and statistics.median(sides) <= CIFAR_SIZED_MAX_SIDE


def small_images(dataset_name: str, sides: list[int]) -> bool:
    """The one rule of pre-training (``views: auto``) and evaluation for 32 px-class data: a dataset of
    :data:`CIFAR_SIZED`, or sampled shorter sides (:func:`shorter_sides`) whose median is at most 64 px."""
    return dataset_name in CIFAR_SIZED or cifar_sized_images(sides)


def walk_transforms(transform: Any) -> Iterator[Any]:
    """Every transform nested in ``transform`` (itself first), following ``transforms`` / ``transform`` /
    ``crop`` / ``jigsaw``, each once."""
    seen: set[int] = set()
    stack = [transform]
    while stack:
        t = stack.pop()
        if id(t) in seen:
            continue
        seen.add(id(t))
        yield t
        for attr in ("jigsaw", "crop", "transform", "transforms"):  # pushed in reverse: visited in this order
            inner = getattr(t, attr, None)
            if inner is None or inspect.ismethod(inner):
                continue
            stack.extend(reversed(inner) if isinstance(inner, (list, tuple)) else [inner])


def largest_crop(transform: Any) -> Optional[int]:
    """The largest ``RandomResizedCrop`` size in a recipe (:func:`walk_transforms`)."""
    sizes = [
        max(int(v) for v in t.size) if isinstance(t.size, (list, tuple)) else int(t.size)
        for t in walk_transforms(transform) if isinstance(t, (T.RandomResizedCrop, T2.RandomResizedCrop))
    ]
    return max(sizes) if sizes else None


def find_normalize(transform: Any) -> Optional[tuple[list[float], list[float]]]:
    """``(mean, std)`` of the first ``Normalize`` in a transform (:func:`walk_transforms`), or None."""
    for t in walk_transforms(transform):
        if isinstance(t, (T.Normalize, T2.Normalize)):
            return [float(v) for v in t.mean], [float(v) for v in t.std]
    return None


def small_image_message(crop: int, sides: list[int], dataset_name: str, views_name: str) -> Optional[str]:
    """The warning for training images much smaller than the recipe's largest ``crop``, or ``None``."""
    if not sides:
        return None
    shorter = statistics.median(sides)
    if shorter >= SMALL_IMAGE_FRACTION * crop:
        return None
    return (
        f"the training images are much smaller than the view recipe's crops: median shorter side "
        f"{shorter:g} px over {len(sides)} sampled images of dataset '{dataset_name}', largest "
        f"crop {crop} px in view recipe '{views_name}', so every crop is enlarged more than "
        f"{1 / SMALL_IMAGE_FRACTION:g}x; use a recipe sized for these images (a *_cifar recipe, or "
        "view_kwargs such as size / global_size)"
    )
