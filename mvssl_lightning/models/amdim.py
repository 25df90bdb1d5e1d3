"""AMDIM's encoder (Bachman et al., NeurIPS 2019), as in the official ``amdim-public/model.py``.

AMDIM does not use a ResNet-50: it has its own fully convolutional encoder whose receptive fields
are tuned so that a 128 px image gives 7x7, 5x5 and 1x1 feature maps.  With
``w = ndf`` and ``d = depth``::

    128 px                                            32 px (``cifar_stem=True``)
    conv 5x5 s2 reflect-pad 2, ReLU  3 -> w   64      conv 3x3, ReLU       3 -> w     30
    conv 3x3, ReLU                   w -> w   62      unit 1x1             w -> w     30
    block 4x4 s2                     w -> 2w  30      block 4x4 s2         w -> 2w    14
    block 4x4 s2                    2w -> 4w  14      block 2x2 s2        2w -> 4w     7
    block 2x2 s2                    4w -> 8w   7      [BN]                             7  -> r7
    [BN]                                       7  -> r7
    block 3x3                       8w -> 8w   5  -> r5   block 3x3       4w -> 4w     5  -> r5
    block 3x3                       8w -> 8w   3          block 3x3       4w -> 4w     3
    unit 3x3                     8w -> n_rkhs  1          unit 3x3     4w -> n_rkhs    1
    BN (always)                                1  -> r1   BN (always)                  1  -> r1

A *block* is ``d`` residual units: the first with the given kernel/stride, then ``d - 1`` 1x1
units.  A *unit* (official ``ConvResNxN``) is ``h = conv1x1(ReLU([BN] conv_kxk(x))) + shortcut(x)``
with no activation after the sum; the shortcut is ``avg_pool_kxk(x)`` (zero-padded channels when
the width grows) or, when the width shrinks, a biased ``kxk`` conv.  ``[BN]`` exists only with
``use_bn=True`` (``--use_bn 0`` is the official default); the output BN of ``r1`` is always on.
``zero_init_residual`` zeroes every unit's second conv (the official ``init_weights``: "fixup/zero
init"), so at init every unit is its shortcut.

The "fake RKHS" heads on the 7x7 and 5x5 maps (official ``FakeRKHSConvNet``) are separate modules
(:class:`AMDIMHead`), owned by the method: :meth:`AMDIMEncoder.forward_maps` returns the raw maps.
``r1`` needs no head (the official ``NopNet``).

Official configs: README ImageNet example ndf 192 / n_rkhs 1536 / depth 8; released "Large" ndf 320
/ 2560 / 10.  The 32 px variant is the official ``encoder_size == 32`` branch (its widest layer is
``4 ndf``, so lightning-bolts' CIFAR-10 config ndf 320 / n_rkhs 1280 / depth 10 has ``4 ndf = n_rkhs``,
as ``8 ndf = n_rkhs`` for ImageNet's 192 / 1536).
"""

from __future__ import annotations

from typing import Literal, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["AMDIMEncoder", "AMDIMHead", "amdim_heads", "build_amdim_encoder"]


def _maybe_bn(channels: int, use_bn: bool) -> nn.Module:
    return nn.BatchNorm2d(channels) if use_bn else nn.Identity()


