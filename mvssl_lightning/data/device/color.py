"""Photometric device steps with per-sample parameters: colour jitter, grayscale, Gaussian blur,
solarisation and normalisation, on ``(B, 3, H, W)`` floats in ``[0, 1]``.

Each mirrors one CPU transform of the recipes in ``data/views/`` with the same parameter
distributions:

- :class:`DeviceColorJitter` = ``RandomApply([ColorJitter(b, c, s, h)], p)``: with probability
  ``p``, factors ``U[max(0, 1-b), 1+b]`` (brightness), likewise contrast and saturation,
  ``U[-h, h]`` (hue), applied in a random order per image (``torch.randperm(4)`` in torchvision).
  The op formulas are torchvision's tensor ones: brightness ``x * f``; contrast
  ``f x + (1 - f) mean(gray(x))``; saturation ``f x + (1 - f) gray(x)``; hue rotates H in HSV.
  Each result is clamped to ``[0, 1]``.
- :class:`DeviceGrayscale` = ``RandomGrayscale(p)``: ``0.299 R + 0.587 G + 0.114 B`` on 3 channels.
- :class:`DeviceGaussianBlur` = lightly ``GaussianBlur(sigmas, prob)`` (Pillow radius = sigma,
  edges extended) or torchvision ``GaussianBlur(kernel, sigma)`` in ``RandomApply(p)`` (fixed
  kernel, reflect padding): ``sigma ~ U(sigmas)`` per image, separable Gaussian kernel.  Deviation:
  Pillow approximates the Gaussian with three box blurs; here it is the exact kernel truncated at
  ``3 sigma_max``.
- :class:`DeviceSolarize` = lightly ``RandomSolarization(prob, threshold=128)``: pixels
  ``>= 128/255`` become ``1 - x``.
- :class:`DeviceNormalize` = ``Normalize(mean, std)``.

Samples that take a costly op (hue, blur) are chosen on the CPU when the parameters are drawn, so
the device never waits for an index computation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from mvssl_lightning.data.device.step import DeviceStep, Params, constant

__all__ = [
    "DeviceColorJitter",
    "DeviceGaussianBlur",
    "DeviceGrayscale",
    "DeviceNormalize",
    "DeviceSolarize",
    "adjust_hue",
    "blend",
    "gaussian_blur",
    "grayscale",
]

#: ITU-R 601-2 luma weights (torchvision ``rgb_to_grayscale``, Pillow ``convert("L")``).
LUMA = (0.299, 0.587, 0.114)


def _per_sample(f: Tensor, x: Tensor) -> Tensor:
    return f.to(x.dtype).view(-1, *([1] * (x.dim() - 1)))


def grayscale(x: Tensor) -> Tensor:
    """Luma ``(B, 1, H, W)`` of RGB ``x (B, 3, H, W)``."""
    r, g, b = x.unbind(1)
    return (LUMA[0] * r + LUMA[1] * g + LUMA[2] * b).unsqueeze(1)


def blend(x: Tensor, other: Tensor, factor: Tensor) -> Tensor:
    """``factor x + (1 - factor) other`` per sample (``factor (B,)``), clamped to ``[0, 1]``."""
    f = _per_sample(factor, x)
    return (f * x + (1 - f) * other).clamp_(0, 1)


def adjust_brightness(x: Tensor, factor: Tensor) -> Tensor:
    return (x * _per_sample(factor, x)).clamp_(0, 1)


def adjust_contrast(x: Tensor, factor: Tensor) -> Tensor:
    return blend(x, grayscale(x).mean(dim=(-3, -2, -1), keepdim=True), factor)


def adjust_saturation(x: Tensor, factor: Tensor) -> Tensor:
    return blend(x, grayscale(x), factor)


def _rgb_to_hsv(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    r, g, b = x.unbind(1)
    v, argmax = x.max(dim=1)
    delta = v - x.min(dim=1).values
    safe_delta = torch.where(delta > 0, delta, torch.ones_like(delta))
    s = torch.where(v > 0, delta / torch.where(v > 0, v, torch.ones_like(v)), torch.zeros_like(v))
    h_r = ((g - b) / safe_delta) % 6
    h_g = (b - r) / safe_delta + 2
    h_b = (r - g) / safe_delta + 4
    h = torch.where(argmax == 0, h_r, torch.where(argmax == 1, h_g, h_b))
    h = torch.where(delta > 0, h / 6, torch.zeros_like(h)) % 1.0
    return h, s, v


def _hsv_to_rgb(h: Tensor, s: Tensor, v: Tensor) -> Tensor:
    """``(B, H, W)`` HSV -> ``(B, 3, H, W)`` RGB: channel ``n`` in (5, 3, 1) is
    ``v - v s clamp(min(k, 4 - k), 0, 1)`` with ``k = (n + 6 h) mod 6`` (the closed form of the
    six-sector table)."""
    n = constant((5.0, 3.0, 1.0), h.device, h.dtype).view(1, 3, 1, 1)
    k = (n + 6 * h.unsqueeze(1)) % 6
    ramp = torch.minimum(k, 4 - k).clamp_(0, 1)
    v, s = v.unsqueeze(1), s.unsqueeze(1)
    return v - v * s * ramp


def adjust_hue(x: Tensor, shift: Tensor) -> Tensor:
    """Rotate the hue of ``x (B, 3, H, W)`` by ``shift (B,)`` turns (torchvision ``adjust_hue``)."""
    h, s, v = _rgb_to_hsv(x)
    h = (h + _per_sample(shift, h)) % 1.0
    return _hsv_to_rgb(h, s, v).clamp_(0, 1)


_JITTER_OPS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


class DeviceColorJitter(DeviceStep):
    """``RandomApply([ColorJitter(...)], p)`` with per-sample factors and order.

    Args:
        brightness, contrast, saturation: factor ranges ``(lo, hi)`` (torchvision stores
            ``ColorJitter(b).brightness == (max(0, 1 - b), 1 + b)``), or ``None`` to skip.
        hue: shift range ``(lo, hi)`` in turns, or ``None``.
        p: probability of jittering an image at all.
    """

    def __init__(
        self,
        brightness: Optional[Sequence[float]] = None,
        contrast: Optional[Sequence[float]] = None,
        saturation: Optional[Sequence[float]] = None,
        hue: Optional[Sequence[float]] = None,
        p: float = 1.0,
    ) -> None:
        self.ranges = tuple(
            None if r is None else (float(r[0]), float(r[1])) for r in (brightness, contrast, saturation, hue)
        )
        self.p = float(p)

    @classmethod
    def from_strengths(cls, b: float, c: float, s: float, h: float, p: float = 1.0) -> "DeviceColorJitter":
        """From ``ColorJitter(b, c, s, h)`` strengths (0 = off)."""
        def rng(v: float) -> Optional[tuple[float, float]]:
            return (max(0.0, 1 - v), 1 + v) if v > 0 else None
        return cls(rng(b), rng(c), rng(s), (-h, h) if h > 0 else None, p)

    def sample(self, n: int, generator: torch.Generator) -> Params:
        apply = torch.rand(n, generator=generator) < self.p
        order = torch.rand(n, 4, generator=generator).argsort(dim=1)
        factors = torch.rand(n, 4, generator=generator)
        params: Params = {}
        for op, rng in enumerate(self.ranges):
            if rng is None:
                continue
            factors[:, op] = rng[0] + (rng[1] - rng[0]) * factors[:, op]
            for pos in range(4):
                idx = (apply & (order[:, pos] == op)).nonzero()[:, 0]
                params[f"idx{pos}_{op}"] = idx
                params[f"factor{pos}_{op}"] = factors[idx, op]
        return params

    def apply(self, x: Tensor, params: Params) -> Tensor:
        x = x.clone()
        for pos in range(4):
            for op, rng in enumerate(self.ranges):
                if rng is None:
                    continue
                idx = params[f"idx{pos}_{op}"]
                if idx.numel():
                    x[idx] = _JITTER_OPS[op](x[idx], params[f"factor{pos}_{op}"])
        return x

    def __repr__(self) -> str:
        b, c, s, h = self.ranges
        return f"{type(self).__name__}(brightness={b}, contrast={c}, saturation={s}, hue={h}, p={self.p})"


class DeviceGrayscale(DeviceStep):
    """``RandomGrayscale(p)``: luma replicated on 3 channels with probability ``p``."""

    def __init__(self, p: float) -> None:
        self.p = float(p)

    def sample(self, n: int, generator: torch.Generator) -> Params:
        return {"gray": torch.rand(n, generator=generator) < self.p}

    def apply(self, x: Tensor, params: Params) -> Tensor:
        return torch.where(params["gray"].view(-1, 1, 1, 1), grayscale(x).expand_as(x), x)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(p={self.p})"


def gaussian_blur(
    x: Tensor, sigma: Tensor, radius: int, padding_mode: Literal["replicate", "reflect"] = "replicate"
) -> Tensor:
    """Separable Gaussian blur of each image with its own ``sigma (B,)``, kernel ``2 radius + 1``.

    ``padding_mode``: ``"replicate"`` (edges extended, as Pillow) or ``"reflect"`` (as torchvision).
    """
    n, c, h, w = x.shape
    taps = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (taps / sigma.to(x.dtype).view(-1, 1)) ** 2)
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # (n*c, K)
    y = x.reshape(1, n * c, h, w)
    y = F.pad(y, (radius, radius, 0, 0), mode=padding_mode)
    y = F.conv2d(y, kernel.view(n * c, 1, 1, -1), groups=n * c)
    y = F.pad(y, (0, 0, radius, radius), mode=padding_mode)
    y = F.conv2d(y, kernel.view(n * c, 1, -1, 1), groups=n * c)
    return y.view(n, c, h, w)


class DeviceGaussianBlur(DeviceStep):
    """Gaussian blur with probability ``p`` and ``sigma ~ U(sigmas)`` per image.

    Args:
        p: blur probability.
        sigmas: ``(min, max)`` of sigma in pixels.
        kernel_size: fixed odd kernel (torchvision ``GaussianBlur``; reflect padding) or ``None``
            for Pillow's radius-sigma blur (kernel ``2 ceil(3 sigma_max) + 1``, edges extended).
    """

    def __init__(self, p: float, sigmas: Sequence[float] = (0.1, 2.0), kernel_size: Optional[int] = None) -> None:
        self.p = float(p)
        self.sigmas = (float(sigmas[0]), float(sigmas[1]))
        if kernel_size is not None and kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        self.kernel_size = kernel_size
        self.radius = kernel_size // 2 if kernel_size else max(1, math.ceil(3 * self.sigmas[1]))
        self.padding_mode: Literal["replicate", "reflect"] = "reflect" if kernel_size else "replicate"

    def sample(self, n: int, generator: torch.Generator) -> Params:
        blur = torch.rand(n, generator=generator) < self.p
        sigma = self.sigmas[0] + (self.sigmas[1] - self.sigmas[0]) * torch.rand(n, generator=generator)
        idx = blur.nonzero()[:, 0]
        return {"idx": idx, "sigma": sigma[idx]}

    def apply(self, x: Tensor, params: Params) -> Tensor:
        idx = params["idx"]
        if idx.numel() == 0:
            return x
        radius = min(self.radius, x.shape[-1] - 1, x.shape[-2] - 1)
        x = x.clone()
        x[idx] = gaussian_blur(x[idx], params["sigma"], radius, self.padding_mode)
        return x

    def __repr__(self) -> str:
        return f"{type(self).__name__}(p={self.p}, sigmas={self.sigmas}, kernel_size={self.kernel_size})"


class DeviceSolarize(DeviceStep):
    """Solarise with probability ``p``: pixels ``>= threshold / 255`` become ``1 - x``."""

    def __init__(self, p: float, threshold: float = 128) -> None:
        self.p, self.threshold = float(p), float(threshold) / 255.0

    def sample(self, n: int, generator: torch.Generator) -> Params:
        return {"solarize": torch.rand(n, generator=generator) < self.p}

    def apply(self, x: Tensor, params: Params) -> Tensor:
        mask = params["solarize"].view(-1, 1, 1, 1) & (x >= self.threshold)
        return torch.where(mask, 1 - x, x)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(p={self.p}, threshold={self.threshold * 255:g})"


class DeviceNormalize(DeviceStep):
    """``(x - mean) / std`` per channel (deterministic)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)

    def sample(self, n: int, generator: torch.Generator) -> Params:
        return {}

    def apply(self, x: Tensor, params: Params) -> Tensor:
        mean = constant(self.mean, x.device, x.dtype).view(1, -1, 1, 1)
        std = constant(self.std, x.device, x.dtype).view(1, -1, 1, 1)
        return (x - mean) / std

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mean={self.mean}, std={self.std})"
