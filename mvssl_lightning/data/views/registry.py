"""The view-recipe registry: recipe name -> factory, and the evaluation view that goes with each recipe."""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable
from typing import Any

import torch

from mvssl_lightning.data.views.amdim import amdim_views, amdim_views_cifar
from mvssl_lightning.data.views.base import MultiViewRecipe
from mvssl_lightning.data.views.eval import eval_view, eval_view_cifar
from mvssl_lightning.data.views.infomin import infomin_views, infomin_views_cifar
from mvssl_lightning.data.views.mveb import mveb_multicrop, mveb_multicrop_cifar
from mvssl_lightning.data.views.pairs import (
    asymmetric_two_views,
    asymmetric_two_views_cifar,
    two_views,
    two_views_cifar,
)

__all__ = ["VIEW_RECIPES", "default_eval_view", "get_view_recipe"]

#: Recipe name -> factory. Every factory takes keyword arguments only and returns a
#: ``MultiViewRecipe``.
VIEW_RECIPES: dict[str, Callable[..., MultiViewRecipe]] = {
    "mveb_multicrop": mveb_multicrop,
    "mveb_multicrop_cifar": mveb_multicrop_cifar,
    "two_views": two_views,
    "two_views_cifar": two_views_cifar,
    "asymmetric": asymmetric_two_views,
    "asymmetric_cifar": asymmetric_two_views_cifar,
    "amdim": amdim_views,
    "amdim_cifar": amdim_views_cifar,
    "infomin": infomin_views,
    "infomin_cifar": infomin_views_cifar,
}


def _check_name(name: str) -> None:
    if name not in VIEW_RECIPES:
        raise ValueError(f"unknown view recipe {name!r}; valid names: {', '.join(VIEW_RECIPES)}")


def get_view_recipe(name: str, **kwargs: Any) -> MultiViewRecipe:
    """Build the view recipe ``name`` (a key of :data:`VIEW_RECIPES`) with ``kwargs``.

    Keyword arguments the recipe does not take are left out with a warning naming them and the ones it
    takes: switching ``--data.views`` (or ``--model.class_path`` to a method that needs other views)
    keeps working when a config sets ``view_kwargs`` for another recipe (``n_local`` of MVEB's
    multi-crop with ``two_views``).
    """
    _check_name(name)
    factory = VIEW_RECIPES[name]
    accepted = inspect.signature(factory).parameters
    unknown = sorted(k for k in kwargs if k not in accepted)
    if unknown:
        warnings.warn(
            f"view_kwargs {unknown} are not arguments of view recipe '{name}' and are ignored; it takes "
            f"{sorted(accepted)}",
            UserWarning,
            stacklevel=2,
        )
    return factory(**{k: v for k, v in kwargs.items() if k in accepted})


def default_eval_view(recipe_name: str, **view_kwargs: Any) -> Callable[[Any], torch.Tensor]:
    """The evaluation view that goes with a recipe.

    ``*_cifar`` recipes get :func:`eval_view_cifar` at the recipe's crop size (default 32); the others get
    :func:`eval_view` at the recipe's global crop size (``global_size`` or ``size``, default 224) with the usual 256/224
    resize ratio. The recipe's ``normalize`` is reused when given in ``view_kwargs``.
    """
    _check_name(recipe_name)
    norm_kw = {"normalize": view_kwargs["normalize"]} if "normalize" in view_kwargs else {}
    if recipe_name.endswith("_cifar"):
        return eval_view_cifar(size=int(view_kwargs.get("global_size", view_kwargs.get("size", 32))), **norm_kw)
    size = int(view_kwargs.get("global_size", view_kwargs.get("size", 224)))
    return eval_view(size=size, resize=round(size * 256 / 224), **norm_kw)
