"""``DeviceViewStage``: the ``gpu_views`` training stage, from raw batches to augmented views.

With ``gpu_views`` the data module hands its training batches to this stage, which owns everything
about them that is not the data module's:

- the **compiled recipe**: :func:`~mvssl_lightning.data.device.recipe.compile_views` of the CPU
  recipe (it raises :class:`~mvssl_lightning.data.device.registry.UnsupportedOnDevice`, naming the
  step, when a step has no device counterpart; the data module then keeps the CPU path);
- **decoding**: which JPEGs the data-loader workers decode (:meth:`DeviceViewStage.collate_fn`) and
  the batched decode of the rest on the device (:meth:`DeviceViewStage.make_views`), with images larger
  than the recipe's crops need resized first (:func:`max_source_side`), so that a batch padded to its
  largest image stays bounded;
- the **random stream** of the views' parameters: a CPU ``torch.Generator`` seeded per process rank,
  and its checkpoint state.

The rank is passed in when views are made, not when the stage is built: a data module can be set up
before the trainer that runs it knows the process's rank.
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Callable
from typing import Any, Literal, Optional, Union, get_args

import torch
from torch import Tensor

from mvssl_lightning.data.device.decode import RawImages, decode_to_batch, raw_collate
from mvssl_lightning.data.device.pipeline import DeviceViews
from mvssl_lightning.data.device.recipe import compile_views

__all__ = ["AUTO_DEVICE_DECODE_MIN_BYTES", "DECODE_CHOICES", "DecodeMode", "DeviceViewStage", "max_source_side"]

#: Where ``gpu_views`` decodes JPEGs (see ``DeviceViewStage``).
DecodeMode = Literal["auto", "device", "workers"]
DECODE_CHOICES: tuple[str, ...] = get_args(DecodeMode)
#: With ``decode: auto`` on CUDA, JPEG files from this size on (ImageNet photos: ~110 KB) are decoded
#: on the device; smaller ones (CIFAR: ~1 KB) in the workers.
AUTO_DEVICE_DECODE_MIN_BYTES = 16 * 1024

#: The per-rank offset of the generator's first seed: ``initial_seed + RANK_SEED_STRIDE * rank``.
RANK_SEED_STRIDE = 7919


def max_source_side(views: DeviceViews) -> Optional[int]:
    """The longest image side the recipe's crops can use: ``max over views of ceil(S * sqrt(r / s))`` for a
    ``RandomResizedCrop(S, scale=(s, _), ratio)`` with ``r = max(ratio_max, 1 / ratio_min)``.

    At that side a square image gives its smallest, most elongated crop at least ``S`` source pixels across,
    so decoding larger images buys no detail the views keep (crops are drawn relative to the image). None when
    a view takes the whole image (no crop): those need the images' own sizes.
    """
    sides = []
    for view in views.views:
        if view.crop is None:
            return None
        c = view.crop
        r = max(c.ratio[1], 1 / c.ratio[0], 1.0)
        sides.append(math.ceil(c.size * math.sqrt(r / max(c.scale[0], 1e-6))))
    return max(sides)


class DeviceViewStage:
    """Decode and augment raw training batches on their device, with a checkpointed random stream.

    Args:
        recipe: the CPU multi-view recipe (a ``MultiViewRecipe``, a lightly ``MultiViewTransform``...),
            compiled here with the same parameters.
        decode: where JPEGs are decoded: ``"device"`` (batched nvJPEG on CUDA, libjpeg-turbo on the
            CPU device), ``"workers"`` (in the data-loader workers), or ``"auto"``: on CUDA, files of at
            least ``AUTO_DEVICE_DECODE_MIN_BYTES`` on the device and smaller ones in the workers; off
            CUDA, in the workers.
        max_side: images of a batch with mixed sizes whose longer side exceeds this are resized to it
            before padding (``"auto"``: :func:`max_source_side` of the recipe, 915 px for ImageNet's
            ``RandomResizedCrop(224)``; None: never), bounding the batch to ``B x 3 x max_side**2`` bytes.

    Raises:
        UnsupportedOnDevice: a step of ``recipe`` has no device counterpart (the message names it).
    """

    #: The key of the generator state in :meth:`state_dict` (the data module's checkpoint key).
    STATE_KEY = "view_generator"

    def __init__(self, recipe: Callable, decode: DecodeMode = "auto",
                 max_side: Union[int, None, Literal["auto"]] = "auto") -> None:
        self.views = compile_views(recipe)
        self.decode = decode
        #: decoded images of mixed sizes are resized to this longer side before padding (None: never)
        self.max_side = max_source_side(self.views) if max_side == "auto" else max_side
        self._generator: Optional[torch.Generator] = None
        self._pending_state: Optional[Tensor] = None

    # ------------------------------------------------------------------ decode
    def decode_below(self, on_cuda: bool) -> float:
        """File size in bytes under which the workers decode (``0``: none, ``inf``: all)."""
        if self.decode == "workers":
            return math.inf
        if self.decode == "device":
            return 0
        return AUTO_DEVICE_DECODE_MIN_BYTES if on_cuda else math.inf

    def collate_fn(self, on_cuda: bool) -> Callable:
        """The training loader's collate function: raw batches, with the small files decoded in the workers."""
        return functools.partial(raw_collate, decode_below=self.decode_below(on_cuda))

    # ------------------------------------------------------------------ random stream
    def generator(self, rank: int = 0) -> torch.Generator:
        """The CPU generator of the views' random parameters, created on first use.

        Seeded from ``torch.initial_seed()`` (set by ``seed_everything``) plus ``rank``, so runs are
        reproducible and processes draw different views.  After :meth:`load_state_dict` rank 0
        continues the saved stream (checkpoints are written by rank 0) and every other rank reseeds
        from it and its rank, so the processes stay distinct.  ``rank`` is only read on first use.
        """
        if self._generator is None:
            generator = torch.Generator().manual_seed((torch.initial_seed() + RANK_SEED_STRIDE * rank) % 2**63)
            state = self._pending_state
            if state is not None:
                generator.set_state(state)
                if rank != 0:
                    digest = hashlib.sha256(state.numpy().tobytes() + rank.to_bytes(4, "little")).digest()
                    generator.manual_seed(int.from_bytes(digest[:8], "little") % 2**63)
                self._pending_state = None
            self._generator = generator
        return self._generator

    def state_dict(self) -> dict[str, Any]:
        """``{"view_generator": state}`` once the generator exists, else ``{}``."""
        return {self.STATE_KEY: self._generator.get_state()} if self._generator is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue the saved stream (applied when the generator is next needed: the rank is known then).

        Reads only its own key, so the data module can pass its whole state dict; without it, nothing changes.
        """
        state = state_dict.get(self.STATE_KEY)
        if state is not None:
            self._generator = None
            self._pending_state = state

    # ------------------------------------------------------------------ views
    def make_views(self, images: Union[RawImages, Tensor], device: torch.device, rank: int = 0) -> list[Tensor]:
        """Decode (when needed) and augment a raw training batch on ``device``."""
        src, sizes = decode_to_batch(images, device, self.max_side)
        return self.views(src, sizes, self.generator(rank))

    def __call__(self, batch: Any, rank: int = 0) -> Any:
        """A raw ``(images, targets)`` training batch as ``(views, targets)`` on the targets' device.

        Anything else (eval batches of float images, other structures) is returned as it is.
        """
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            return batch
        images, targets = batch
        if isinstance(images, RawImages) or (isinstance(images, Tensor) and images.dtype == torch.uint8):
            return self.make_views(images, targets.device, rank), targets
        return batch
