"""Geometric device steps: random resized crop (one fused resample), flips, 90-degree rotation,
reflect-padded translation and integer patch crops.

Random resized crop follows ``torchvision.transforms.RandomResizedCrop.get_params`` per image:
up to 10 attempts of ``area ~ U(scale) * H * W``, ``log(aspect) ~ U(log ratio)``,
``w = round(sqrt(area * aspect))``, ``h = round(sqrt(area / aspect))``; the first attempt that fits
is placed uniformly (``top ~ U{0..H-h}``, ``left ~ U{0..W-w}``); if none fits, the central crop
with the aspect ratio clamped to ``ratio``.  All attempts are drawn at once (the distribution of the
accepted crop is the same).

The crop and the resize are one ``torchvision.ops.roi_align`` call (``aligned=True``, adaptive
sampling): each output pixel averages ``ceil(crop / size)^2`` bilinear samples of its footprint, so
downscaling is antialiased like Pillow's resize.  Views whose CPU crop is bicubic (DINO / MVEB)
enlarge small crops with Pillow's bicubic filter instead (:func:`bicubic_upsampled_crops`, 16
gathered taps); deviation: their shrinking crops stay area-averaged bilinear (Pillow: widened
bicubic).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor
from torchvision.ops import roi_align

from mvssl_lightning.data.device.step import DeviceStep, Params, upload

__all__ = [
    "DeviceFlip",
    "DeviceResizedCrop",
    "DeviceRotate90",
    "DeviceTranslateReflect",
    "crop_patches",
    "bicubic_upsampled_crops",
    "resized_crops",
    "sample_crop_boxes",
]

#: Bytes of float32 source pixels converted at once by :func:`resized_crops`.
SOURCE_CHUNK_BYTES = 512 * 2**20


def _uniform(shape: Sequence[int], lo: float, hi: float, generator: torch.Generator) -> Tensor:
    return lo + (hi - lo) * torch.rand(*shape, generator=generator, dtype=torch.float64)


def _randint_upto(high: Tensor, generator: torch.Generator) -> Tensor:
    """Per-element integer uniform in ``{0, ..., high}`` (``high`` int64 >= 0)."""
    u = torch.rand(high.shape, generator=generator, dtype=torch.float64)
    return torch.minimum((u * (high + 1).double()).floor().long(), high)


def sample_crop_boxes(
    heights: Tensor,
    widths: Tensor,
    scale: Sequence[float],
    ratio: Sequence[float],
    generator: torch.Generator,
    attempts: int = 10,
) -> Tensor:
    """``RandomResizedCrop`` boxes ``(n, 4)`` int64 ``[top, left, h, w]`` for images of the given sizes."""
    heights, widths = heights.long().cpu(), widths.long().cpu()
    n = heights.shape[0]
    area = (heights * widths).double()[:, None]
    target = area * _uniform((n, attempts), scale[0], scale[1], generator)
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(_uniform((n, attempts), log_lo, log_hi, generator))
    w = torch.round(torch.sqrt(target * aspect)).long()
    h = torch.round(torch.sqrt(target / aspect)).long()
    fits = (w > 0) & (w <= widths[:, None]) & (h > 0) & (h <= heights[:, None])
    first = fits.long().argmax(dim=1, keepdim=True)
    found = fits.any(dim=1)
    w, h = w.gather(1, first)[:, 0], h.gather(1, first)[:, 0]

    # central fallback with the aspect ratio clamped to `ratio`
    in_ratio = widths.double() / heights.double()
    lo_r, hi_r = min(ratio), max(ratio)
    fw = torch.where(in_ratio > hi_r, torch.round(heights * hi_r).long(), widths)
    fh = torch.where(in_ratio < lo_r, torch.round(widths / lo_r).long(), heights)
    w, h = torch.where(found, w, fw), torch.where(found, h, fh)
    top = torch.where(found, _randint_upto(heights - h, generator), (heights - h) // 2)
    left = torch.where(found, _randint_upto(widths - w, generator), (widths - w) // 2)
    return torch.stack([top, left, h, w], dim=1)


def _cubic(d: Tensor) -> Tensor:
    """Pillow's bicubic filter (Keys, a = -0.5) at distances ``d``."""
    d = d.abs()
    near = (1.5 * d - 2.5) * d * d + 1
    far = ((-0.5 * d + 2.5) * d - 4) * d + 2
    return torch.where(d < 1, near, torch.where(d < 2, far, torch.zeros_like(d)))


