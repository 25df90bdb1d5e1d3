"""The InfoMin RandAugment policy: its op list, level range and settings, shared by both implementations.

Official code: ``HobbitLong/PyContrast``, ``pycontrast/datasets/RandAugment.py`` (Ross Wightman's
RandAugment with magnitude noise; ``_RAND_TRANSFORMS``, ``_MAX_LEVEL``), configured as
``rand_augment_transform('rand-n2-m10-mstd0.5')`` in ``pycontrast/datasets/util.py``.

Neither a recipe nor a device step: the PIL transform
(:class:`mvssl_lightning.data.views.infomin.InfoMinRandAugment`) and its batched device form
(:class:`mvssl_lightning.data.device.randaugment.DeviceRandAugment`) both subclass
:class:`RandAugmentPolicy`, so they read one op list and check their settings the same way without
importing each other.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

__all__ = ["DEFAULT_FILL", "MAX_LEVEL", "RAND_AUGMENT_OPS", "RandAugmentOp", "RandAugmentPolicy"]

#: One op of the official RandAugment list (``_RAND_TRANSFORMS``).
RandAugmentOp = Literal[
    "AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeTpu", "Solarize", "SolarizeAdd",
    "Color", "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel",
]

#: The op list of the official RandAugment, chosen uniformly with replacement.
RAND_AUGMENT_OPS: tuple[RandAugmentOp, ...] = get_args(RandAugmentOp)

#: Magnitudes live in ``[0, MAX_LEVEL]``.
MAX_LEVEL = 10.0

#: Fill of the geometric ops: the ImageNet mean pixel (official ``img_mean``).
DEFAULT_FILL: tuple[int, int, int] = (124, 116, 104)


class RandAugmentPolicy:
    """The settings of an InfoMin RandAugment, checked (subclasses implement ``__call__``).

    Args:
        num_ops: rounds per image; each picks an op uniformly *with replacement* from ``ops``.
        magnitude: mean of the per-op level ``N(magnitude, magnitude_std^2)``, clipped to ``[0, 10]``.
        magnitude_std: standard deviation of the level (0: always ``magnitude``).
        prob: probability that a picked op is applied.
        ops: the op list (names of :data:`RAND_AUGMENT_OPS`; a name may repeat, as a sampling weight).
        fill: RGB fill of the area that geometric ops bring in from outside the image.

    Raises:
        ValueError: an unknown or empty op list, ``num_ops < 0``, ``prob`` outside ``[0, 1]``,
            ``magnitude_std < 0`` or a fill that is not an RGB triple.
    """

    def __init__(
        self,
        num_ops: int = 2,
        magnitude: float = 10.0,
        magnitude_std: float = 0.5,
        prob: float = 0.5,
        ops: Sequence[RandAugmentOp] = RAND_AUGMENT_OPS,
        fill: Sequence[int] = DEFAULT_FILL,
    ) -> None:
        unknown = [op for op in ops if op not in RAND_AUGMENT_OPS]
        if unknown or not ops:
            raise ValueError(f"unknown or empty RandAugment ops {unknown or list(ops)}; valid: {RAND_AUGMENT_OPS}")
        if num_ops < 0 or not 0.0 <= prob <= 1.0 or magnitude_std < 0:
            raise ValueError(
                f"need num_ops >= 0, 0 <= prob <= 1, magnitude_std >= 0; got {num_ops}, {prob}, {magnitude_std}"
            )
        self.num_ops = int(num_ops)
        self.magnitude = float(magnitude)
        self.magnitude_std = float(magnitude_std)
        self.prob = float(prob)
        self.ops = tuple(ops)
        self.fill = tuple(int(v) for v in fill)
        if len(self.fill) != 3:
            raise ValueError(f"fill must be an RGB triple, got {self.fill}")

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(num_ops={self.num_ops}, magnitude={self.magnitude}, "
                f"magnitude_std={self.magnitude_std}, prob={self.prob}, ops={len(self.ops)})")
