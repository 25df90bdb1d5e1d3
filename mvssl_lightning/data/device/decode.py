"""Undecoded batches for the device view pipeline: collate in the workers, decode on the device.

With ``gpu_views`` the data-loader workers do only what must happen per sample on the CPU: read the
image file's bytes (JPEG), or hand over a decoded ``(3, H, W)`` uint8 array (raw arrays, CIFAR,
non-JPEG files).  :func:`raw_collate` packs a batch into :class:`RawImages` (or one stacked uint8
tensor when the workers decode and all images share a size).  On the device,
:func:`decode_to_batch` decodes the JPEGs in one batched ``torchvision.io.decode_jpeg`` call (nvJPEG
on CUDA, libjpeg-turbo on the CPU) and pads the images into one ``(B, 3, H, W)`` uint8 tensor with
their true sizes.

**Bounded memory.** Padding to the largest image makes one 2000 px photo cost a 256-image batch about
3 GB. With ``max_side`` (:meth:`DeviceViewStage <mvssl_lightning.data.device.stage.DeviceViewStage>` sets it
from the recipe's crops) every decoded image whose longer side exceeds it is first resized, antialiased,
to that longer side, so the padded batch holds at most ``B x 3 x max_side**2`` bytes. Random resized crops
are drawn relative to the image, so they cover the same regions of the smaller image.

**nvJPEG and the caching allocator** (pytorch/vision#9606): torchvision's CUDA decoder allocates its
outputs on the *current* stream but writes them from a private stream that does not wait for the
current one, so it can be handed memory that kernels queued on the current stream (the previous
training step) are still reading, and overwrite it. :func:`_decode_jpeg_cuda` therefore decodes with a
dedicated stream current: the outputs come from that stream's own pool, which nothing else frees into;
the stream first waits for the caller's work (``wait_stream``), the caller then waits for the decode, and
each output is marked as used by the caller (``record_stream``) so that its memory is not reused for the
next decode while the caller's kernels still read it.

``RawImages`` is neither a tensor nor a sequence, so Lightning's batch transfer leaves its bytes on
the CPU, where ``decode_jpeg(..., device="cuda")`` wants them.  It also carries what each image is
(a file path, or an npz entry with its index and split) when the samples say so -- ``(image, label,
source)`` triples, as the data module's training set yields -- so a decoding error names the file.
16-bit images are reduced to 8 bits as ``value >> 8``, the rule of
:mod:`mvssl_lightning.data.images` (the workers already hand such files over decoded by that rule).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.io import ImageReadMode, decode_image, decode_jpeg

from mvssl_lightning.data.images import uint16_to_uint8

__all__ = ["RawImages", "decode_to_batch", "is_jpeg", "pad_images", "raw_collate", "shrink_to"]

_JPEG_MAGIC = (0xFF, 0xD8)


def is_jpeg(data: Tensor) -> bool:
    """Whether a 1-D uint8 tensor holds a JPEG file (starts with the SOI marker)."""
    return data.dim() == 1 and data.numel() > 2 and (int(data[0]), int(data[1])) == _JPEG_MAGIC


class RawImages:
    """A batch of images as file bytes (1-D uint8) or decoded ``(3, H, W)`` uint8 tensors, on the CPU.

    ``sources``: what each image is (e.g. ``"image file /data/train/cat/1.jpg"``), named by decoding
    errors; ``None`` names positions in the batch instead.
    """

    def __init__(self, items: Sequence[Tensor], sources: Optional[Sequence[str]] = None) -> None:
        self.items = list(items)
        self.sources = list(sources) if sources is not None else None
        if self.sources is not None and len(self.sources) != len(self.items):
            raise ValueError(f"RawImages got {len(self.sources)} sources for {len(self.items)} images")

    def __len__(self) -> int:
        return len(self.items)

    def describe(self, position: int) -> str:
        """What image ``position`` is, for error messages."""
        return self.sources[position] if self.sources is not None else f"image at position {position} of the batch"

    def pin_memory(self) -> "RawImages":
        """Pin the decoded images (file bytes stay as they are: the decoder reads them on the CPU)."""
        return RawImages([t if t.dim() == 1 else t.pin_memory() for t in self.items], self.sources)

    def __repr__(self) -> str:
        n_bytes = sum(t.dim() == 1 for t in self.items)
        return f"{type(self).__name__}(n={len(self.items)}, encoded={n_bytes})"


#: torchvision's decoder errors start with "<function>, <C++ file>:<line>, "; the rest is the message.
_CPP_LOCATION = re.compile(r"^\w+, \S+:\d+, ")


def _decode_cpu(data: Tensor, what: str) -> Tensor:
    """Decode one image file's bytes to ``(3, H, W)`` uint8 (16-bit samples: ``value >> 8``)."""
    try:
        img = decode_image(data, mode=ImageReadMode.RGB)
    except RuntimeError as e:
        raise ValueError(f"corrupt {what} ({_CPP_LOCATION.sub('', str(e))})") from e
    if img.dim() == 4:  # an animated image: its first frame, as Pillow reads it
        img = img[0]
    if img.dtype == torch.uint16:
        img = uint16_to_uint8(img)
    if img.dtype != torch.uint8 or img.dim() != 3 or img.shape[0] != 3:
        raise ValueError(f"{what} decoded to {tuple(img.shape)} {img.dtype}, not (3, H, W) with 8- or 16-bit samples")
    return img