def _upsample_taps(start: Tensor, length: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """Source indices and weights ``(K, size, 4)`` of Pillow's bicubic resize of ``length -> size``
    pixels (``length <= size``) starting at ``start``: the taps within the crop, renormalised."""
    centre = (torch.arange(size, dtype=torch.float64) + 0.5)[None] * (length.double() / size)[:, None]
    first = torch.floor(centre - 0.5).long()[..., None] - 1 + torch.arange(4)  # (K, size, 4)
    weight = _cubic(first.double() + 0.5 - centre[..., None])
    weight = torch.where((first >= 0) & (first < length[:, None, None]), weight, torch.zeros_like(weight))
    weight = weight / weight.sum(-1, keepdim=True)
    index = start[:, None, None] + first.clamp(min=0).minimum(length[:, None, None] - 1)
    return index, weight.float()


def bicubic_upsampled_crops(src: Tensor, boxes: Tensor, index: Tensor, size: int) -> Tensor:
    """Crops no larger than ``size`` on either side, enlarged like ``PIL.resize(BICUBIC)`` of the crop.

    Pillow resizes horizontally, rounds to uint8, then vertically; both passes are reproduced here
    (for uint8 sources) with the same taps and renormalised weights.  Returns
    ``(K, 3, size, size)`` float32 (uint8 sources: in ``[0, 1]``).
    """
    top, left, h, w = boxes.cpu().long().unbind(1)
    rows, wy = (upload(t, src.device) for t in _upsample_taps(top, h, size))
    cols, wx = (upload(t, src.device) for t in _upsample_taps(left, w, size))
    b = upload(index, src.device).view(-1, 1, 1)
    hwc = src.permute(0, 2, 3, 1)
    is_u8 = src.dtype == torch.uint8
    passes = []  # horizontal pass on each of the 4 tapped rows of every output row
    for a in range(4):
        row = torch.zeros(b.shape[0], size, size, src.shape[1], device=src.device)
        for c in range(4):
            row += wx[:, None, :, c, None] * hwc[b, rows[:, :, a, None], cols[:, None, :, c]].float()
        passes.append(row.add_(0.5).floor_().clamp_(0, 255) if is_u8 else row)
    out = wy[:, :, 0, None, None] * passes[0]
    for a in range(1, 4):
        out = out + wy[:, :, a, None, None] * passes[a]
    if is_u8:
        out = out.add_(0.5).floor_().clamp_(0, 255) / 255.0
    return out.permute(0, 3, 1, 2).contiguous()


def resized_crops(src: Tensor, boxes: Tensor, index: Tensor, size: int, bicubic: bool = False) -> Tensor:
    """Crop ``boxes`` (``[top, left, h, w]``) of images ``src[index]`` and resize them to ``size``.

    Args:
        src: ``(B, 3, H, W)`` uint8 or float images (smaller images padded at the bottom/right).
        boxes: ``(K, 4)`` crops in pixels; ``index``: ``(K,)`` source image of each crop.
        size: output side.
        bicubic: enlarge crops that fit in ``size`` with Pillow's bicubic filter (the DINO/MVEB
            views' ``InterpolationMode.BICUBIC``); crops that shrink keep the area-averaged bilinear
            resample either way.

    Returns ``(K, 3, size, size)`` float32 in the source's value range (uint8 sources: ``[0, 1]``).
    Float conversion runs in chunks of images so that large sources stay within
    :data:`SOURCE_CHUNK_BYTES`.
    """
    if bicubic:
        boxes, index = boxes.cpu(), index.cpu()
        up = (boxes[:, 2] <= size) & (boxes[:, 3] <= size)
        if bool(up.all()):
            return bicubic_upsampled_crops(src, boxes, index, size)
        out = resized_crops(src, boxes, index, size)
        if bool(up.any()):
            sel = up.nonzero()[:, 0]
            out[upload(sel, src.device)] = bicubic_upsampled_crops(src, boxes[sel], index[sel], size)
        return out
    boxes, index = boxes.cpu().float(), index.cpu()
    out = src.new_empty((boxes.shape[0], src.shape[1], size, size), dtype=torch.float32)
    per_image = src[0].numel() * 4
    chunk = max(1, SOURCE_CHUNK_BYTES // max(per_image, 1))
    scale = 1.0 / 255.0 if src.dtype == torch.uint8 else 1.0
    for start in range(0, src.shape[0], chunk):
        sel = ((index >= start) & (index < start + chunk)).nonzero()[:, 0]  # on the CPU: no device sync
        if sel.numel() == 0:
            continue
        part = src[start:start + chunk].float().mul_(scale)
        top, left, h, w = boxes[sel].unbind(1)
        rois = torch.stack([(index[sel] - start).float(), left, top, left + w, top + h], dim=1)
        crops = roi_align(part, upload(rois, src.device), output_size=size, spatial_scale=1.0,
                          sampling_ratio=-1, aligned=True)
        if sel.numel() == boxes.shape[0]:
            out = crops
        else:
            out[upload(sel, src.device)] = crops
    return out


class DeviceResizedCrop:
    """``RandomResizedCrop(size, scale, ratio)`` of a batch of (padded) source images.

    Not a :class:`DeviceStep`: it reads the source batch (``(B, 3, H, W)`` uint8 padded, with the
    true ``sizes (B, 2)``) and may produce several crops per image at once (multi-crop).
    """

    def __init__(self, size: int, scale: Sequence[float] = (0.08, 1.0),
                 ratio: Sequence[float] = (3 / 4, 4 / 3), bicubic: bool = False) -> None:
        self.size = int(size)
        self.bicubic = bool(bicubic)
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))

    def sample(self, sizes: Tensor, generator: torch.Generator) -> Tensor:
        """Boxes ``(B, 4)`` for sources of ``sizes (B, 2)`` (height, width)."""
        return sample_crop_boxes(sizes[:, 0], sizes[:, 1], self.scale, self.ratio, generator)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(size={self.size}, scale={self.scale}, ratio={self.ratio}, "
                f"bicubic={self.bicubic})")


