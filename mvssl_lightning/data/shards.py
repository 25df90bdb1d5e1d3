"""LitData shards: images stored as their original file bytes, streamed with LitData.

``mvssl-data optimize`` (:mod:`mvssl_lightning.data.cli`) writes, under one root (a local directory or
an object-store URI such as ``s3://bucket/imagenet``):

- ``<root>/train`` and, when the input has one, ``<root>/test``: LitData shards written by
  ``litdata.optimize`` (``index.json`` + ``chunk-*.bin``), one item per image:
  ``{"image": <the file's bytes>, "label": <int, -1 unknown>, "source": <what the image was>}``,
  in the input's order;
- ``<root>/mvssl_shards.json``: our metadata (:data:`SHARD_FORMAT`, :data:`SHARD_VERSION`, the class
  names, and per split the image count, byte count and labels), which reading checks.

Two readers, both yielding what the other datasets of :mod:`mvssl_lightning.data.datasets` yield,
``(transform(8-bit RGB PIL image), int label)``, or with ``raw`` the device pipeline's input (a JPEG's
bytes as a 1-D uint8 tensor, anything else decoded to ``(3, H, W)`` uint8, by the rule of
:mod:`mvssl_lightning.data.images`):

- :class:`ShardImages`: a map-style dataset, image ``i`` is the split's ``i``-th item (evaluation,
  ``LabeledDataModule``, the eval loaders of ``MultiViewDataModule``);
- :class:`ShardStream`: a ``litdata.StreamingDataset`` for training.  LitData splits every epoch's
  items over processes, nodes and workers and shuffles them from ``(seed, epoch)``
  (``StreamingDataset(shuffle=True, seed=seed)``); its ``StreamingDataLoader`` holds the position in the
  epoch (``state_dict`` / ``load_state_dict``).  The view transform of image ``index`` runs with every
  random generator seeded from ``(seed, epoch, index)``
  (:func:`mvssl_lightning.data.order.sample_seed`), as ``SeededSamples`` does for map-style data, so a
  sample's views do not depend on the worker that reads it or on an interruption.

Errors name the shard: a local ``chunk-*.bin`` missing or shorter than ``index.json`` says is an error
when the dataset is opened, naming the file and the images it holds; an item that cannot be read (a
corrupt shard) is a ``ValueError`` naming the chunk file and the image index; a root without our
metadata is a ``FileNotFoundError``, and metadata of another format version a ``ValueError``, naming the
file (and the version found).  Object storage
goes through LitData (its credentials rules: e.g. ``AWS_ACCESS_KEY_ID`` / ``~/.aws`` for ``s3://``);
LitData's error is passed on in one line.

Official source: LitData, ``src/litdata/streaming/dataset.py`` (``StreamingDataset``) and
``src/litdata/streaming/dataloader.py`` (``StreamingDataLoader``), github.com/Lightning-AI/litData.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Sequence
from typing import Any, Literal, Optional

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from mvssl_lightning.core.compat import litdata_fs_provider
from mvssl_lightning.data.device.decode import is_jpeg
from mvssl_lightning.data.images import exif_rotated, image_size, open_rgb, rgb_tensor
from mvssl_lightning.data.order import sample_seed, seeded_rngs

os.environ.setdefault("LITDATA_DISABLE_VERSION_CHECK", "1")  # no network at import / construction

from litdata import StreamingDataLoader, StreamingDataset  # noqa: E402
from litdata.streaming.sampler import ChunkedIndex  # noqa: E402

__all__ = [
    "METADATA_NAME",
    "MissingShardSplit",
    "SHARD_FORMAT",
    "SHARD_VERSION",
    "ShardImages",
    "ShardLoader",
    "ShardStream",
    "is_uri",
    "read_metadata",
    "read_text",
    "split_dir",
    "write_text",
]

#: Name of our metadata file at the root of a shard directory.
METADATA_NAME = "mvssl_shards.json"
#: The ``format`` field of the metadata file.
SHARD_FORMAT = "mvssl_lightning litdata shards"
#: Version of the layout (the item fields and the metadata); reading another version is an error.
SHARD_VERSION = 1
#: LitData's ``data_format`` of an item ``{"image": bytes, "label": int, "source": str}``.
DATA_FORMAT = ["bytes", "int", "str"]

ShardSplit = Literal["train", "test"]


class MissingShardSplit(FileNotFoundError):
    """The shards have no such split (the input given to ``mvssl-data optimize`` had none);
    ``build_dataset`` turns it into :class:`~mvssl_lightning.data.datasets.MissingSplit`."""


def is_uri(path: str) -> bool:
    """Whether ``path`` is an object-store URI (``s3://``, ``gs://``...) rather than a local path."""
    return "://" in str(path) and not str(path).startswith("local:")


def split_dir(root: str, split: str) -> str:
    """``<root>/<split>`` for a local directory or a URI."""
    root = str(root)
    return f"{root.rstrip('/')}/{split}" if is_uri(root) else os.path.join(os.path.expanduser(root), split)


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:400]}"


