"""Image files as 8-bit RGB: one rule for every mode, shared by the CPU path and the ``gpu_views`` path.

:func:`to_rgb` turns a Pillow image of any mode into 8-bit RGB:

- 8-bit modes (``1``, ``L``, ``P``, ``LA``, ``PA``, ``RGB``, ``RGBA``, ``RGBX``, ``CMYK``, ``YCbCr``,
  ``LAB``, ``HSV``): Pillow's ``convert("RGB")`` (palette looked up, alpha dropped, CMYK as
  ``(255 - C)(255 - K) / 255``, ...).
- 16-bit grayscale (``I;16``, ``I;16B``, ...) and ``I`` (32-bit integers; what Pillow gives for 16-bit
  PGM files and gave for 16-bit PNGs before Pillow 10): the high byte, ``value >> 8``, the same
  reduction Pillow applies itself when it opens a 16-bit RGB(A) PNG as ``RGB`` / ``RGBA``.  Values
  outside ``0..65535`` are an error naming the image (their scale is unknown).  Pillow's own
  ``convert("RGB")`` would clip these modes at 255, turning a 16-bit image all white.
- ``F`` (32-bit floats): values in ``[0, 1]`` become ``round(255 * value)``; other values are an error.

:func:`open_rgb` first applies the file's EXIF orientation, as ``PIL.ImageOps.exif_transpose`` does (a
phone photo stored sideways comes out upright); :func:`exif_rotated` tells the ``gpu_views`` path which
JPEGs need it, so they are decoded on the CPU by the same rule instead of by the batched decoder.

Errors are ``ValueError`` naming the image (a file path, or an npz entry) and, for a mode, its values.
"""

from __future__ import annotations

import io
import os
from typing import Union

import numpy as np
import torch
from PIL import Image, ImageOps

__all__ = ["UnsupportedImage", "exif_rotated", "open_rgb", "rgb_tensor", "to_rgb", "uint16_to_uint8"]

#: Modes Pillow converts to RGB correctly with ``convert("RGB")`` (8 bits per sample).
EIGHT_BIT_MODES = frozenset({"1", "L", "P", "LA", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"})

Source = Union[str, os.PathLike, bytes]


class UnsupportedImage(ValueError):
    """An image that opens but whose pixel values cannot be turned into 8-bit RGB without guessing."""


def _gray_to_rgb(gray: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(gray, dtype=np.uint8)).convert("RGB")


def to_rgb(img: Image.Image, what: str) -> Image.Image:
    """``img`` as an 8-bit RGB image (see the module docstring); ``what`` names it in errors."""
    mode = img.mode
    if mode in EIGHT_BIT_MODES:
        return img.convert("RGB")
    if mode == "I" or mode.startswith("I;16"):
        a = np.asarray(img).astype(np.int64, copy=False)
        lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
        if lo < 0 or hi > 65535:
            raise UnsupportedImage(
                f"{what} has mode {mode!r} with values {lo}..{hi}: only 16-bit data (0..65535, reduced to "
                "8 bits as value >> 8) can be read; convert it to 8-bit RGB"
            )
        return _gray_to_rgb(a >> 8)
    if mode == "F":
        f = np.asarray(img, dtype=np.float64)
        finite = bool(np.isfinite(f).all())
        flo, fhi = (float(np.nanmin(f)), float(np.nanmax(f))) if f.size else (0.0, 0.0)
        if not finite or flo < 0 or fhi > 1:
            raise UnsupportedImage(
                f"{what} has mode 'F' (32-bit float) with values {flo:.6g}..{fhi:.6g}"
                f"{'' if finite else ' and non-finite values'}: float images must lie in [0, 1] "
                "(read as round(255 * value)); convert it to 8-bit RGB"
            )
        return _gray_to_rgb(np.rint(f * 255))
    try:
        return img.convert("RGB")
    except Exception as e:  # e.g. "La": Pillow has no conversion
        raise UnsupportedImage(f"{what} has mode {mode!r}, which Pillow cannot convert to RGB ({e})") from e


def open_rgb(source: Source, what: str) -> Image.Image:
    """Open and fully decode an image file (path or bytes) as 8-bit RGB (:func:`to_rgb`).

    Raises:
        ValueError: ``"corrupt <what> (<Pillow's error>)"`` when the file cannot be decoded (truncated,
            not an image...), or :class:`UnsupportedImage` for pixel values with no 8-bit reading.
    """
    fp = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with Image.open(fp) as img:
            img.load()
            upright: Image.Image = ImageOps.exif_transpose(img) if _orientation(img) != 1 else img
            return to_rgb(upright, what)
    except UnsupportedImage:
        raise
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError... on bad files
        raise ValueError(f"corrupt {what} ({type(e).__name__}: {e})") from e


#: The EXIF tag of the image orientation (1: stored upright).
ORIENTATION_TAG = 0x0112


def _orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(ORIENTATION_TAG, 1))
    except Exception:  # a malformed EXIF block: Pillow reads the pixels anyway, and so do we
        return 1


def exif_rotated(source: Source) -> bool:
    """Whether an image file carries an EXIF orientation other than upright (only the header is read)."""
    fp = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with Image.open(fp) as img:
            return _orientation(img) not in (0, 1)
    except Exception:  # unreadable: the decoder names the file
        return False


def image_size(source: Source) -> tuple[int, int]:
    """``(height, width)`` of an image file from its header (nothing is decoded)."""
    fp = io.BytesIO(source) if isinstance(source, bytes) else source
    with Image.open(fp) as img:
        w, h = img.size
    return h, w


def rgb_tensor(img: Image.Image) -> torch.Tensor:
    """An RGB ``PIL.Image`` as a ``(3, H, W)`` uint8 tensor."""
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).copy())


def uint16_to_uint8(images: torch.Tensor) -> torch.Tensor:
    """16-bit samples (e.g. torchvision's decode of a 16-bit PNG) reduced to 8 bits as ``value >> 8``."""
    return (images.to(torch.int32) >> 8).to(torch.uint8)
