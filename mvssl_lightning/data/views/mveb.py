"""MVEB's DINO-style multi-crop: 2 global crops, then ``n_local`` local crops.

Official code: ``wlj6816/MVEB``, ``project/dataloader.py``.  Built from lightly's
``DINOViewTransform`` with explicit jitter values (lightly's ``DINOTransform`` does not pass
``cj_strength`` to its second global view).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lightly.transforms.dino_transform import DINOViewTransform

from mvssl_lightning.data.views.base import (
    CIFAR10_NORMALIZE,
    COLOR_JITTER,
    IMAGENET_NORMALIZE,
    MultiViewRecipe,
    Normalize,
    check_pair,
    lightly_jitter_kwargs,
)

__all__ = ["mveb_multicrop", "mveb_multicrop_cifar"]


def _dino_view(
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
) -> DINOViewTransform:
    """One DINO view: bicubic RandomResizedCrop, flip, jitter, grayscale, blur, solarize, normalise."""
    return DINOViewTransform(
        crop_size=size,
        crop_scale=check_pair(scale, "scale"),
        hf_prob=hf_prob,
        cj_prob=cj_prob,
        **lightly_jitter_kwargs(color_jitter),
        random_gray_scale=gray,
        gaussian_blur=blur,
        sigmas=check_pair(sigmas, "sigmas"),
        solarization_prob=solarize,
        normalize=normalize,
    )


def mveb_multicrop(
    global_size: int = 224,
    local_size: int = 96,
    n_local: int = 6,
    global_scale: Sequence[float] = (0.4, 1.0),
    local_scale: Sequence[float] = (0.05, 0.4),
    blur: Sequence[float] = (1.0, 0.1, 0.5),
    solarize: float = 0.2,
    color_jitter: Sequence[float] = COLOR_JITTER,
    cj_prob: float = 0.8,
    gray: float = 0.2,
    hf_prob: float = 0.5,
    sigmas: Sequence[float] = (0.1, 2.0),
    normalize: Normalize = IMAGENET_NORMALIZE,
) -> MultiViewRecipe:
    """MVEB multi-crop: 2 global crops, then ``n_local`` local crops (DINO augmentation).

    Source: MVEB official code (``wlj6816/MVEB``, ``project/dataloader.py``). Every crop: bicubic
    RandomResizedCrop, flip p 0.5, ColorJitter(0.4, 0.4, 0.2, 0.1) p 0.8, grayscale p 0.2; Gaussian
    blur (sigma in ``sigmas``) with p ``blur = (global 1, global 2, locals)``; solarize with p
    ``solarize`` on global 2 only; then normalisation.
    """
    b = tuple(float(p) for p in blur)
    if len(b) != 3:
        raise ValueError(f"blur must be (global1, global2, locals) probabilities, got {b}")
    common: dict[str, Any] = dict(
        color_jitter=color_jitter, cj_prob=cj_prob, gray=gray, hf_prob=hf_prob, sigmas=sigmas,
        normalize=normalize,
    )
    global1 = _dino_view(global_size, global_scale, blur=b[0], solarize=0.0, **common)
    global2 = _dino_view(global_size, global_scale, blur=b[1], solarize=solarize, **common)
    local = _dino_view(local_size, local_scale, blur=b[2], solarize=0.0, **common)
    return MultiViewRecipe([global1, global2] + [local] * int(n_local), name="mveb_multicrop")


def mveb_multicrop_cifar(
    global_size: int = 32,
    local_size: int = 16,
    n_local: int = 6,
    global_scale: Sequence[float] = (0.2, 1.0),
    local_scale: Sequence[float] = (0.05, 0.4),
    solarize: float = 0.2,
    color_jitter: Sequence[float] = COLOR_JITTER,
    cj_prob: float = 0.8,
    gray: float = 0.2,
    hf_prob: float = 0.5,
    normalize: Normalize = CIFAR10_NORMALIZE,
) -> MultiViewRecipe:
    """CIFAR-sized MVEB multi-crop: 2 globals of 32 px (scale 0.2-1), ``n_local`` locals of 16 px.

    Same as :func:`mveb_multicrop` without blur (pointless at 32 px), with solarize p 0.2 on
    global 2 only and CIFAR-10 normalisation.
    """
    recipe = mveb_multicrop(
        global_size=global_size, local_size=local_size, n_local=n_local, global_scale=global_scale,
        local_scale=local_scale, blur=(0.0, 0.0, 0.0), solarize=solarize, color_jitter=color_jitter,
        cj_prob=cj_prob, gray=gray, hf_prob=hf_prob, normalize=normalize,
    )
    recipe.name = "mveb_multicrop_cifar"
    return recipe
