"""What every view recipe family shares: the multi-view container, normalisation statistics, ToTensor + Normalize.

The one place that defines the normalisation constants (:data:`CIFAR10_NORMALIZE`; :data:`IMAGENET_NORMALIZE`
is lightly's, so that our recipes and lightly's transforms normalise alike) and the one ToTensor + Normalize
helper (:func:`to_tensor_normalize`) of the recipes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Optional

import torchvision.transforms as T
from lightly.transforms.multi_view_transform import MultiViewTransform
from lightly.transforms.utils import IMAGENET_NORMALIZE

__all__ = [
    "CIFAR10_NORMALIZE",
    "COLOR_JITTER",
    "IMAGENET_NORMALIZE",
    "MultiViewRecipe",
    "Normalize",
    "check_pair",
    "lightly_jitter_kwargs",
    "to_tensor_normalize",
]

#: Per-channel mean and std of the CIFAR-10 training images (pixels in [0, 1]).
CIFAR10_NORMALIZE = {"mean": [0.4914, 0.4822, 0.4465], "std": [0.2470, 0.2435, 0.2616]}

#: BYOL / MoCo v3 / DINO colour jitter: (brightness, contrast, saturation, hue).
COLOR_JITTER = (0.4, 0.4, 0.2, 0.1)

#: ``{"mean": [...], "std": [...]}`` of a recipe's final ``Normalize``, or ``None`` for no normalisation.
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


def to_tensor_normalize(normalize: Normalize) -> list[Callable]:
    """``[ToTensor()]``, followed by ``Normalize(mean, std)`` unless ``normalize`` is empty or ``None``."""
    steps: list[Callable] = [T.ToTensor()]
    if normalize:
        steps.append(T.Normalize(mean=normalize["mean"], std=normalize["std"]))
    return steps


def check_pair(x: Sequence[float], what: str) -> tuple[float, float]:
    """``x`` as a pair of floats; ``ValueError`` naming ``what`` if it is not a pair."""
    x = tuple(float(v) for v in x)
    if len(x) != 2:
        raise ValueError(f"{what} must be a pair, got {x}")
    return x


def lightly_jitter_kwargs(color_jitter: Sequence[float]) -> dict[str, float]:
    """lightly's view-transform jitter arguments for ColorJitter(b, c, s, h) (``cj_strength`` 1)."""
    b, c, s, h = (float(v) for v in color_jitter)
    return {"cj_strength": 1.0, "cj_bright": b, "cj_contrast": c, "cj_sat": s, "cj_hue": h}