def _as_uint8(item: Tensor, what: str) -> Tensor:
    """A raw item as the pipeline takes it: file bytes (1-D uint8) or ``(3, H, W)`` uint8 (16-bit: ``>> 8``)."""
    if item.dim() == 3 and item.dtype == torch.uint16:
        return uint16_to_uint8(item)
    if item.dtype != torch.uint8 or item.dim() not in (1, 3) or (item.dim() == 3 and item.shape[0] != 3):
        raise ValueError(
            f"{what} reached the gpu_views pipeline as {tuple(item.shape)} {item.dtype}; expected file bytes "
            "(1-D uint8) or a (3, H, W) uint8 image"
        )
    return item


_DECODE_STREAMS: dict[int, torch.cuda.Stream] = {}


def _decode_jpeg_cuda(data: list[Tensor], device: torch.device) -> list[Tensor]:
    """Batched nvJPEG decoding that cannot overwrite memory the caller's queued kernels still read
    (module docstring; pytorch/vision#9606)."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    caller = torch.cuda.current_stream(index)
    stream = _DECODE_STREAMS.get(index)
    if stream is None:
        stream = _DECODE_STREAMS[index] = torch.cuda.Stream(index)
    stream.wait_stream(caller)
    with torch.cuda.stream(stream):  # the outputs are allocated from this stream's pool
        decoded = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    caller.wait_stream(stream)
    for img in decoded:
        img.record_stream(caller)  # freed later by the caller: reused only after its queued work
    return decoded


def _decode_all(images: RawImages, device: torch.device) -> list[Tensor]:
    """Decode file bytes to ``(3, H, W)`` uint8 on ``device``; decoded items are only moved."""
    items = images.items
    out: list[Tensor] = [t.to(device, non_blocking=True) if t.dim() == 3 else t for t in items]
    jpeg = [i for i, t in enumerate(items) if t.dim() == 1 and is_jpeg(t)] if device.type == "cuda" else []
    if jpeg:
        try:
            decoded = _decode_jpeg_cuda([items[i] for i in jpeg], device)
        except RuntimeError:  # find the culprit with the CPU decoder for a clear message
            decoded = [_decode_cpu(items[i], images.describe(i)).to(device) for i in jpeg]
        for i, img in zip(jpeg, decoded, strict=True):
            out[i] = img
    done = set(jpeg)
    for i, t in enumerate(items):
        if t.dim() == 1 and i not in done:
            out[i] = _decode_cpu(t, images.describe(i)).to(device, non_blocking=True)
    return out


def pad_images(images: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Stack ``(3, H_i, W_i)`` images into ``(B, 3, max H, max W)``, padded at the bottom/right.

    The padding repeats the last row/column, so a resampler that reads just past the image edge
    (bilinear taps of a crop touching the border) sees the edge value, as when resizing the image
    alone.  Returns the batch and ``sizes (B, 2)`` int64 (height, width) on the CPU.
    """
    sizes = torch.tensor([tuple(t.shape[-2:]) for t in images], dtype=torch.int64)
    if bool((sizes == sizes[0]).all()):
        return torch.stack(list(images)), sizes
    h, w = (int(v) for v in sizes.max(0).values)
    batch = images[0].new_zeros((len(images), 3, h, w))
    for i, img in enumerate(images):
        ih, iw = img.shape[-2:]
        batch[i, :, :ih, :iw] = img
        batch[i, :, :ih, iw:] = img[:, :, iw - 1:]
        batch[i, :, ih:, :] = batch[i, :, ih - 1:ih, :]
    return batch, sizes


