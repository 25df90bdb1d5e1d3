"""Two-view recipes: the symmetric SimCLR/BYOL-style pair and the asymmetric BYOL / MoCo v3 pair (MEC's).

- :func:`two_views` -- the same augmentation for both views (SimCLR, Chen et al. 2020, with the
  jitter strengths of BYOL, Grill et al. 2020).
- :func:`asymmetric_two_views` -- BYOL / MoCo v3 asymmetric pair, as used by MEC (official code
  ``xinliu20/MEC``, ``main_pretrain.py``).
- ``*_cifar`` variants: 32 px crops, no blur, CIFAR-10 normalisation.

Built from lightly's ``BYOLView1Transform`` / ``BYOLView2Transform``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

from lightly.transforms.byol_transform import BYOLView1Transform, BYOLView2Transform

from mvssl_lightning.data.views.base import (
    CIFAR10_NORMALIZE,
    COLOR_JITTER,
    IMAGENET_NORMALIZE,
    MultiViewRecipe,
    Normalize,
    check_pair,
    lightly_jitter_kwargs,
)

__all__ = ["asymmetric_two_views", "asymmetric_two_views_cifar", "two_views", "two_views_cifar"]


def _byol_view(
    view: Literal[1, 2],
    size: int,
    scale: Sequence[float],
    blur: float,
    solarize: float,
    color_jitter: Sequence[float],
    cj_prob: float,
    gray: float,
    hf_prob: float,
    sigmas: Sequence[float],
    normalize: Normalize,
) -> Callable:
    """One BYOL view: (bilinear) RandomResizedCrop(scale=(min, 1)), flip, jitter, gray, blur, solarize."""
    lo, hi = check_pair(scale, "scale")
    if hi != 1.0:
        raise ValueError(f"scale must end at 1.0 for this recipe (BYOL-style crops), got {(lo, hi)}")
    cls = BYOLView1Transform if view == 1 else BYOLView2Transform
    return cls(
        input_size=size,
        min_scale=lo,
        cj_prob=cj_prob,
        **lightly_jitter_kwargs(color_jitter),
        random_gray_scale=gray,
        gaussian_blur=blur,
        solarization_prob=solarize,
        sigmas=check_pair(sigmas, "sigmas"),
        hf_prob=hf_prob,
        normalize=normalize,
    )


def two_views(
    size: int = 224,
    scale: Sequence[float] = (0.08, 1.0),
    blur: float = 0.5,
    color_jitter: Sequence[float] = COLOR_JITTER,
    cj_prob: float = 0.8,
    gray: float = 0.2,
    hf_prob: float = 0.5,
    sigmas: Sequence[float] = (0.1, 2.0),
    normalize: Normalize = IMAGENET_NORMALIZE,
) -> MultiViewRecipe:
    """Symmetric pair (SimCLR / BYOL style): both views use the same augmentation.

    RandomResizedCrop(``size``, ``scale``), flip, ColorJitter(0.4, 0.4, 0.2, 0.1) p 0.8, grayscale
    p 0.2, Gaussian blur p ``blur`` (0.5, as SimCLR), no solarisation (SimCLR, Chen et al. 2020;
    jitter strengths of BYOL, Grill et al. 2020). Built from lightly ``BYOLView1Transform``.
    """
    view = _byol_view(
        1, size, scale, blur=blur, solarize=0.0, color_jitter=color_jitter, cj_prob=cj_prob,
        gray=gray, hf_prob=hf_prob, sigmas=sigmas, normalize=normalize,
    )
    return MultiViewRecipe([view, view], name="two_views")


def two_views_cifar(
    size: int = 32,
    scale: Sequence[float] = (0.08, 1.0),
    color_jitter: Sequence[float] = COLOR_JITTER,
    cj_prob: float = 0.8,
    gray: float = 0.2,
    hf_prob: float = 0.5,
    normalize: Normalize = CIFAR10_NORMALIZE,
) -> MultiViewRecipe:
    """CIFAR-sized :func:`two_views`: 32 px crops, no blur, CIFAR-10 normalisation."""
    recipe = two_views(
        size=size, scale=scale, blur=0.0, color_jitter=color_jitter, cj_prob=cj_prob, gray=gray,
        hf_prob=hf_prob, normalize=normalize,
    )
    recipe.name = "two_views_cifar"
    return recipe


def asymmetric_two_views(
    size: int = 224,
    scale: Sequence[float] = (0.2, 1.0),
    blur: Sequence[float] = (1.0, 0.1),
    solarize: Sequence[float] = (0.0, 0.2),
    color_jitter: Sequence[float] = COLOR_JITTER,
    cj_prob: float = 0.8,
    gray: float = 0.2,
    hf_prob: float = 0.5,
    sigmas: Sequence[float] = (0.1, 2.0),
    normalize: Normalize = IMAGENET_NORMALIZE,
) -> MultiViewRecipe:
    """Asymmetric BYOL / MoCo v3 pair, MEC's recipe (official code ``xinliu20/MEC``, ``main_pretrain.py``).

    Both views: RandomResizedCrop(224, scale 0.2-1), ColorJitter(0.4, 0.4, 0.2, 0.1) p 0.8,
    grayscale p 0.2, flip. Gaussian blur (sigma 0.1-2) p 1.0 on view 1 and 0.1 on view 2; solarize
    p 0 on view 1 and 0.2 on view 2. Built from lightly ``BYOLView1Transform``/``BYOLView2Transform``.
    """
    b, s = check_pair(blur, "blur"), check_pair(solarize, "solarize")
    common: dict[str, Any] = dict(
        color_jitter=color_jitter, cj_prob=cj_prob, gray=gray, hf_prob=hf_prob, sigmas=sigmas,
        normalize=normalize,
    )
    view1 = _byol_view(1, size, scale, blur=b[0], solarize=s[0], **common)
    view2 = _byol_view(2, size, scale, blur=b[1], solarize=s[1], **common)
    return MultiViewRecipe([view1, view2], name="asymmetric")


def asymmetric_two_views_cifar(
    size: int = 32,
    scale: Sequence[float] = (0.2, 1.0),
    solarize: Sequence[float] = (0.0, 0.2),
    color_jitter: Sequence[float] = COLOR_JITTER,
    cj_prob: float = 0.8,
    gray: float = 0.2,
    hf_prob: float = 0.5,
    normalize: Normalize = CIFAR10_NORMALIZE,
) -> MultiViewRecipe:
    """CIFAR-sized :func:`asymmetric_two_views`: 32 px, no blur, solarize 0 / 0.2, CIFAR-10 norm."""
    recipe = asymmetric_two_views(
        size=size, scale=scale, blur=(0.0, 0.0), solarize=solarize, color_jitter=color_jitter,
        cj_prob=cj_prob, gray=gray, hf_prob=hf_prob, normalize=normalize,
    )
    recipe.name = "asymmetric_cifar"
    return recipe
