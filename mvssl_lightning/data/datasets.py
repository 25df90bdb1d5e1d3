"""Datasets: the project's npz image layout, the embedded default, and a name -> dataset factory.

The npz layout:

- ``jpeg_<split>`` (uint8): the split's image files (JPEG, or anything Pillow opens), concatenated;
- ``offsets_<split>`` (N+1, int): image ``i`` is ``jpeg_<split>[offsets[i]:offsets[i+1]]``;
- ``y_<split>`` (N, int): labels, ``-1`` where unknown;
- optional ``class_names`` (str array, index = label).

Raw arrays ``x_<split>`` (N, H, W, 3 uint8) with ``y_<split>`` are accepted instead of the JPEG bytes.
Every dataset here yields ``(transform(PIL image), int label)``.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Optional, Union, get_args

import numpy as np
import torch
import torchvision.transforms as T
from PIL import Image
from torch.utils.data import Dataset

__all__ = [
    "DATASET_NAMES",
    "NUM_CLASSES",
    "NpzImageDataset",
    "build_dataset",
    "embedded_default_path",
]

#: A dataset split.
Split = Literal["train", "test"]
SPLITS: tuple[str, ...] = get_args(Split)
#: Names accepted by :func:`build_dataset` (and ``MultiViewDataModule(dataset=...)``).
DATASET_NAMES = ("default", "cifar10", "cifar100", "stl10", "imagefolder", "npz")
#: Class counts known without reading any file.
NUM_CLASSES = {"default": 10, "cifar10": 10, "cifar100": 100, "stl10": 10}

PathLike = Union[str, os.PathLike]


def embedded_default_path() -> Path:
    """Path of the embedded default dataset shipped with the package.

    ``assets/cifar10_default.npz``: a class-balanced CIFAR-10 subset (500 train + 100 test images per
    class, the original JPEG bytes), cut by ``scripts/make_default_dataset.py``.
    """
    ref = resources.files("mvssl_lightning.data").joinpath("assets", "cifar10_default.npz")
    path = Path(str(ref))
    if not path.is_file():
        raise FileNotFoundError(
            f"the embedded default dataset is missing at {path}; reinstall mvssl_lightning or "
            "regenerate it with scripts/make_default_dataset.py"
        )
    return path


class NpzImageDataset(Dataset):
    """Images stored in one npz file (or a mapping of arrays), decoded lazily with Pillow.

    Args:
        path_or_arrays: path of an ``.npz`` file in the project's layout, or a mapping with the
            same keys (e.g. a ``dict`` of numpy arrays).
        split: ``"train"`` or ``"test"``.
        transform: applied to the decoded RGB ``PIL.Image``; ``None`` returns the image itself.
        raw: yield the image undecoded for the device view pipeline (``gpu_views``): the file's
            bytes as a 1-D uint8 tensor, or ``(3, H, W)`` uint8 for raw arrays; ``transform`` unused.

    The split's arrays are read into memory once (npz members cannot be memory-mapped); each item
    decodes one image. Attributes: ``targets`` (int64 array, ``-1`` unknown), ``classes`` (names;
    ``class_names`` when stored, else ``"0".."K-1"``), ``source`` (where the data came from).
    """

    def __init__(
        self,
        path_or_arrays: Union[PathLike, Mapping[str, Any]],
        split: Split = "train",
        transform: Optional[Callable] = None,
        raw: bool = False,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.split = split
        self.transform = transform
        self.raw = raw
        if isinstance(path_or_arrays, Mapping):
            self.source = "<arrays>"
            arrays, keys = path_or_arrays, set(path_or_arrays.keys())
        else:
            path = Path(path_or_arrays)
            if not path.is_file():
                raise FileNotFoundError(f"npz dataset file not found: {path}")
            self.source = str(path)
            arrays = np.load(path, allow_pickle=False)
            keys = set(arrays.files)

        jpeg_keys = (f"jpeg_{split}", f"offsets_{split}", f"y_{split}")
        raw_keys = (f"x_{split}", f"y_{split}")
        self._jpeg: Optional[np.ndarray] = None
        self._offsets: Optional[np.ndarray] = None
        self._x: Optional[np.ndarray] = None
        if all(k in keys for k in jpeg_keys):
            self._jpeg = np.ascontiguousarray(arrays[jpeg_keys[0]], dtype=np.uint8).reshape(-1)
            self._offsets = np.asarray(arrays[jpeg_keys[1]], dtype=np.int64).reshape(-1)
            n = len(self._offsets) - 1
        elif all(k in keys for k in raw_keys):
            self._x = np.asarray(arrays[raw_keys[0]])
            if self._x.ndim != 4 or self._x.shape[-1] != 3 or self._x.dtype != np.uint8:
                raise ValueError(
                    f"{raw_keys[0]} in {self.source} must be (N, H, W, 3) uint8, "
                    f"got {self._x.shape} {self._x.dtype}"
                )
            n = len(self._x)
        else:
            raise ValueError(
                f"{self.source} has no '{split}' split in a known layout: expected keys "
                f"{list(jpeg_keys)} (JPEG bytes) or {list(raw_keys)} (raw uint8 arrays); "
                f"found {sorted(keys)}"
            )
        self.targets = np.asarray(arrays[f"y_{split}"]).astype(np.int64).reshape(-1)
        if len(self.targets) != n:
            raise ValueError(
                f"{self.source}: y_{split} has {len(self.targets)} labels for {n} images in split '{split}'"
            )
        if self._offsets is not None and self._jpeg is not None:
            o = self._offsets
            if n < 0 or (n > 0 and (o[0] < 0 or np.any(np.diff(o) < 0) or o[-1] > len(self._jpeg))):
                raise ValueError(
                    f"{self.source}: offsets_{split} must be non-decreasing and within jpeg_{split} "
                    f"({len(self._jpeg)} bytes)"
                )
        if "class_names" in keys:
            self.classes = [str(c) for c in np.asarray(arrays["class_names"]).reshape(-1)]
        else:
            k = int(self.targets.max()) + 1 if n and self.targets.max() >= 0 else 0
            self.classes = [str(i) for i in range(k)]
        if hasattr(arrays, "close"):
            arrays.close()

    @property
    def num_classes(self) -> int:
        """Number of classes: ``len(class_names)`` when stored, else ``max(label) + 1``."""
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.targets)

    def load_image(self, index: int) -> Image.Image:
        """Decode image ``index`` as an RGB ``PIL.Image`` (no transform)."""
        if self._x is not None:
            return Image.fromarray(np.ascontiguousarray(self._x[index]))
        assert self._jpeg is not None and self._offsets is not None
        data = self._jpeg[self._offsets[index] : self._offsets[index + 1]].tobytes()
        try:
            with Image.open(io.BytesIO(data)) as img:
                return img.convert("RGB")
        except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError... on bad bytes
            raise ValueError(
                f"corrupt image {index} in split '{self.split}' of {self.source}: {type(e).__name__}: {e}"
            ) from e

    def load_raw(self, index: int) -> torch.Tensor:
        """Image ``index`` undecoded: file bytes (1-D uint8), or ``(3, H, W)`` uint8 for raw arrays."""
        if self._x is not None:
            return torch.from_numpy(np.ascontiguousarray(self._x[index].transpose(2, 0, 1)))
        assert self._jpeg is not None and self._offsets is not None
        return torch.from_numpy(self._jpeg[self._offsets[index] : self._offsets[index + 1]].copy())

    def __getitem__(self, index: int) -> tuple[Any, int]:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        if self.raw:
            return self.load_raw(index), int(self.targets[index])
        img = self.load_image(index)
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.targets[index])

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.source!r}, split={self.split!r}, n={len(self)})"


def read_raw_image(path: str) -> torch.Tensor:
    """An image file for the device pipeline: its bytes if it is a JPEG, else decoded ``(3, H, W)`` uint8."""
    from torchvision.io import ImageReadMode, decode_image, read_file

    from mvssl_lightning.data.device.decode import is_jpeg

    data = read_file(path)
    if is_jpeg(data):
        return data
    try:
        return decode_image(data, mode=ImageReadMode.RGB)
    except RuntimeError:  # a format torchvision cannot decode: let Pillow try
        try:
            with Image.open(path) as img:
                return T.PILToTensor()(img.convert("RGB"))
        except Exception as e:
            raise ValueError(f"corrupt or unreadable image {path}: {type(e).__name__}: {e}") from e


def _require_root(name: str, root: Optional[PathLike]) -> Path:
    if root is None:
        raise ValueError(f"dataset '{name}' needs a data directory (data_dir / root)")
    return Path(root).expanduser()


def _torchvision(name: str, cls: Callable, root: Path, download: bool, **kwargs: Any) -> Dataset:
    try:
        return cls(root=str(root), download=download, **kwargs)
    except RuntimeError as e:  # torchvision: "Dataset not found or corrupted. You can use download=True ..."
        if download:
            raise
        raise FileNotFoundError(
            f"{name} files not found under {root} ({e}). Set `download: true` "
            f"(--data.download true) to download them, or point data_dir at an existing copy."
        ) from e


def build_dataset(
    name: str,
    root: Optional[PathLike] = None,
    split: Split = "train",
    transform: Optional[Callable] = None,
    download: bool = False,
    include_unlabeled: bool = False,
    raw: bool = False,
) -> Dataset:
    """Build a dataset yielding ``(transform(image), int label)`` by name.

    Args:
        name: one of :data:`DATASET_NAMES`:
            ``"default"`` (the embedded CIFAR-10 subset; ``root`` ignored),
            ``"cifar10"``/``"cifar100"``/``"stl10"`` (torchvision; ``root`` is their directory),
            ``"imagefolder"`` (torchvision ``ImageFolder`` at ``root/train`` and ``root/val``),
            ``"npz"`` (``root`` is the ``.npz`` file).
        root: data directory or file, see ``name``.
        split: ``"train"`` or ``"test"`` (ImageFolder reads ``val/``, else ``test/``, for ``"test"``).
        transform: applied to every PIL image.
        download: let torchvision download missing files.
        include_unlabeled: for the self-supervised training set, add unlabeled images where the
            dataset has them (STL-10: ``"train+unlabeled"``, label ``-1``). Ignored elsewhere.
        raw: yield undecoded images for the device view pipeline instead of ``transform(image)``:
            JPEG file bytes (1-D uint8) where the data are JPEG files (npz, ImageFolder), else
            ``(3, H, W)`` uint8 tensors.

    Raises:
        ValueError: unknown name or split.
        FileNotFoundError: the data is not where ``root`` says.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    name = name.lower()
    if raw:
        transform = T.PILToTensor() if name not in ("default", "npz") else None
    if name == "default":
        return NpzImageDataset(embedded_default_path(), split, transform, raw=raw)
    if name == "npz":
        path = _require_root(name, root)
        if not path.is_file():
            raise FileNotFoundError(f"npz dataset file not found: {path}")
        return NpzImageDataset(path, split, transform, raw=raw)
    if name == "imagefolder":
        from torchvision.datasets import ImageFolder

        base = _require_root(name, root)
        candidates = ["train"] if split == "train" else ["val", "test"]
        for sub in candidates:
            if (base / sub).is_dir():
                if raw:
                    return ImageFolder(str(base / sub), loader=read_raw_image)
                return ImageFolder(str(base / sub), transform=transform)
        raise FileNotFoundError(
            f"imagefolder directory not found: {base / candidates[0]} (expected {base}/train/<class>/* "
            f"and {base}/val/<class>/*)"
        )
    if name in ("cifar10", "cifar100"):
        from torchvision.datasets import CIFAR10, CIFAR100

        cls = CIFAR10 if name == "cifar10" else CIFAR100
        root = _require_root(name, root)
        return _torchvision(name, cls, root, download, train=split == "train", transform=transform)
    if name == "stl10":
        from torchvision.datasets import STL10

        root = _require_root(name, root)
        stl_split = "test" if split == "test" else ("train+unlabeled" if include_unlabeled else "train")
        return _torchvision(name, STL10, root, download, split=stl_split, transform=transform)
    raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASET_NAMES)}")


def peek_num_classes(name: str, root: Optional[PathLike] = None) -> Optional[int]:
    """Number of classes of a dataset without decoding images (reads at most labels/dir names).

    Returns ``None`` when it cannot be determined (e.g. the files are not there yet).
    """
    name = name.lower()
    if name in NUM_CLASSES:
        return NUM_CLASSES[name]
    if root is None:
        return None
    path = Path(root).expanduser()
    if name == "imagefolder":
        train = path / "train"
        if not train.is_dir():
            return None
        return sum(1 for p in train.iterdir() if p.is_dir())
    if name == "npz":
        if not path.is_file():
            return None
        with np.load(path, allow_pickle=False) as d:
            if "class_names" in d.files:
                return int(len(d["class_names"]))
            ys = [d[k] for k in ("y_train", "y_test") if k in d.files]
            return int(max(int(y.max()) for y in ys if len(y)) + 1) if ys else None
    return None
