"""Device counterparts of torchvision's and lightly's transforms, registered in the device compiler's table.

Imported by :mod:`mvssl_lightning.data.device.recipe`, so these entries exist whenever
:func:`~mvssl_lightning.data.device.recipe.compile_views` does.  The device steps take the **same
parameters**, read from the transform objects themselves, so the CPU and device paths cannot drift
apart.  Both torchvision's v1 and v2 classes are registered (lightly uses both).

Registered here: ``RandomResizedCrop`` (first step of a view; square sizes), ``RandomHorizontalFlip``,
``RandomVerticalFlip``, lightly ``RandomRotate`` (90 degrees), ``ColorJitter`` (plain or in
``RandomApply``), ``RandomGrayscale``, lightly ``GaussianBlur``, torchvision ``GaussianBlur`` in
``RandomApply``, lightly ``RandomSolarization``, ``Normalize``, and the tensor conversions
(``ToTensor``, v2 ``ToImage`` / ``ToDtype``, lightly's ``ToTensor``), which need nothing on the device.
Recipe modules register their own transforms (see :mod:`mvssl_lightning.data.device.registry`).
"""

from __future__ import annotations

from typing import Any, Optional

import torchvision.transforms as T
import torchvision.transforms.v2 as T2
from lightly.transforms.gaussian_blur import GaussianBlur as LightlyBlur
from lightly.transforms.rotation import RandomRotate
from lightly.transforms.solarize import RandomSolarization
from lightly.transforms.torchvision_v2_compatibility import ToTensor as LightlyToTensor

from mvssl_lightning.data.device.color import (
    DeviceColorJitter,
    DeviceGaussianBlur,
    DeviceGrayscale,
    DeviceNormalize,
    DeviceSolarize,
)
from mvssl_lightning.data.device.geometry import DeviceFlip, DeviceResizedCrop, DeviceRotate90
from mvssl_lightning.data.device.registry import register_device_transform, unsupported

__all__: list[str] = []


def _square_size(t: Any) -> int:
    size = t.size if isinstance(t.size, (tuple, list)) else (t.size, t.size)
    if len(size) != 2 or size[0] != size[1]:
        raise unsupported(t, "only square output sizes are supported")
    return int(size[0])


def _resized_crop(t: Any) -> DeviceResizedCrop:
    bicubic = t.interpolation in (T.InterpolationMode.BICUBIC, "bicubic")
    return DeviceResizedCrop(_square_size(t), t.scale, t.ratio, bicubic=bicubic)


def _hflip(t: Any) -> Optional[DeviceFlip]:
    return DeviceFlip(t.p, dim=-1) if t.p > 0 else None


def _vflip(t: Any) -> Optional[DeviceFlip]:
    return DeviceFlip(t.p, dim=-2) if t.p > 0 else None


def _rotate90(t: RandomRotate) -> Optional[DeviceRotate90]:
    if t.prob <= 0:
        return None
    if t.angle % 360 != 90:
        raise unsupported(t, "only 90-degree rotations")
    return DeviceRotate90(t.prob)


def _color_jitter(t: Any, p: float = 1.0) -> DeviceColorJitter:
    return DeviceColorJitter(t.brightness, t.contrast, t.saturation, t.hue, p)


def _grayscale(t: Any) -> Optional[DeviceGrayscale]:
    return DeviceGrayscale(t.p) if t.p > 0 else None


def _lightly_blur(t: LightlyBlur) -> Optional[DeviceGaussianBlur]:
    return DeviceGaussianBlur(t.prob, t.sigmas) if t.prob > 0 else None


def _torchvision_blur(t: Any, p: float) -> DeviceGaussianBlur:
    return DeviceGaussianBlur(p, t.sigma, kernel_size=int(t.kernel_size[0]))


def _solarize(t: RandomSolarization) -> Optional[DeviceSolarize]:
    return DeviceSolarize(t.prob, t.threshold) if t.prob > 0 else None


def _normalize(t: Any) -> DeviceNormalize:
    return DeviceNormalize(t.mean, t.std)


def _conversion(t: Any) -> None:
    """PIL image -> float tensor in [0, 1]: the device batch already is one."""
    return None


_CONVERSIONS = tuple(
    c for c in (T.ToTensor, getattr(T2, "ToTensor", None), T2.ToImage, T2.ToDtype, LightlyToTensor) if c is not None
)

register_device_transform((T.RandomResizedCrop, T2.RandomResizedCrop), _resized_crop)
register_device_transform((T.RandomHorizontalFlip, T2.RandomHorizontalFlip), _hflip)
register_device_transform((T.RandomVerticalFlip, T2.RandomVerticalFlip), _vflip)
register_device_transform(RandomRotate, _rotate90)
register_device_transform((T.ColorJitter, T2.ColorJitter), _color_jitter)
register_device_transform((T.ColorJitter, T2.ColorJitter), _color_jitter, in_random_apply=True)
register_device_transform((T.RandomGrayscale, T2.RandomGrayscale), _grayscale)
register_device_transform(LightlyBlur, _lightly_blur)
register_device_transform((T.GaussianBlur, T2.GaussianBlur), _torchvision_blur, in_random_apply=True)
register_device_transform(RandomSolarization, _solarize)
register_device_transform((T.Normalize, T2.Normalize), _normalize)
register_device_transform(_CONVERSIONS, _conversion)
