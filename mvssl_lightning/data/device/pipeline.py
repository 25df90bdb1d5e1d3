"""A compiled multi-view recipe on the device: :class:`DeviceView` (one view) and :class:`DeviceViews` (all).

Built by :func:`mvssl_lightning.data.device.recipe.compile_views` from a CPU recipe; run on a decoded
batch by :meth:`DeviceViews.__call__`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import Tensor

from mvssl_lightning.data.device.geometry import DeviceResizedCrop, crop_patches, resized_crops
from mvssl_lightning.data.device.step import DeviceStep, upload

__all__ = ["DeviceView", "DeviceViews"]


@dataclass(eq=False)
class DeviceView:
    """One view: an optional random resized crop of the source, then per-sample steps.

    ``crop=None`` uses the whole source image (all images of a batch must then have one size).
    ``jigsaw = (grid, cell, patch)`` cuts ``grid**2`` patches after the steps (e.g. InfoMin's jigsaw).
    """

    crop: Optional[DeviceResizedCrop]
    steps: list[DeviceStep] = field(default_factory=list)
    jigsaw: Optional[tuple[int, int, int]] = None

    @property
    def num_outputs(self) -> int:
        return 1 if self.jigsaw is None else self.jigsaw[0] ** 2


class DeviceViews:
    """A multi-view recipe on the device: ``views`` in output order, optional shared flip.

    ``__call__(src, sizes, generator)`` takes the decoded batch ``src (B, 3, H, W)`` uint8 (images
    padded at the bottom/right to the largest) with the true ``sizes (B, 2)`` (height, width; CPU
    int64) and returns the list of view tensors ``(B, 3, S_v, S_v)`` float32, in the recipe's order.
    Repeated uses of one transform (e.g. MVEB's 6 local crops) run as one batch.  ``shared_flip``:
    probability of one horizontal flip per image shared by all views, before their own steps
    (e.g. AMDIM's).
    """

    def __init__(self, views: list[DeviceView], shared_flip: float = 0.0, name: str = "") -> None:
        if not views:
            raise ValueError("a device recipe needs at least one view")
        self.views = views
        self.shared_flip = float(shared_flip)
        self.name = name

    @property
    def num_views(self) -> int:
        return sum(v.num_outputs for v in self.views)

    def _source(self, view: DeviceView, src: Tensor, sizes: Tensor, k: int, gen: torch.Generator) -> Tensor:
        b = src.shape[0]
        index = torch.arange(b).repeat(k)
        if view.crop is not None:
            boxes = torch.cat([view.crop.sample(sizes, gen) for _ in range(k)])
            return resized_crops(src, boxes, index, view.crop.size, bicubic=view.crop.bicubic)
        if not bool((sizes == torch.tensor(src.shape[-2:])).all()):
            raise ValueError(
                "this view recipe has no random resized crop, so every image of a batch must have the "
                f"same size; got sizes from {tuple(sizes.min(0).values.tolist())} to "
                f"{tuple(sizes.max(0).values.tolist())}"
            )
        x = src.float().div_(255) if src.dtype == torch.uint8 else src.float()
        return x.repeat(k, 1, 1, 1)

    def __call__(self, src: Tensor, sizes: Tensor, generator: torch.Generator) -> list[Tensor]:
        b = src.shape[0]
        sizes = sizes.cpu()
        flip = upload(torch.rand(b, generator=generator) < self.shared_flip, src.device)
        uses: dict[int, list[int]] = {}
        for pos, view in enumerate(self.views):
            uses.setdefault(id(view), []).append(pos)
        outputs: list[list[Tensor]] = [[] for _ in self.views]
        for positions in uses.values():
            view, k = self.views[positions[0]], len(positions)
            x = self._source(view, src, sizes, k, generator)
            if self.shared_flip > 0:
                x = torch.where(flip.repeat(k).view(-1, 1, 1, 1), x.flip(-1), x)
            for step in view.steps:
                x = step(x, generator)
            pieces = [x] if view.jigsaw is None else crop_patches(x, *view.jigsaw, generator)
            for j, pos in enumerate(positions):
                outputs[pos] = [p[j * b:(j + 1) * b] for p in pieces]
        return [t for out in outputs for t in out]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, num_views={self.num_views})"