class StemConv(nn.Module):
    """``ReLU(conv(pad(x)))`` with bias and no BN (official ``Conv3x3`` with ``use_bn=False``)."""

    def __init__(self, n_in: int, n_out: int, kernel: int, stride: int = 1, pad: int = 0,
                 pad_mode: Literal["constant", "reflect"] = "constant") -> None:
        super().__init__()
        self.pad, self.pad_mode = pad, pad_mode
        self.conv = nn.Conv2d(n_in, n_out, kernel, stride, 0, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        if self.pad > 0:
            x = F.pad(x, (self.pad,) * 4, mode=self.pad_mode)
        return F.relu(self.conv(x))


class ResUnit(nn.Module):
    """``conv1x1(ReLU([BN] conv_kxk(x))) + shortcut(x)`` (official ``ConvResNxN``, no padding)."""

    def __init__(self, n_in: int, n_out: int, kernel: int, stride: int = 1, use_bn: bool = False) -> None:
        super().__init__()
        self.n_in, self.n_out, self.kernel, self.stride = n_in, n_out, kernel, stride
        self.conv1 = nn.Conv2d(n_in, n_out, kernel, stride, 0, bias=False)
        self.bn1 = _maybe_bn(n_out, use_bn)
        self.conv2 = nn.Conv2d(n_out, n_out, 1, 1, 0, bias=False)
        # a learned shortcut only when the width shrinks; otherwise average-pool (+ zero channels)
        self.shortcut = nn.Conv2d(n_in, n_out, kernel, stride, 0, bias=True) if n_out < n_in else None

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv2(F.relu(self.bn1(self.conv1(x))))
        if self.shortcut is not None:
            return h + self.shortcut(x)
        skip = F.avg_pool2d(x, self.kernel, self.stride) if (self.kernel, self.stride) != (1, 1) else x
        if self.n_out > self.n_in:
            skip = F.pad(skip, (0, 0, 0, 0, 0, self.n_out - self.n_in))
        return h + skip


def res_block(n_in: int, n_out: int, kernel: int, stride: int, depth: int, use_bn: bool) -> nn.Sequential:
    """``depth`` units: ``kernel``/``stride`` first, then ``depth - 1`` 1x1 units (``ConvResBlock``)."""
    units = [ResUnit(n_in, n_out, kernel, stride, use_bn)]
    units += [ResUnit(n_out, n_out, 1, 1, use_bn) for _ in range(depth - 1)]
    return nn.Sequential(*units)


class AMDIMEncoder(nn.Module):
    """AMDIM's encoder; ``forward(x)`` gives the global feature ``r1`` as ``(B, n_rkhs)``.

    Args:
        ndf: base width ``w`` (module docstring).
        n_rkhs: width of the global feature ``r1`` (and of the heads' outputs).
        depth: residual units per block.
        use_bn: BatchNorm inside the units and on the 7x7 map (off in the official default).
        small_images: the 32 px variant (official ``encoder_size == 32``) instead of 128 px.
        zero_init_residual: zero each unit's second conv.

    Attributes: ``input_size`` (128 or 32), ``channels_7``/``channels_5`` (widths of the raw maps),
    ``n_rkhs``, ``use_bn``.
    """

    def __init__(self, ndf: int = 192, n_rkhs: int = 1536, depth: int = 8, use_bn: bool = False,
                 small_images: bool = False, zero_init_residual: bool = True) -> None:
        super().__init__()
        if min(ndf, n_rkhs, depth) < 1:
            raise ValueError(f"ndf, n_rkhs and depth must be positive, got {ndf}, {n_rkhs}, {depth}")
        self.n_rkhs, self.use_bn = n_rkhs, use_bn
        if small_images:
            self.input_size, top = 32, 4 * ndf
            stem = [StemConv(3, ndf, 3), ResUnit(ndf, ndf, 1, 1, use_bn),
                    res_block(ndf, 2 * ndf, 4, 2, depth, use_bn),
                    res_block(2 * ndf, top, 2, 2, depth, use_bn)]
        else:
            self.input_size, top = 128, 8 * ndf
            stem = [StemConv(3, ndf, 5, 2, 2, pad_mode="reflect"), StemConv(ndf, ndf, 3),
                    res_block(ndf, 2 * ndf, 4, 2, depth, use_bn),
                    res_block(2 * ndf, 4 * ndf, 4, 2, depth, use_bn),
                    res_block(4 * ndf, top, 2, 2, depth, use_bn)]
        self.to_7x7 = nn.Sequential(*stem, _maybe_bn(top, use_bn))
        self.to_5x5 = res_block(top, top, 3, 1, depth, use_bn)
        self.to_1x1 = nn.Sequential(
            res_block(top, top, 3, 1, depth, use_bn),
            ResUnit(top, n_rkhs, 3, 1, use_bn),
            nn.BatchNorm2d(n_rkhs),
        )
        self.channels_7 = self.channels_5 = top
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, ResUnit):
                    nn.init.zeros_(m.conv2.weight)

    def forward_maps(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Raw maps ``(r1 (B, n_rkhs, 1, 1), h5 (B, c5, 5, 5), h7 (B, c7, 7, 7))``, before any head."""
        if tuple(x.shape[-2:]) != (self.input_size, self.input_size):
            raise ValueError(
                f"the AMDIM encoder needs {self.input_size} px inputs (maps 7x7, 5x5, 1x1), got "
                f"{tuple(x.shape[-2:])}; use cifar_stem={self.input_size == 128} or resize the images"
            )
        h7 = self.to_7x7(x)
        h5 = self.to_5x5(h7)
        r1 = self.to_1x1(h5)
        return r1, h5, h7

    def forward(self, x: Tensor) -> Tensor:
        """Global feature ``r1`` flattened to ``(B, n_rkhs)``: what probes and kNN consume."""
        return self.forward_maps(x)[0].flatten(1)


class AMDIMHead(nn.Module):
    """AMDIM's "fake RKHS" head on a local map (official ``FakeRKHSConvNet``), all 1x1 convs::

        h = BN_out( conv2(ReLU([BN] conv1(x))) + shortcut(x) ),     shortcut: conv with bias

    When ``n_out >= n_in`` the shortcut starts near the identity (``U(-0.01, 0.01)`` plus ones on
    the diagonal), as in the official code; ``zero_init`` zeroes ``conv2`` (official ``init_weights``).
    """

    def __init__(self, n_in: int, n_out: int, use_bn: bool = False, zero_init: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(n_in, n_out, 1, bias=False)
        self.bn1 = _maybe_bn(n_out, use_bn)
        self.conv2 = nn.Conv2d(n_out, n_out, 1, bias=False)
        self.shortcut = nn.Conv2d(n_in, n_out, 1, bias=True)
        self.bn_out = nn.BatchNorm2d(n_out)
        if n_out >= n_in:
            with torch.no_grad():
                self.shortcut.weight.uniform_(-0.01, 0.01)
                self.shortcut.weight[:, :, 0, 0].fill_diagonal_(1.0)
        if zero_init:
            nn.init.zeros_(self.conv2.weight)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn_out(self.conv2(F.relu(self.bn1(self.conv1(x)))) + self.shortcut(x))


def build_amdim_encoder(
    cifar_stem: bool = False,
    zero_init_residual: bool = True,
    ndf: int = 192,
    n_rkhs: int = 1536,
    depth: int = 8,
    use_bn: bool = False,
) -> tuple[AMDIMEncoder, int]:
    """``(AMDIMEncoder, n_rkhs)``; ``cifar_stem=True`` selects the 32 px variant (module docstring).

    Defaults: the official README's ImageNet example (ndf 192, n_rkhs 1536, depth 8, no BN).
    """
    encoder = AMDIMEncoder(ndf, n_rkhs, depth, use_bn, small_images=cifar_stem,
                           zero_init_residual=zero_init_residual)
    return encoder, n_rkhs


def amdim_heads(encoder: Union[AMDIMEncoder, nn.Module], zero_init: bool = True) -> nn.ModuleDict:
    """The two heads ``{"r5": ..., "r7": ...}`` that map an encoder's raw maps to ``n_rkhs`` channels."""
    c5, c7, n_rkhs, use_bn = (getattr(encoder, a) for a in ("channels_5", "channels_7", "n_rkhs", "use_bn"))
    return nn.ModuleDict({
        "r5": AMDIMHead(int(c5), int(n_rkhs), bool(use_bn), zero_init),
        "r7": AMDIMHead(int(c7), int(n_rkhs), bool(use_bn), zero_init),
    })