def _where_sample(mask: Tensor, a: Tensor, b: Tensor) -> Tensor:
    return torch.where(mask.view(-1, *([1] * (a.dim() - 1))), a, b)


class DeviceFlip(DeviceStep):
    """Flip each image with probability ``p``: horizontal (``dim=-1``) or vertical (``dim=-2``)."""

    def __init__(self, p: float = 0.5, dim: Literal[-1, -2] = -1) -> None:
        self.p, self.dim = float(p), int(dim)

    def sample(self, n: int, generator: torch.Generator) -> Params:
        return {"flip": torch.rand(n, generator=generator) < self.p}

    def apply(self, x: Tensor, params: Params) -> Tensor:
        return _where_sample(params["flip"], x.flip(self.dim), x)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(p={self.p}, dim={self.dim})"


class DeviceRotate90(DeviceStep):
    """Rotate each (square) image by 90 degrees counter-clockwise with probability ``p`` (lightly ``RandomRotate``)."""

    def __init__(self, p: float) -> None:
        self.p = float(p)

    def sample(self, n: int, generator: torch.Generator) -> Params:
        return {"rotate": torch.rand(n, generator=generator) < self.p}

    def apply(self, x: Tensor, params: Params) -> Tensor:
        if x.shape[-1] != x.shape[-2]:
            raise ValueError(f"90-degree rotation on the device needs square images, got {tuple(x.shape[-2:])}")
        return _where_sample(params["rotate"], torch.rot90(x, 1, dims=(-2, -1)), x)


def _gather_windows(x: Tensor, top: Tensor, left: Tensor, height: int, width: int) -> Tensor:
    """Per-sample integer windows ``x[b, :, top_b:top_b+height, left_b:left_b+width]``."""
    rows = top.view(-1, 1) + torch.arange(height, device=x.device)
    cols = left.view(-1, 1) + torch.arange(width, device=x.device)
    b = torch.arange(x.shape[0], device=x.device).view(-1, 1, 1)
    return x.permute(0, 2, 3, 1)[b, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


class DeviceTranslateReflect(DeviceStep):
    """AMDIM's ``RandomTranslateWithReflect(m)`` inside ``RandomApply(p)``.

    With probability ``p``: ``dx, dy ~ U{-m..m}``; output pixel ``(i, j)`` is input pixel
    ``(i - dy, j - dx)`` of the image reflect-padded by ``m`` (edge not repeated).
    """

    def __init__(self, max_translation: int = 4, p: float = 1.0) -> None:
        self.m, self.p = int(max_translation), float(p)

    def sample(self, n: int, generator: torch.Generator) -> Params:
        shift = torch.randint(-self.m, self.m + 1, (n, 2), generator=generator)
        apply = torch.rand(n, generator=generator) < self.p
        return {"shift": torch.where(apply[:, None], shift, torch.zeros_like(shift))}

    def apply(self, x: Tensor, params: Params) -> Tensor:
        m = self.m
        padded = torch.nn.functional.pad(x, (m, m, m, m), mode="reflect")
        dx, dy = params["shift"].unbind(1)
        return _gather_windows(padded, m - dy, m - dx, x.shape[-2], x.shape[-1])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(max_translation={self.m}, p={self.p})"


def crop_patches(x: Tensor, grid: int, cell: int, patch: int, generator: torch.Generator) -> list[Tensor]:
    """Jigsaw patches: a random ``patch``-px square inside each cell of a ``grid x grid`` grid.

    ``x (B, 3, S, S)`` with ``S >= grid * cell``; returns ``grid**2`` tensors ``(B, 3, patch, patch)``,
    row-major, offsets ``~ U{0..cell-patch}`` per image and cell (official ``JigsawCrop``).
    """
    offsets = torch.randint(0, cell - patch + 1, (x.shape[0], grid * grid, 2), generator=generator)
    offsets = upload(offsets, x.device)
    out = []
    for k in range(grid * grid):
        top = (k // grid) * cell + offsets[:, k, 0]
        left = (k % grid) * cell + offsets[:, k, 1]
        out.append(_gather_windows(x, top, left, patch, patch))
    return out
