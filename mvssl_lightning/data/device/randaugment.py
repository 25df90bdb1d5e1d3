"""InfoMin RandAugment on a batch, with per-sample random ops (the device form of ``InfoMinRandAugment``).

Computes, for every image of ``x (B, 3, H, W)`` (floats in ``[0, 1]``) independently, what
:class:`mvssl_lightning.data.views.infomin.InfoMinRandAugment` computes on one PIL image: for each of
``num_ops`` rounds an op chosen uniformly *with replacement* from ``ops``, applied with probability
``prob`` at magnitude ``level ~ N(magnitude, magnitude_std^2)`` clipped to ``[0, 10]``; signed ops
are negated with p 0.5; geometric ops resample bilinear or bicubic with p 0.5 each and fill the
area whose source lies outside the image with ``fill``.  The level -> argument maps are those of
:func:`~mvssl_lightning.data.views.infomin.rand_augment_op` (official PyContrast
``pycontrast/datasets/RandAugment.py``, Ross Wightman's RandAugment with magnitude noise,
``rand-n2-m10-mstd0.5``), with ``r = level / 10``.

Batching: the parameters are drawn on the CPU (:meth:`DeviceRandAugment.sample`); in each round
(rounds run in sequence), every op gathers the samples that chose it and are applied, transforms
that subset in one vectorised call and scatters it back.  The five geometric ops of a round share
one resampling call: each sample gets its own PIL-convention affine matrix.

How each op reproduces PIL (inputs quantised to 256 levels give PIL's result up to PIL's uint8
rounding):

* ``AutoContrast``: per-channel ``(x - min) / (max - min)``, identity where ``max <= min``
  (PIL ``ImageOps.autocontrast``, cutoff 0; PIL truncates ``i * 255 / (hi - lo)`` to an integer).
* ``Equalize``: PIL's ``ImageOps.equalize`` LUT, exactly (integer arithmetic) on the 256-level
  image ``round(255 x)``; batched histograms by one ``bincount``.
* ``Invert``: ``1 - x``.  ``PosterizeTpu``: ``round(255 x)`` with the low ``8 - int(4 r)`` bits
  cleared.  ``Solarize``: ``1 - x`` where ``round(255 x) >= int(256 r)``.  ``SolarizeAdd``:
  ``+ int(110 r) / 255`` (clipped at 1) where ``round(255 x) < 128``.
* ``Color`` / ``Contrast`` / ``Brightness`` / ``Sharpness`` (``ImageEnhance``, factor
  ``f = 1.8 r + 0.1``): ``clip(d + f (x - d), 0, 1)`` with ``d`` the grayscale image
  (``0.299 R + 0.587 G + 0.114 B``), the mean grey (as PIL: the mean of the grayscale image
  rounded to 256 levels, itself rounded to a level: ``int(mean + 0.5)``), black, PIL's ``SMOOTH``
  filter (3 x 3 kernel ``[[1,1,1],[1,5,1],[1,1,1]] / 13``, one-pixel border left unchanged).
* ``Rotate`` (``sign * 30 r`` degrees counter-clockwise about ``(W/2, H/2)``), ``ShearX/Y``
  (``sign * 0.3 r``), ``TranslateX/YRel`` (``sign * 0.45 r`` of the width / height): PIL's affine
  matrices, which map output to input coordinates, with PIL's pixel-centre convention (centres at
  ``i + 0.5``).  An output pixel whose source point falls outside ``[0, W) x [0, H)`` takes
  ``fill / 255``; inside, interpolation clamps to the border pixels, as PIL.  Bilinear runs through
  ``grid_sample`` (``align_corners=False``, border padding, which is the same clamped bilinear);
  bicubic is PIL's own cubic-convolution kernel (``a = -1``, not ``grid_sample``'s ``a = -0.75``)
  gathered as 16 taps, clamped to ``[0, 1]``.

Deviations from the PIL path: the image stays float between ops (PIL rounds, and for blends,
interpolation and the grayscale conversion truncates, to uint8 after every op: differences are
about half a grey level per op); AutoContrast stretches the float min/max without PIL's integer
truncation; the level -> integer argument maps (``int(4 r)`` ...) are computed in float32 (PIL:
float64), which can differ only for levels within float32 rounding of a step boundary.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from mvssl_lightning.data.device.color import blend, grayscale
from mvssl_lightning.data.device.step import DeviceStep, Params, constant, upload
from mvssl_lightning.data.randaugment_policy import MAX_LEVEL, RAND_AUGMENT_OPS, RandAugmentOp, RandAugmentPolicy

__all__ = ["DeviceRandAugment", "GEOMETRIC_OPS", "SIGNED_OPS"]

#: Ops that resample the image through an affine map (bilinear / bicubic, filled outside).
GEOMETRIC_OPS: tuple[RandAugmentOp, ...] = ("Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")
#: Ops whose argument is negated with p 0.5 (the geometric ones).
SIGNED_OPS: tuple[RandAugmentOp, ...] = GEOMETRIC_OPS

_CODE = {name: i for i, name in enumerate(RAND_AUGMENT_OPS)}


# ---------------------------------------------------------------------------------------------
# helpers (private; shared-helper candidates)
# ---------------------------------------------------------------------------------------------


def _blend(degenerate: Tensor, x: Tensor, factor: Tensor) -> Tensor:
    """PIL ``Image.blend(degenerate, x, factor)`` clipped to ``[0, 1]``; ``factor (n,)`` per sample."""
    return blend(x, degenerate, factor)


def _levels(x: Tensor) -> Tensor:
    """The 256-level (uint8) image ``round(255 x)`` as int64."""
    return torch.round(x * 255.0).clamp_(0, 255).long()


def _smooth(x: Tensor) -> Tensor:
    """PIL ``ImageFilter.SMOOTH``: 3 x 3 ``[[1,1,1],[1,5,1],[1,1,1]] / 13``, border pixels unchanged."""
    h, w = x.shape[-2:]
    if h < 3 or w < 3:
        return x.clone()
    k = torch.ones(3, 3, dtype=x.dtype, device=x.device)
    k[1, 1] = 5.0
    k = (k / 13.0).expand(3, 1, 3, 3)
    inner = F.conv2d(x, k, groups=3)
    out = x.clone()
    out[..., 1:-1, 1:-1] = inner
    return out


def _autocontrast(x: Tensor) -> Tensor:
    lo = x.amin(dim=(2, 3), keepdim=True)
    hi = x.amax(dim=(2, 3), keepdim=True)
    span = hi - lo
    ok = span > 0
    out = (x - lo) / torch.where(ok, span, torch.ones_like(span))
    return torch.where(ok, out, x).clamp_(0.0, 1.0)


def _equalize(x: Tensor) -> Tensor:
    """PIL ``ImageOps.equalize`` per channel on ``round(255 x)``, in integer arithmetic."""
    n, c, h, w = x.shape
    q = _levels(x).reshape(n * c, h * w)  # reshape: the views of a batch may be non-contiguous
    rows = n * c
    offsets = torch.arange(rows, device=x.device).view(-1, 1) * 256
    hist = torch.bincount((q + offsets).view(-1), minlength=rows * 256).view(rows, 256)
    levels = torch.arange(256, device=x.device).expand(rows, 256)
    present = hist > 0
    last = torch.where(present, levels, torch.full_like(levels, -1)).amax(1, keepdim=True)
    h_last = hist.gather(1, last.clamp(min=0))
    step = torch.div(h * w - h_last, 255, rounding_mode="floor")
    cum = hist.cumsum(1) - hist  # pixels below each level
    lut = torch.div(torch.div(step, 2, rounding_mode="floor") + cum, step.clamp(min=1), rounding_mode="floor")
    lut = lut.clamp_(0, 255)
    identity = (present.sum(1, keepdim=True) <= 1) | (step == 0)
    lut = torch.where(identity, levels, lut)
    return (lut.gather(1, q).to(x.dtype) / 255.0).view(n, c, h, w)


def _posterize(x: Tensor, r: Tensor) -> Tensor:
    bits = torch.floor(4.0 * r).long().clamp(0, 8).view(-1, 1, 1, 1)
    mask = (255 << (8 - bits)) & 255
    out = (_levels(x) & mask).to(x.dtype) / 255.0
    return torch.where(bits >= 8, x, out)


def _solarize(x: Tensor, r: Tensor) -> Tensor:
    threshold = torch.floor(256.0 * r).view(-1, 1, 1, 1)
    return torch.where(_levels(x) >= threshold, 1.0 - x, x)


def _solarize_add(x: Tensor, r: Tensor) -> Tensor:
    add = torch.floor(110.0 * r).view(-1, 1, 1, 1) / 255.0
    return torch.where(_levels(x) < 128, (x + add).clamp_(max=1.0), x)


def _geometric_matrices(code: Tensor, r: Tensor, sign: Tensor, h: int, w: int) -> Tensor:
    """PIL affine matrices ``(n, 2, 3)`` mapping output to input pixel coordinates."""
    n = code.shape[0]
    a = torch.zeros(n, 2, 3, dtype=torch.float32, device=code.device)
    a[:, 0, 0] = 1.0
    a[:, 1, 1] = 1.0
    # Rotate: PIL img.rotate(angle): input = M (out - c) + c, M = [[cos t, sin t], [-sin t, cos t]],
    # t = -radians(angle), c = (w / 2, h / 2).
    rot = code == _CODE["Rotate"]
    t = -torch.deg2rad(sign * 30.0 * r)
    cos, sin = torch.cos(t), torch.sin(t)
    cx, cy = w / 2.0, h / 2.0
    rot_m = torch.stack([
        torch.stack([cos, sin, cx - cos * cx - sin * cy], -1),
        torch.stack([-sin, cos, cy + sin * cx - cos * cy], -1),
    ], 1)
    a = torch.where(rot.view(-1, 1, 1), rot_m, a)
    shear = sign * 0.3 * r
    a[:, 0, 1] = torch.where(code == _CODE["ShearX"], shear, a[:, 0, 1])
    a[:, 1, 0] = torch.where(code == _CODE["ShearY"], shear, a[:, 1, 0])
    shift = sign * 0.45 * r
    a[:, 0, 2] = torch.where(code == _CODE["TranslateXRel"], shift * w, a[:, 0, 2])
    a[:, 1, 2] = torch.where(code == _CODE["TranslateYRel"], shift * h, a[:, 1, 2])
    return a


def _cubic_weights(d: Tensor) -> Tensor:
    """PIL's bicubic weights (cubic convolution, a = -1) of the taps at -1, 0, 1, 2: ``(..., 4)``."""
    d2, d3 = d * d, d * d * d
    return torch.stack([-d + 2 * d2 - d3, 1 - 2 * d2 + d3, d + d2 - d3, -d2 + d3], -1)