def shrink_to(image: Tensor, max_side: int) -> Tensor:
    """``image (3, H, W)`` uint8 resized (bilinear, antialiased) so that its longer side is ``max_side``, the
    aspect ratio kept (sides rounded); returned as it is when it already fits."""
    h, w = image.shape[-2:]
    if max(h, w) <= max_side:
        return image
    f = max_side / max(h, w)
    size = (max(1, min(max_side, round(h * f))), max(1, min(max_side, round(w * f))))
    out = F.interpolate(image[None].float(), size=size, mode="bilinear", antialias=True, align_corners=False)
    return out[0].round_().clamp_(0, 255).to(torch.uint8)


def decode_to_batch(
    images: Union[RawImages, Tensor], device: torch.device, max_side: Optional[int] = None
) -> tuple[Tensor, Tensor]:
    """A training batch's images as ``(B, 3, H, W)`` uint8 on ``device`` plus their ``sizes (B, 2)``.

    ``max_side``: images of mixed sizes (a :class:`RawImages`) whose longer side exceeds it are resized to it
    (:func:`shrink_to`) before padding, so that the batch takes at most ``B x 3 x max_side**2`` bytes; a
    stacked batch (one size, no padding) is left as it is.
    """
    if isinstance(images, Tensor):
        if images.dim() != 4 or images.dtype != torch.uint8:
            raise ValueError(f"expected a (B, 3, H, W) uint8 batch, got {tuple(images.shape)} {images.dtype}")
        b, _, h, w = images.shape
        return images.to(device, non_blocking=True), torch.tensor([[h, w]] * b, dtype=torch.int64)
    if max_side is not None and max_side < 1:
        raise ValueError(f"max_side must be >= 1 or None, got {max_side}")
    decoded = _decode_all(images, torch.device(device))
    if max_side is not None:
        decoded = [shrink_to(img, max_side) for img in decoded]
    return pad_images(decoded)


def raw_collate(
    batch: Sequence[tuple[Any, ...]], decode_below: float = 0
) -> tuple[Union[RawImages, Tensor], Tensor]:
    """Collate ``(uint8 image or file bytes, label)`` or ``(..., label, source)`` samples for the device pipeline.

    The worker decodes (libjpeg-turbo) every file smaller than ``decode_below`` bytes (``0``: none,
    ``inf``: all) -- small images decode faster on CPU cores than through a GPU decoder's per-image
    overhead.  When every image is then decoded and of one size the batch is one stacked
    ``(B, 3, H, W)`` uint8 tensor (pinned and moved like any tensor); otherwise a :class:`RawImages`,
    which keeps the samples' ``source`` strings (if given) for the decoder's error messages.
    """
    items = [sample[0] for sample in batch]
    targets = torch.as_tensor([int(sample[1]) for sample in batch], dtype=torch.int64)
    sources = [str(sample[2]) for sample in batch] if batch and all(len(s) > 2 for s in batch) else None
    named = RawImages(items, sources)
    items = [_as_uint8(t, named.describe(i)) for i, t in enumerate(items)]
    items = [
        _decode_cpu(t, named.describe(i)) if t.dim() == 1 and t.numel() < decode_below else t
        for i, t in enumerate(items)
    ]
    if items and all(t.dim() == 3 for t in items) and len({tuple(t.shape) for t in items}) == 1:
        return torch.stack(items), targets
    return RawImages(items, sources), targets
