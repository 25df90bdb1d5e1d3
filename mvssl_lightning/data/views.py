"""View recipes: callables ``PIL image -> list[Tensor]`` built from lightly's transforms.

Every recipe returns a :class:`MultiViewRecipe` (a lightly ``MultiViewTransform`` that also reports
``num_views``); lightly's own transforms (``DINOTransform``, ``BYOLTransform``...) can be used in
their place anywhere a recipe is accepted.

Recipes (sources: ``shared/reference/methods.md``):

- :func:`mveb_multicrop` -- MVEB's DINO-style multi-crop (official code ``wlj6816/MVEB``,
  ``project/dataloader.py``; methods.md §1): 2 global crops then ``n_local`` local crops.
- :func:`two_views` -- symmetric SimCLR/BYOL-style pair: the same augmentation for both views.
- :func:`asymmetric_two_views` -- BYOL / MoCo v3 asymmetric pair, as used by MEC (official code
  ``xinliu20/MEC``, ``main_pretrain.py``; methods.md §5).
- ``*_cifar`` variants: 32 px crops, no blur, CIFAR-10 normalisation.
- :func:`eval_view` / :func:`eval_view_cifar` -- deterministic single view for probes and kNN.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Optional

import torch
import torchvision.transforms as T
from lightly.transforms.byol_transform import BYOLView1Transform, BYOLView2Transform
from lightly.transforms.dino_transform import DINOViewTransform
from lightly.transforms.multi_view_transform import MultiViewTransform
from lightly.transforms.utils import IMAGENET_NORMALIZE

from mvssl_lightning.data.views_amdim import amdim_views, amdim_views_cifar

__all__ = [
    "CIFAR10_NORMALIZE",
    "IMAGENET_NORMALIZE",
    "VIEW_RECIPES",
    "MultiViewRecipe",
    "asymmetric_two_views",
    "asymmetric_two_views_cifar",
    "default_eval_view",
    "eval_view",
    "eval_view_cifar",
    "get_view_recipe",
    "mveb_multicrop",
    "mveb_multicrop_cifar",
    "two_views",
    "two_views_cifar",
]

#: Per-channel mean and std of the CIFAR-10 training images (pixels in [0, 1]).
CIFAR10_NORMALIZE = {"mean": [0.4914, 0.4822, 0.4465], "std": [0.2470, 0.2435, 0.2616]}

#: BYOL / MoCo v3 / DINO colour jitter: (brightness, contrast, saturation, hue).
COLOR_JITTER = (0.4, 0.4, 0.2, 0.1)

Normalize = Optional[dict]


class MultiViewRecipe(MultiViewTransform):
    """lightly ``MultiViewTransform`` (one transform per view, ``.transforms``) with ``num_views``."""

    def __init__(self, transforms: Sequence[Callable], name: str = "") -> None:
        super().__init__(list(transforms))
        self.name = name

    @property
    def num_views(self) -> int:
        """How many views one image yields."""
        return len(self.transforms)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, num_views={self.num_views})"


def _pair(x: Sequence[float], what: str) -> tuple[float, float]:
    x = tuple(float(v) for v in x)
    if len(x) != 2:
        raise ValueError(f"{what} must be a pair, got {x}")
    return x  # type: ignore[return-value]


def _jitter(color_jitter: Sequence[float]) -> dict[str, float]:
    b, c, s, h = (float(v) for v in color_jitter)
    return {"cj_strength": 1.0, "cj_bright": b, "cj_contrast": c, "cj_sat": s, "cj_hue": h}


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
        crop_scale=_pair(scale, "scale"),
        hf_prob=hf_prob,
        cj_prob=cj_prob,
        **_jitter(color_jitter),
        random_gray_scale=gray,
        gaussian_blur=blur,
        sigmas=_pair(sigmas, "sigmas"),
        solarization_prob=solarize,
        normalize=normalize,
    )


def _byol_view(
    view: int,
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
    lo, hi = _pair(scale, "scale")
    if hi != 1.0:
        raise ValueError(f"scale must end at 1.0 for this recipe (BYOL-style crops), got {(lo, hi)}")
    cls = BYOLView1Transform if view == 1 else BYOLView2Transform
    return cls(
        input_size=size,
        min_scale=lo,
        cj_prob=cj_prob,
        **_jitter(color_jitter),
        random_gray_scale=gray,
        gaussian_blur=blur,
        solarization_prob=solarize,
        sigmas=_pair(sigmas, "sigmas"),
        hf_prob=hf_prob,
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

    Source: MVEB official code (``wlj6816/MVEB``, ``project/dataloader.py``), methods.md §1. Every
    crop: bicubic RandomResizedCrop, flip p 0.5, ColorJitter(0.4, 0.4, 0.2, 0.1) p 0.8, grayscale
    p 0.2; Gaussian blur (sigma in ``sigmas``) with p ``blur = (global 1, global 2, locals)``;
    solarize with p ``solarize`` on global 2 only; then normalisation.

    Built from lightly ``DINOViewTransform`` with explicit jitter values (lightly's ``DINOTransform``
    does not pass ``cj_strength`` to its second global view).
    """
    b = tuple(float(p) for p in blur)
    if len(b) != 3:
        raise ValueError(f"blur must be (global1, global2, locals) probabilities, got {b}")
    common = dict(
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

    Same as :func:`mveb_multicrop` (methods.md §1) without blur (pointless at 32 px), with solarize
    p 0.2 on global 2 only and CIFAR-10 normalisation.
    """
    recipe = mveb_multicrop(
        global_size=global_size, local_size=local_size, n_local=n_local, global_scale=global_scale,
        local_scale=local_scale, blur=(0.0, 0.0, 0.0), solarize=solarize, color_jitter=color_jitter,
        cj_prob=cj_prob, gray=gray, hf_prob=hf_prob, normalize=normalize,
    )
    recipe.name = "mveb_multicrop_cifar"
    return recipe


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
    """Asymmetric BYOL / MoCo v3 pair, MEC's recipe (``xinliu20/MEC`` ``main_pretrain.py``, methods.md §5).

    Both views: RandomResizedCrop(224, scale 0.2-1), ColorJitter(0.4, 0.4, 0.2, 0.1) p 0.8,
    grayscale p 0.2, flip. Gaussian blur (sigma 0.1-2) p 1.0 on view 1 and 0.1 on view 2; solarize
    p 0 on view 1 and 0.2 on view 2. Built from lightly ``BYOLView1Transform``/``BYOLView2Transform``.
    """
    b, s = _pair(blur, "blur"), _pair(solarize, "solarize")
    common = dict(
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


def _to_tensor_normalize(normalize: Normalize) -> list[Callable]:
    steps: list[Callable] = [T.ToTensor()]
    if normalize:
        steps.append(T.Normalize(mean=normalize["mean"], std=normalize["std"]))
    return steps


def eval_view(size: int = 224, resize: int = 256, normalize: Normalize = IMAGENET_NORMALIZE) -> T.Compose:
    """Deterministic evaluation view: Resize(``resize``), CenterCrop(``size``), ToTensor, Normalize.

    The standard ImageNet linear-evaluation transform (Resize 256, CenterCrop 224; e.g. MEC's
    ``main_lincls.py``, methods.md §5). Returns one tensor ``(3, size, size)``.
    """
    return T.Compose([T.Resize(resize), T.CenterCrop(size), *_to_tensor_normalize(normalize)])


def eval_view_cifar(normalize: Normalize = CIFAR10_NORMALIZE) -> T.Compose:
    """Deterministic CIFAR evaluation view: ToTensor and Normalize only (images stay 32 px)."""
    return T.Compose(_to_tensor_normalize(normalize))


#: Recipe name -> factory. Every factory takes keyword arguments only and returns a
#: ``MultiViewRecipe``.
# views_infomin builds on the recipes above, so it is imported once they exist
from mvssl_lightning.data.views_infomin import infomin_views, infomin_views_cifar  # noqa: E402

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
    """Build the view recipe ``name`` (a key of :data:`VIEW_RECIPES`) with ``kwargs``."""
    _check_name(name)
    return VIEW_RECIPES[name](**kwargs)


def default_eval_view(recipe_name: str, **view_kwargs: Any) -> Callable[[Any], torch.Tensor]:
    """The evaluation view that goes with a recipe.

    ``*_cifar`` recipes get :func:`eval_view_cifar`; the others get :func:`eval_view` at the
    recipe's global crop size (``global_size`` or ``size``, default 224) with the usual 256/224
    resize ratio. The recipe's ``normalize`` is reused when given in ``view_kwargs``.
    """
    _check_name(recipe_name)
    norm_kw = {"normalize": view_kwargs["normalize"]} if "normalize" in view_kwargs else {}
    if recipe_name.endswith("_cifar"):
        return eval_view_cifar(**norm_kw)
    size = int(view_kwargs.get("global_size", view_kwargs.get("size", 224)))
    return eval_view(size=size, resize=round(size * 256 / 224), **norm_kw)