def _bicubic_pil(x: Tensor, xs: Tensor, ys: Tensor) -> Tensor:
    """Sample ``x (n, C, H, W)`` at pixel coordinates ``xs, ys (n, H, W)`` (centres at i + 0.5).

    PIL's bicubic: taps at ``floor(p - 0.5) - 1 .. + 2`` clamped to the image, kernel a = -1.
    """
    n, c, h, w = x.shape
    px, py = xs - 0.5, ys - 0.5
    x0, y0 = torch.floor(px), torch.floor(py)
    wx, wy = _cubic_weights(px - x0), _cubic_weights(py - y0)  # (n, H, W, 4)
    x0, y0 = x0.long(), y0.long()
    flat = x.reshape(n, c, h * w)
    out = torch.zeros_like(flat)
    for j in range(4):
        iy = (y0 + (j - 1)).clamp_(0, h - 1) * w
        for i in range(4):
            ix = (x0 + (i - 1)).clamp_(0, w - 1)
            idx = (iy + ix).view(n, 1, h * w).expand(n, c, h * w)
            wt = (wy[..., j] * wx[..., i]).view(n, 1, h * w)
            out += wt * flat.gather(2, idx)
    return out.view(n, c, h, w).clamp_(0.0, 1.0)


def _affine_pil(x: Tensor, a: Tensor, lin: Tensor, cub: Tensor, fill: Tensor) -> Tensor:
    """PIL ``transform(AFFINE)`` of every image of ``x`` with its own matrix ``a (n, 2, 3)``.

    ``lin`` / ``cub``: indices of the samples resampled bilinear / bicubic; out-of-image sources
    take ``fill (3,)``.
    """
    n, c, h, w = x.shape
    dev = x.device
    xc = torch.arange(w, device=dev, dtype=torch.float32) + 0.5
    yc = torch.arange(h, device=dev, dtype=torch.float32) + 0.5
    yy, xx = torch.meshgrid(yc, xc, indexing="ij")
    a = a.to(torch.float32)
    xs = a[:, 0, 0, None, None] * xx + a[:, 0, 1, None, None] * yy + a[:, 0, 2, None, None]
    ys = a[:, 1, 0, None, None] * xx + a[:, 1, 1, None, None] * yy + a[:, 1, 2, None, None]
    inside = (xs >= 0) & (xs < w) & (ys >= 0) & (ys < h)
    out = torch.empty_like(x)
    if lin.numel():
        # grid_sample with align_corners=False: pixel coordinate p <-> normalised 2 p / size - 1.
        grid = torch.stack([2.0 * xs[lin] / w - 1.0, 2.0 * ys[lin] / h - 1.0], -1)
        out[lin] = F.grid_sample(x[lin], grid.to(x.dtype), mode="bilinear", padding_mode="border",
                                 align_corners=False)
    if cub.numel():
        out[cub] = _bicubic_pil(x[cub], xs[cub], ys[cub])
    return torch.where(inside.unsqueeze(1), out, fill.to(x.dtype).view(1, c, 1, 1))