def _provider(path: str, storage_options: Optional[dict]) -> Any:
    """LitData's file-system provider of an object-store URI, so credentials follow its rules."""
    return litdata_fs_provider(path, storage_options)


def read_text(path: str, storage_options: Optional[dict] = None) -> str:
    """A small file's text: a local file, or downloaded from object storage by LitData's provider."""
    if not is_uri(path):
        with open(path, encoding="utf-8") as f:
            return f.read()
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, os.path.basename(path))
        try:
            _provider(path, storage_options).download_file(path, local)
        except Exception as e:  # credentials, bucket, network: LitData's / the SDK's error, in one line
            raise ValueError(f"cannot read {path} through LitData ({_one_line(e)})") from None
        with open(local, encoding="utf-8") as f:
            return f.read()


def write_text(path: str, text: str, storage_options: Optional[dict] = None) -> None:
    """Write a small text file: locally, or uploaded to object storage by LitData's provider."""
    if not is_uri(path):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, os.path.basename(path))
        with open(local, "w", encoding="utf-8") as f:
            f.write(text)
        try:
            _provider(path, storage_options).upload_file(local, path)
        except Exception as e:  # credentials, bucket, network: LitData's / the SDK's error, in one line
            raise ValueError(f"cannot write {path} through LitData ({_one_line(e)})") from None


def read_metadata(root: str, storage_options: Optional[dict] = None) -> dict[str, Any]:
    """The metadata of the shards under ``root``, checked (format, version, splits).

    Raises:
        FileNotFoundError: no metadata file (``root`` is not a shard directory written by ``mvssl-data``).
        ValueError: unreadable metadata, another format or version; the message names the file.
    """
    path = split_dir(root, METADATA_NAME)
    hint = f"write the shards with `mvssl-data optimize --input <images> --output {root}`"
    try:
        text = read_text(path, storage_options)
    except FileNotFoundError:
        raise FileNotFoundError(f"no LitData shards written by mvssl-data at {root}: {path} is missing; "
                                f"{hint}") from None
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); {hint}") from None
    if not isinstance(meta, dict) or meta.get("format") != SHARD_FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ValueError(f"{path} is not mvssl_lightning shard metadata (format {found!r}); {hint}")
    if meta.get("version") != SHARD_VERSION:
        raise ValueError(
            f"{path}: shards written by format version {meta.get('version')!r}, this mvssl_lightning reads "
            f"version {SHARD_VERSION}; rewrite them with `mvssl-data optimize` (or use the mvssl_lightning "
            "version that wrote them)"
        )
    return meta


