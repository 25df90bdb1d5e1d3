"""InfoMin views: augmentation 'D' with its RandAugment, and the jigsaw patch view.

Sources: Tian et al., "What Makes for Good Views for Contrastive Learning?", NeurIPS 2020 (§4.2, the
"InfoMin Aug." of Table 4); official code ``HobbitLong/PyContrast``, ``pycontrast/datasets/util.py``
(``build_transforms``, aug ``'D'``, ``JigsawCrop``) and ``pycontrast/datasets/RandAugment.py``
(Ross Wightman's RandAugment with magnitude noise).  Written from the description, with PIL ops;
random numbers come from torch's generator (seeded per data-loader worker).

One InfoMin view (:func:`infomin_view`), in order:

1. ``RandomResizedCrop(224, scale=(0.2, 1))`` (bilinear), horizontal flip p 0.5;
2. ``ColorJitter(0.8, 0.8, 0.8, 0.2)`` with p 0.8;
3. Gaussian blur, kernel 23 (official ``GaussianBlur(22)`` rounds to 2 * 11 + 1), reflect padding,
   ``sigma ~ U[0.1, 2]``, with p 0.5;
4. :class:`InfoMinRandAugment` (``rand-n2-m10-mstd0.5``);
5. ``RandomGrayscale(p=0.2)``, ``ToTensor``, ImageNet normalisation.

The jigsaw view (:class:`JigsawPatches`): ``RandomResizedCrop(255, scale=(0.6, 1))``, flip, a 3 x 3
grid of 85-px cells and a random 64 x 64 crop inside each cell, normalised, no colour augmentation:
9 tensors ``(3, 64, 64)`` per image (row-major; the order is irrelevant, the jigsaw head permutes
the patches at random).

Deviations from the official code: the blur runs through ``torchvision.transforms.GaussianBlur`` on
uint8 images (official: float conv then ``ToPILImage``, which truncates instead of rounding; at most
one grey level apart); torch's RNG instead of Python's ``random`` / numpy.

The op list, level range and settings checks of the RandAugment live in
:mod:`mvssl_lightning.data.randaugment_policy`, shared with the device form.  Device compiler entries
registered here (:mod:`mvssl_lightning.data.device.registry`): :class:`InfoMinRandAugment` ->
``DeviceRandAugment.from_cpu`` (built from its public settings), and the :class:`InfoMinViews` hook,
which appends the jigsaw patches as a device view cut into ``grid**2`` patches.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Optional

import torch
import torchvision.transforms as T
from PIL import Image, ImageEnhance, ImageOps
from torch import Tensor

from mvssl_lightning.data.device.pipeline import DeviceViews
from mvssl_lightning.data.device.randaugment import DeviceRandAugment
from mvssl_lightning.data.device.recipe import compile_view
from mvssl_lightning.data.device.registry import register_device_recipe, register_device_transform
from mvssl_lightning.data.randaugment_policy import (
    DEFAULT_FILL,
    MAX_LEVEL,
    RAND_AUGMENT_OPS,
    RandAugmentOp,
    RandAugmentPolicy,
)
from mvssl_lightning.data.views.base import (
    CIFAR10_NORMALIZE,
    IMAGENET_NORMALIZE,
    MultiViewRecipe,
    Normalize,
    to_tensor_normalize,
)

__all__ = [
    "MAX_LEVEL",
    "RAND_AUGMENT_OPS",
    "InfoMinRandAugment",
    "InfoMinViews",
    "JigsawPatches",
    "infomin_view",
    "infomin_views",
    "infomin_views_cifar",
    "rand_augment_op",
]

_RESAMPLE = (Image.Resampling.BILINEAR, Image.Resampling.BICUBIC)


def _fill_for(img: Image.Image, fill: Sequence[int]) -> int | tuple[int, ...]:
    return tuple(int(v) for v in fill) if img.mode == "RGB" else int(round(sum(fill) / len(fill)))


def _affine(img: Image.Image, matrix: tuple[float, ...], fill: Sequence[int], resample: int) -> Image.Image:
    return img.transform(img.size, Image.Transform.AFFINE, matrix, resample=resample,
                         fillcolor=_fill_for(img, fill))


def _solarize_add(img: Image.Image, add: int, threshold: int = 128) -> Image.Image:
    lut = [min(255, i + add) if i < threshold else i for i in range(256)]
    return img.point(lut * len(img.getbands()))


def rand_augment_op(
    img: Image.Image,
    name: RandAugmentOp,
    level: float,
    fill: Sequence[int] = DEFAULT_FILL,
    resample: Image.Resampling = Image.Resampling.BILINEAR,
    sign: float = 1.0,
) -> Image.Image:
    """Apply RandAugment op ``name`` at magnitude ``level`` in ``[0, 10]`` (official level -> argument maps).

    ``r = level / 10``; ``sign`` (+-1) is the random negation of the signed ops:

    ========================  =============================================================
    AutoContrast, Equalize,   ``ImageOps`` op, no magnitude
    Invert
    Rotate                    ``sign * 30 r`` degrees, corners filled with ``fill``
    PosterizeTpu              keep ``int(4 r)`` most significant bits (``4`` at r = 1)
    Solarize                  invert pixels ``>= int(256 r)``
    SolarizeAdd               add ``int(110 r)`` to pixels ``< 128`` (clipped at 255)
    Color, Contrast,          ``ImageEnhance`` factor ``1.8 r + 0.1`` (no negation)
    Brightness, Sharpness
    ShearX, ShearY            shear ``sign * 0.3 r``
    TranslateXRel, -YRel      ``sign * 0.45 r`` of the width / height (100 px at 224 px)
    ========================  =============================================================

    As in the official code, ``Solarize`` at the maximum level 10 has threshold 256 and changes
    nothing; with the magnitude noise clipped at 10 this is the case about half of the time.
    """
    r = min(MAX_LEVEL, max(0.0, float(level))) / MAX_LEVEL
    if name == "AutoContrast":
        return ImageOps.autocontrast(img)
    if name == "Equalize":
        return ImageOps.equalize(img)
    if name == "Invert":
        return ImageOps.invert(img)
    if name == "Rotate":
        return img.rotate(sign * 30.0 * r, resample=resample, fillcolor=_fill_for(img, fill))
    if name == "PosterizeTpu":
        bits = int(4 * r)
        if bits <= 0:  # official: posterize to 0 bits = black (Pillow >= 10 refuses bits=0)
            return Image.new(img.mode, img.size)
        return img if bits >= 8 else ImageOps.posterize(img, bits)
    if name == "Solarize":
        return ImageOps.solarize(img, int(256 * r))
    if name == "SolarizeAdd":
        return _solarize_add(img, int(110 * r))
    if name in ("Color", "Contrast", "Brightness", "Sharpness"):
        return getattr(ImageEnhance, name)(img).enhance(1.8 * r + 0.1)
    if name == "ShearX":
        return _affine(img, (1, sign * 0.3 * r, 0, 0, 1, 0), fill, resample)
    if name == "ShearY":
        return _affine(img, (1, 0, 0, sign * 0.3 * r, 1, 0), fill, resample)
    if name == "TranslateXRel":
        return _affine(img, (1, 0, sign * 0.45 * r * img.size[0], 0, 1, 0), fill, resample)
    if name == "TranslateYRel":
        return _affine(img, (1, 0, 0, 0, 1, sign * 0.45 * r * img.size[1]), fill, resample)
    raise ValueError(f"unknown RandAugment op {name!r}; valid: {', '.join(RAND_AUGMENT_OPS)}")


class InfoMinRandAugment(RandAugmentPolicy):
    """The official InfoMin RandAugment (``rand_augment_transform('rand-n2-m10-mstd0.5')``).

    For each of ``num_ops`` rounds: pick an op uniformly *with replacement* from ``ops``; apply it
    with probability ``prob`` at magnitude ``m ~ N(magnitude, magnitude_std^2)`` clipped to
    ``[0, 10]``; geometric ops resample with bilinear or bicubic (chosen at random) and fill with
    ``fill`` (ImageNet mean pixel ``(124, 116, 104)``); signed ops are negated with p 0.5.

    ``torchvision.transforms.RandAugment`` is a different policy (other op list incl. identity,
    every chosen op applied, fixed magnitude, magnitude bins), so it is not used.  The official
    ``translate_const`` (100) only affects the absolute translate ops, which are not in the list; the
    relative ones move by up to 45 % of the image side, which scales with the image size.

    Args and their checks: :class:`~mvssl_lightning.data.randaugment_policy.RandAugmentPolicy`.
    """

    def _apply(self, img: Image.Image, name: RandAugmentOp, level: float) -> Image.Image:
        resample = _RESAMPLE[int(torch.randint(len(_RESAMPLE), ()))]
        sign = -1.0 if float(torch.rand(())) < 0.5 else 1.0
        return rand_augment_op(img, name, level, self.fill, resample, sign)

    def __call__(self, img: Image.Image) -> Image.Image:
        for _ in range(self.num_ops):
            name = self.ops[int(torch.randint(len(self.ops), ()))]
            if float(torch.rand(())) >= self.prob:
                continue
            level = self.magnitude
            if self.magnitude_std > 0:
                level = float(torch.normal(torch.tensor(self.magnitude), self.magnitude_std))
            img = self._apply(img, name, min(MAX_LEVEL, max(0.0, level)))
        return img


def mean_pixel(normalize: Normalize) -> tuple[int, ...]:
    """The normalisation mean as an 8-bit RGB pixel (RandAugment's fill; ImageNet's when ``None``)."""
    mean = (normalize or IMAGENET_NORMALIZE)["mean"]
    return tuple(min(255, round(255 * float(m))) for m in mean)


def infomin_view(
    size: int = 224,
    scale: Sequence[float] = (0.2, 1.0),
    hf_prob: float = 0.5,
    color_jitter: Sequence[float] = (0.8, 0.8, 0.8, 0.2),
    cj_prob: float = 0.8,
    blur: float = 0.5,
    blur_kernel: int = 23,
    sigmas: Sequence[float] = (0.1, 2.0),
    ra_num_ops: int = 2,
    ra_magnitude: float = 10.0,
    ra_magnitude_std: float = 0.5,
    ra_prob: float = 0.5,
    ra_fill: Optional[Sequence[int]] = None,
    gray: float = 0.2,
    normalize: Normalize = IMAGENET_NORMALIZE,
) -> T.Compose:
    """One InfoMin view ('D'): crop, flip, strong jitter, blur, RandAugment, grayscale, normalise.

    ``ra_fill`` defaults to the mean pixel of ``normalize`` (the ImageNet mean ``(124, 116, 104)``,
    as the official ``img_mean``).  ``blur = 0`` drops the blur.
    """
    b, c, s, h = (float(v) for v in color_jitter)
    steps: list[Callable] = [
        T.RandomResizedCrop(size, scale=tuple(scale)),
        T.RandomHorizontalFlip(hf_prob),
        T.RandomApply([T.ColorJitter(b, c, s, h)], p=cj_prob),
    ]
    if blur > 0:
        steps.append(T.RandomApply([T.GaussianBlur(blur_kernel, sigma=tuple(sigmas))], p=blur))
    steps.append(InfoMinRandAugment(ra_num_ops, ra_magnitude, ra_magnitude_std, ra_prob,
                                    fill=ra_fill if ra_fill is not None else mean_pixel(normalize)))
    steps.append(T.RandomGrayscale(gray))
    return T.Compose(steps + to_tensor_normalize(normalize))


class JigsawPatches:
    """Jigsaw patches of one image (official ``JigsawCrop`` after ``RandomResizedCrop(255, (0.6, 1))``).

    ``image -> RandomResizedCrop(size, scale) -> flip -> tensor``; the ``size x size`` crop is cut
    into a ``grid x grid`` grid of ``size // grid``-px cells and a random ``patch_size`` square is
    taken inside each cell.  Returns ``grid**2`` tensors ``(3, patch_size, patch_size)``, row-major.
    """

    def __init__(
        self,
        size: int = 255,
        scale: Sequence[float] = (0.6, 1.0),
        grid: int = 3,
        patch_size: int = 64,
        hf_prob: float = 0.5,
        normalize: Normalize = IMAGENET_NORMALIZE,
    ) -> None:
        if patch_size > size // grid:
            raise ValueError(f"patch_size {patch_size} exceeds the cell size {size} // {grid} = {size // grid}")
        self.grid = grid
        self.cell = size // grid
        self.patch_size = patch_size
        self.crop = T.Compose([T.RandomResizedCrop(size, scale=tuple(scale)), T.RandomHorizontalFlip(hf_prob),
                               *to_tensor_normalize(normalize)])

    @property
    def num_patches(self) -> int:
        return self.grid * self.grid

    def __call__(self, img: Image.Image) -> list[Tensor]:
        x = self.crop(img)
        offsets = torch.randint(0, self.cell - self.patch_size + 1, (self.num_patches, 2))
        patches = []
        for i in range(self.num_patches):
            top = (i // self.grid) * self.cell + int(offsets[i, 0])
            left = (i % self.grid) * self.cell + int(offsets[i, 1])
            patches.append(x[:, top:top + self.patch_size, left:left + self.patch_size].clone())
        return patches

    def __repr__(self) -> str:
        return f"{type(self).__name__}(grid={self.grid}, cell={self.cell}, patch_size={self.patch_size})"


class InfoMinViews(MultiViewRecipe):
    """Two InfoMin views, then the jigsaw patches (if any) as further views of the same image."""

    def __init__(self, view: Callable, jigsaw: Optional[JigsawPatches], name: str = "infomin") -> None:
        super().__init__([view, view], name=name)
        self.jigsaw = jigsaw

    @property
    def num_views(self) -> int:
        return 2 + (self.jigsaw.num_patches if self.jigsaw is not None else 0)

    def __call__(self, image: Image.Image) -> list[Tensor]:  # type: ignore[override]  # PIL images only
        views = [t(image) for t in self.transforms]
        if self.jigsaw is not None:
            views.extend(self.jigsaw(image))
        return views


def infomin_views(
    size: int = 224,
    scale: Sequence[float] = (0.2, 1.0),
    blur: float = 0.5,
    jigsaw: bool = True,
    jigsaw_size: int = 255,
    jigsaw_scale: Sequence[float] = (0.6, 1.0),
    jigsaw_grid: int = 3,
    jigsaw_patch_size: int = 64,
    hf_prob: float = 0.5,
    color_jitter: Sequence[float] = (0.8, 0.8, 0.8, 0.2),
    cj_prob: float = 0.8,
    blur_kernel: int = 23,
    sigmas: Sequence[float] = (0.1, 2.0),
    ra_num_ops: int = 2,
    ra_magnitude: float = 10.0,
    ra_magnitude_std: float = 0.5,
    ra_prob: float = 0.5,
    ra_fill: Optional[Sequence[int]] = None,
    gray: float = 0.2,
    normalize: Normalize = IMAGENET_NORMALIZE,
) -> InfoMinViews:
    """The InfoMin recipe: 2 InfoMin views (224 px) + 9 jigsaw patches (64 px) when ``jigsaw``.

    The arguments from ``hf_prob`` on are those of :func:`infomin_view`.  Views per image: 11 with
    jigsaw, 2 without (matching ``InfoMin(jigsaw=...)``).
    """
    view = infomin_view(
        size=size, scale=scale, hf_prob=hf_prob, color_jitter=color_jitter, cj_prob=cj_prob, blur=blur,
        blur_kernel=blur_kernel, sigmas=sigmas, ra_num_ops=ra_num_ops, ra_magnitude=ra_magnitude,
        ra_magnitude_std=ra_magnitude_std, ra_prob=ra_prob, ra_fill=ra_fill, gray=gray, normalize=normalize,
    )
    patches = (
        JigsawPatches(jigsaw_size, jigsaw_scale, jigsaw_grid, jigsaw_patch_size, normalize=normalize)
        if jigsaw else None
    )
    return InfoMinViews(view, patches, name="infomin")


def infomin_views_cifar(
    size: int = 32,
    scale: Sequence[float] = (0.2, 1.0),
    jigsaw: bool = False,
    jigsaw_size: int = 30,
    jigsaw_scale: Sequence[float] = (0.6, 1.0),
    jigsaw_grid: int = 3,
    jigsaw_patch_size: int = 8,
    hf_prob: float = 0.5,
    color_jitter: Sequence[float] = (0.8, 0.8, 0.8, 0.2),
    cj_prob: float = 0.8,
    ra_num_ops: int = 2,
    ra_magnitude: float = 10.0,
    ra_magnitude_std: float = 0.5,
    ra_prob: float = 0.5,
    ra_fill: Optional[Sequence[int]] = None,
    gray: float = 0.2,
    normalize: Normalize = CIFAR10_NORMALIZE,
) -> InfoMinViews:
    """CIFAR-sized InfoMin recipe: 32 px, no blur, RandAugment fill = the data's mean pixel.

    The relative translations already scale with the image (up to 14 px at 32 px).  Jigsaw is off by
    default (``InfoMin(jigsaw=False)``): 8-px patches of a 32-px image carry little content and cost
    9 extra forward passes; with ``jigsaw=True`` the patches are a 3 x 3 grid of 10-px cells of a
    30-px crop (scale 0.6-1) with a random 8 x 8 crop per cell.
    """
    recipe = infomin_views(
        size=size, scale=scale, blur=0.0, jigsaw=jigsaw, jigsaw_size=jigsaw_size, jigsaw_scale=jigsaw_scale,
        jigsaw_grid=jigsaw_grid, jigsaw_patch_size=jigsaw_patch_size, hf_prob=hf_prob, color_jitter=color_jitter,
        cj_prob=cj_prob, ra_num_ops=ra_num_ops, ra_magnitude=ra_magnitude, ra_magnitude_std=ra_magnitude_std,
        ra_prob=ra_prob, ra_fill=ra_fill, gray=gray, normalize=normalize,
    )
    recipe.name = "infomin_cifar"
    return recipe


# ----------------------------------------------------------------------------- device compiler entries
def _device_jigsaw(recipe: InfoMinViews, device_views: DeviceViews) -> DeviceViews:
    """Append the jigsaw patches (if any): the jigsaw crop compiled as one view, cut into patches."""
    jigsaw = recipe.jigsaw
    if jigsaw is not None:
        view = compile_view(jigsaw.crop)
        view.jigsaw = (int(jigsaw.grid), int(jigsaw.cell), int(jigsaw.patch_size))
        device_views.views.append(view)
    return device_views


register_device_transform(InfoMinRandAugment, DeviceRandAugment.from_cpu)
register_device_recipe(InfoMinViews, _device_jigsaw)