# ---------------------------------------------------------------------------------------------
# the step
# ---------------------------------------------------------------------------------------------


class DeviceRandAugment(DeviceStep, RandAugmentPolicy):
    """Batched InfoMin RandAugment (``rand-n2-m10-mstd0.5``): see the module docstring.

    Args and their checks are those of :class:`~mvssl_lightning.data.randaugment_policy.RandAugmentPolicy`
    (shared with the PIL ``InfoMinRandAugment``; only ``__call__`` differs: batched tensors instead of
    one PIL image).

    Parameters (:meth:`sample`), each ``(n, num_ops)``: ``op`` (int64 index into ``ops``),
    ``apply`` (bool, p ``prob``), ``level`` (float32, clipped normal), ``sign`` (float32 +-1, p 0.5
    each; used by the signed ops only), ``bicubic`` (bool, p 0.5; used by the geometric ops only).
    """

    @classmethod
    def from_cpu(cls, t: Any) -> "DeviceRandAugment":
        """The device step with the settings of a CPU RandAugment ``t``.

        Reads ``t``'s public attributes ``num_ops``, ``magnitude``, ``magnitude_std``, ``prob``, ``ops``
        and ``fill`` (those of any :class:`RandAugmentPolicy`, e.g. the PIL ``InfoMinRandAugment``,
        which registers this function as its device compiler).
        """
        return cls(t.num_ops, t.magnitude, t.magnitude_std, t.prob, t.ops, t.fill)

    def sample(self, n: int, generator: torch.Generator) -> Params:
        shape = (n, self.num_ops)
        op = torch.randint(len(self.ops), shape, generator=generator)
        apply = torch.rand(shape, generator=generator) < self.prob
        level = torch.full(shape, self.magnitude)
        if self.magnitude_std > 0:
            level = level + self.magnitude_std * torch.randn(shape, generator=generator)
        level = level.clamp(0.0, MAX_LEVEL).to(torch.float32)
        sign = torch.where(torch.rand(shape, generator=generator) < 0.5, -1.0, 1.0).to(torch.float32)
        bicubic = torch.rand(shape, generator=generator) < 0.5
        params = {"op": op, "apply": apply, "level": level, "sign": sign, "bicubic": bicubic}
        params.update(self._selections(params))
        return params

    def _selections(self, params: Params) -> Params:
        """Which samples take which op in each round, as index tensors computed on the CPU.

        Drawn with the parameters, so that ``apply`` never asks the device which samples to take
        (no host synchronisation on CUDA).  Keys: ``idx{k}_{code}`` (pointwise ops), ``geo{k}``
        (geometric ops) and, within ``geo{k}``, ``lin{k}`` / ``cub{k}`` (bilinear / bicubic).
        """
        codes = torch.tensor([_CODE[name] for name in self.ops])
        geometric = torch.tensor([_CODE[name] for name in GEOMETRIC_OPS])
        out: Params = {}
        for k in range(params["op"].shape[1]):
            code = codes[params["op"][:, k].cpu()]
            on = params["apply"][:, k].cpu()
            for c in sorted({_CODE[name] for name in self.ops} - set(geometric.tolist())):
                out[f"idx{k}_{c}"] = torch.nonzero(on & (code == c)).view(-1)
            geo = torch.nonzero(on & torch.isin(code, geometric)).view(-1)
            cub = params["bicubic"][:, k].cpu()[geo]
            out[f"geo{k}"] = geo
            out[f"lin{k}"] = torch.nonzero(~cub).view(-1)
            out[f"cub{k}"] = torch.nonzero(cub).view(-1)
        return out

    def apply(self, x: Tensor, params: Params) -> Tensor:
        if x.shape[0] == 0 or self.num_ops == 0:
            return x
        dev = x.device
        if "geo0" not in params:  # parameters built by hand: select on the CPU once
            params = {**params, **{k: upload(v, dev) for k, v in self._selections(params).items()}}
        codes = constant([_CODE[name] for name in self.ops], dev, torch.int64)
        fill = constant(self.fill, dev, torch.float32) / 255.0
        out = x.clone()
        for k in range(params["op"].shape[1]):
            code = codes[upload(params["op"][:, k], dev)]
            r = upload(params["level"][:, k], dev).float().clamp(0.0, MAX_LEVEL) / MAX_LEVEL
            sign = upload(params["sign"][:, k], dev).float()
            for key, idx in params.items():
                if key.startswith(f"idx{k}_") and idx.numel():
                    name = RAND_AUGMENT_OPS[int(key.rpartition("_")[2])]
                    out[idx] = self._pointwise(name, out[idx], r[idx])
            idx = params[f"geo{k}"]
            if idx.numel():
                sub = out[idx]
                h, w = sub.shape[-2:]
                a = _geometric_matrices(code[idx], r[idx], sign[idx], h, w)
                out[idx] = _affine_pil(sub, a, params[f"lin{k}"], params[f"cub{k}"], fill)
        return out

    @staticmethod
    def _pointwise(name: str, x: Tensor, r: Tensor) -> Tensor:
        """The non-geometric op ``name`` on the subset ``x (k, 3, H, W)`` with ``r = level / 10 (k,)``."""
        if name == "AutoContrast":
            return _autocontrast(x)
        if name == "Equalize":
            return _equalize(x)
        if name == "Invert":
            return 1.0 - x
        if name == "PosterizeTpu":
            return _posterize(x, r)
        if name == "Solarize":
            return _solarize(x, r)
        if name == "SolarizeAdd":
            return _solarize_add(x, r)
        factor = 1.8 * r + 0.1
        if name == "Color":
            return _blend(grayscale(x), x, factor)
        if name == "Contrast":
            # PIL: int(mean of the uint8 grayscale image + 0.5)
            mean = torch.round(grayscale(x) * 255.0).mean(dim=(1, 2, 3), keepdim=True)
            return _blend(torch.floor(mean + 0.5) / 255.0, x, factor)
        if name == "Brightness":
            return _blend(torch.zeros_like(x), x, factor)
        if name == "Sharpness":
            return _blend(_smooth(x), x, factor)
        raise ValueError(f"unknown RandAugment op {name!r}")