class _ShardItems:
    """What both readers share: the metadata, the chunk table (for error messages) and the decoding."""

    root: str
    split: str
    raw: bool
    image_transform: Optional[Callable]

    def _read_meta(self, root: str, split: str, storage_options: Optional[dict]) -> str:
        meta = read_metadata(root, storage_options)
        splits = meta.get("splits", {})
        if split not in splits:
            raise MissingShardSplit(
                f"the shards at {root} have no '{split}' split (found {sorted(splits)}); the input given to "
                "`mvssl-data optimize` had none"
            )
        where = split_dir(root, split)
        index_path = split_dir(where, "index.json")
        try:
            index = json.loads(read_text(index_path, storage_options))
        except FileNotFoundError:
            raise FileNotFoundError(f"LitData index {index_path} is missing: incomplete '{split}' shards") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"LitData index {index_path} is not valid JSON ({e})") from None
        data_format = index.get("config", {}).get("data_format")
        if data_format != DATA_FORMAT:
            raise ValueError(
                f"{index_path}: items of format {data_format}, expected {DATA_FORMAT} (image bytes, label, source) "
                f"as written by mvssl-data format version {SHARD_VERSION}"
            )
        info = splits[split]
        self.classes: list[str] = [str(c) for c in meta.get("classes", [])]
        self.targets = np.asarray(info.get("labels", []), dtype=np.int64)
        self.root, self.split, self.source = str(root), split, where
        self._chunk_files = [str(c["filename"]) for c in index["chunks"]]
        self._chunk_starts = np.cumsum([0] + [int(c["chunk_size"]) for c in index["chunks"]])
        n = int(self._chunk_starts[-1])
        if n != int(info.get("images", -1)) or len(self.targets) != n:
            raise ValueError(
                f"{index_path} lists {n} images but {split_dir(root, METADATA_NAME)} says {info.get('images')} "
                f"({len(self.targets)} labels): the '{split}' shards and the metadata do not belong together"
            )
        if not is_uri(where):
            self._check_chunk_files(where, index["chunks"])
        return where

    def _check_chunk_files(self, where: str, chunks: Sequence[dict]) -> None:
        """Local shards: every chunk file present with the size ``index.json`` gives (a truncated copy fails here)."""
        for i, chunk in enumerate(chunks):
            path = os.path.join(where, chunk["filename"])
            first, last = int(self._chunk_starts[i]), int(self._chunk_starts[i + 1]) - 1
            if not os.path.isfile(path):
                raise FileNotFoundError(f"shard {path} (images {first}..{last} of {where}) is missing")
            size, expected = os.path.getsize(path), chunk.get("chunk_bytes")
            if expected is not None and size < int(expected):
                raise ValueError(
                    f"shard {path} (images {first}..{last} of {where}) is truncated: {size} bytes, "
                    f"index.json says {int(expected)}"
                )

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def shard_of(self, index: int) -> str:
        """The chunk file holding image ``index``."""
        chunk = int(np.searchsorted(self._chunk_starts, index, side="right")) - 1
        name = self._chunk_files[chunk] if 0 <= chunk < len(self._chunk_files) else "?"
        return split_dir(self.source, name)

    def describe(self, index: int) -> str:
        """What image ``index`` is, for error messages: the image and the shard holding it."""
        return f"image {index} of the LitData shards {self.source} (in {os.path.basename(self.shard_of(index))})"

    def _failed(self, index: int, e: BaseException) -> ValueError:
        return ValueError(
            f"cannot read image {index} from shard {self.shard_of(index)} (corrupt or truncated shard?): "
            f"{_one_line(e)}"
        )

    def _decode(self, item: dict, index: int, seed: Optional[int] = None, epoch: int = 0) -> tuple[Any, int]:
        data, label = item["image"], int(item["label"])
        what = f"{item.get('source') or 'an image'} ({self.describe(index)})"
        if self.raw:
            tensor = torch.frombuffer(bytearray(data), dtype=torch.uint8)
            if is_jpeg(tensor) and not exif_rotated(bytes(data)):  # sideways JPEGs: decoded here, upright
                return tensor, label
            return rgb_tensor(open_rgb(bytes(data), what)), label
        img: Any = open_rgb(bytes(data), what)
        if self.image_transform is None:
            return img, label
        if seed is None:
            return self.image_transform(img), label
        with seeded_rngs(sample_seed(seed, epoch, index)):
            return self.image_transform(img), label


class ShardImages(_ShardItems, Dataset):
    """One split of LitData shards as a map-style dataset, in the shards' order (the input's order).

    Args:
        root: the directory or URI given to ``mvssl-data optimize --output``.
        split: ``"train"`` or ``"test"``.
        transform: applied to the decoded RGB ``PIL.Image``; ``None`` returns the image.
        raw: yield the device pipeline's input instead (module docstring); ``transform`` unused.
        storage_options: LitData's object-store options (credentials, endpoint).

    Attributes: ``targets`` (int64, ``-1`` unknown), ``classes``, ``source`` (the split's location).
    """

    def __init__(
        self,
        root: str,
        split: ShardSplit = "train",
        transform: Optional[Callable] = None,
        raw: bool = False,
        storage_options: Optional[dict] = None,
    ) -> None:
        self.image_transform = transform
        self.raw = raw
        self.storage_options = storage_options
        self._where = self._read_meta(str(root), split, storage_options)
        self._stream: Optional[StreamingDataset] = None  # opened on first read (in each worker)

    def __len__(self) -> int:
        return len(self.targets)

    def _item(self, index: int) -> dict:
        if self._stream is None:
            self._stream = StreamingDataset(self._where, storage_options=self.storage_options)
        try:
            return self._stream[index]
        except Exception as e:  # ChunkWaitTimeoutError (truncated), struct.error / ValueError (corrupt)...
            raise self._failed(index, e) from None

    def __getitem__(self, index: int) -> tuple[Any, int]:
        index = int(index)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        return self._decode(self._item(index), index)

    def load_image(self, index: int) -> Image.Image:
        """Image ``index`` as an 8-bit RGB ``PIL.Image`` (no transform)."""
        return open_rgb(bytes(self._item(index)["image"]), self.describe(index))

    def image_size(self, index: int) -> tuple[int, int]:
        """``(height, width)`` of image ``index`` (from the file header)."""
        return image_size(bytes(self._item(index)["image"]))

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_stream"] = None  # each worker opens its own reader
        return state

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.source!r}, n={len(self)})"


class ShardStream(_ShardItems, StreamingDataset):
    """One split of LitData shards streamed by LitData: shuffled by ``(seed, epoch)``, split over processes,
    nodes and workers by LitData; the views of image ``index`` drawn with the generators seeded from
    ``(seed, epoch, index)`` (LitData's epoch, counted from 1).

    Args:
        root: the directory or URI given to ``mvssl-data optimize --output``.
        split: ``"train"`` or ``"test"``.
        transform: the view transform, applied to the decoded RGB ``PIL.Image``.
        raw: yield the device pipeline's input instead (module docstring); ``transform`` unused.
        seed: the run's seed (order and augmentation).
        shuffle: shuffle every epoch (training); ``False`` streams in the shards' order.
        storage_options: LitData's object-store options (credentials, endpoint).

    Items are ``(transform(image), label)``, or with ``raw`` ``(image, label, source)`` (the source names
    the shard, for the device decoder's errors).
    """

    def __init__(
        self,
        root: str,
        split: ShardSplit = "train",
        transform: Optional[Callable] = None,
        raw: bool = False,
        seed: int = 0,
        shuffle: bool = True,
        storage_options: Optional[dict] = None,
    ) -> None:
        self.image_transform = transform
        self.raw = raw
        where = self._read_meta(str(root), split, storage_options)
        try:
            StreamingDataset.__init__(self, where, shuffle=shuffle, seed=int(seed) % 2**32,
                                      storage_options=storage_options)
        except Exception as e:
            raise ValueError(f"LitData cannot open the shards at {where} ({_one_line(e)})") from None
        self.run_seed = int(seed)

    def __getitem__(self, index: Any) -> Any:
        position = int(index.index) if isinstance(index, ChunkedIndex) else int(index)
        try:
            item = StreamingDataset.__getitem__(self, index)
        except Exception as e:  # ChunkWaitTimeoutError (truncated), struct.error / ValueError (corrupt)...
            raise self._failed(position, e) from None
        seed = None if self.raw else self.run_seed
        sample, label = self._decode(item, position, seed=seed, epoch=int(self.current_epoch))
        if self.raw:
            return sample, label, self.describe(position)
        return sample, label


class ShardLoader(StreamingDataLoader):
    """LitData's ``StreamingDataLoader`` whose saved position is that of the batches trained on.

    LitData saves how many batches the loader has handed out; a consumer that fetches ahead of the
    training step (Lightning does for loaders without a length, a ``dataloader_iter`` step may) would
    save a batch that was never trained on as done.  With ``position`` (a function giving the batches of
    the current epoch whose step was taken), ``state_dict()`` is :meth:`state_at` that count: LitData's
    state after exactly those batches, which ``load_state_dict`` resumes from.  Other arguments are
    ``StreamingDataLoader``'s.
    """

    def __init__(self, *args: Any, position: Optional[Callable[[], int]] = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._position = position

    def state_dict(self) -> dict[str, Any]:
        if self._position is None:
            return super().state_dict()
        return self.state_at(self._position())

    def state_at(self, batches: int) -> dict[str, Any]:
        """LitData's loader state after ``batches`` batches of this epoch (``state_dict`` with that count)."""
        assert self.batch_size
        samples = int(batches) * int(self.batch_size)
        workers = max(int(self.num_workers), 1)
        dataset = self.dataset
        assert isinstance(dataset, StreamingDataset)
        return {
            "dataset": dict(dataset.state_dict(samples, self.num_workers, self.batch_size)),
            "current_epoch": self.current_epoch,
            "num_samples_yielded": samples,
            "latest_worker_idx": (int(batches) - 1) % workers if batches > 0 else 0,
        }
