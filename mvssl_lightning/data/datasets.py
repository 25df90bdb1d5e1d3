"""Datasets: the project's npz image layout, the embedded default, and a name -> dataset factory.

The npz layout:

- ``jpeg_<split>`` (uint8): the split's image files (JPEG, or anything Pillow opens), concatenated;
- ``offsets_<split>`` (N+1, int): image ``i`` is ``jpeg_<split>[offsets[i]:offsets[i+1]]``;
- ``y_<split>`` (N, int): labels, ``-1`` where unknown;
- optional ``class_names`` (str array, index = label).

Raw arrays ``x_<split>`` (N, H, W, 3 uint8) with ``y_<split>`` are accepted instead of the JPEG bytes.
Without ``class_names`` the class count is ``max(label) + 1`` over every split of the file, so all splits
agree on it.

An image folder is read by one of two layouts (``labels``):

- ``folders``: ``root/train/<class>/*`` and ``root/val/<class>/*`` (or ``test/``), labelled by class folder.
  The classes come from ``train/`` (or from ``class_list``, a subset of them): one class-to-index map for
  every split, and a class folder in ``val/`` that ``train/`` lacks is an error.
- ``none``: unlabelled images at any depth (labels ``-1``): ``root/train/**`` and ``root/val/**`` when
  ``root/train`` exists, else every image under ``root`` as the training split, with no evaluation split
  (:class:`MissingSplit`).

``auto`` (the default) is ``folders`` when ``root/train`` exists and ``none`` otherwise. Folder scans skip
hidden entries and non-image files and print how many images they found (:mod:`mvssl_lightning.data.files`).
A list file (``filelist``) names the images, with optional labels and splits
(:class:`~mvssl_lightning.data.files.FileList`).

Every dataset here yields ``(transform(PIL image), int label)``; image files become 8-bit RGB by the
rule of :mod:`mvssl_lightning.data.images` (16-bit as ``value >> 8``, EXIF orientation applied), and a
file that cannot be read is a ``ValueError`` naming it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Optional, Union, get_args

import numpy as np
import torch
import torchvision.transforms as T
from PIL import Image
from torch.utils.data import Dataset, Subset
from torchvision.datasets import ImageFolder

from mvssl_lightning.data.device.decode import is_jpeg
from mvssl_lightning.data.files import (
    IMAGE_EXTENSIONS,
    Scan,
    is_hidden,
    is_image_file,
    read_filelist,
    report_found,
    scan_images,
    select_classes,
)
from mvssl_lightning.data.images import exif_rotated, image_size, open_rgb, rgb_tensor

__all__ = [
    "DATASET_NAMES",
    "NUM_CLASSES",
    "ImageFiles",
    "ImageFolderSplit",
    "MissingSplit",
    "NpzImageDataset",
    "WithSources",
    "build_dataset",
    "embedded_default_path",
    "imagefolder_classes",
    "sample_image_sizes",
]

#: A dataset split.
Split = Literal["train", "test"]
SPLITS: tuple[str, ...] = get_args(Split)
#: Names accepted by :func:`build_dataset` (and ``MultiViewDataModule(dataset=...)``).
DatasetName = Literal["default", "cifar10", "cifar100", "stl10", "imagefolder", "npz", "filelist", "litdata"]
DATASET_NAMES: tuple[str, ...] = get_args(DatasetName)
#: Class counts known without reading any file.
NUM_CLASSES = {"default": 10, "cifar10": 10, "cifar100": 100, "stl10": 10}
#: How an image folder is labelled (module docstring).
FolderLabels = Literal["auto", "folders", "none"]
FOLDER_LABELS: tuple[str, ...] = get_args(FolderLabels)


class MissingSplit(FileNotFoundError):
    """The dataset has no such split (e.g. an unlabelled folder or a list file without evaluation images)."""

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


def _open_npz(path: Path) -> Any:
    """``np.load`` of an npz archive; ``ValueError`` naming ``path`` when it is not one."""
    expected = (
        "expected a NumPy .npz archive (np.savez) with jpeg_<split> + offsets_<split> + y_<split> or "
        "x_<split> + y_<split>"
    )
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic == b"\x93NUMPY":
        raise ValueError(f"{path} holds a single array (.npy), not an .npz archive; {expected}")
    if not magic.startswith(b"PK"):  # numpy would try it as a pickle and suggest allow_pickle
        raise ValueError(f"{path} is not an .npz file (no zip header; truncated or another format); {expected}")
    try:
        return np.load(path, allow_pickle=False)
    except Exception as e:  # zipfile.BadZipFile (e.g. a truncated archive), EOFError...
        raise ValueError(f"{path} is not a readable .npz file ({type(e).__name__}: {e}); {expected}") from e


def _read(arrays: Any, key: str, source: str) -> np.ndarray:
    """``arrays[key]`` as an array; ``ValueError`` naming the file and key when it cannot be read."""
    try:
        return np.asarray(arrays[key])
    except Exception as e:  # a truncated member (BadZipFile, zlib.error, EOFError), object arrays...
        raise ValueError(f"{source}: cannot read array {key!r} ({type(e).__name__}: {e})") from e


def _integer_labels(y: np.ndarray, what: str) -> np.ndarray:
    """``y`` as int64; ``ValueError`` naming ``what`` and the first value that is not an integer (3.7 would
    otherwise become 3 without a word)."""
    if y.dtype.kind in "iu":
        return y.astype(np.int64)
    if y.dtype.kind == "b" or y.dtype.kind not in "f":
        raise ValueError(f"{what} must hold integer labels, got dtype {y.dtype}")
    bad = np.flatnonzero(~np.isfinite(y) | (y != np.round(y)))
    if len(bad):
        raise ValueError(
            f"{what} must hold integer labels; entry {int(bad[0])} is {y[bad[0]].item()!r} "
            f"({len(bad)} non-integer value(s))"
        )
    return y.astype(np.int64)


def _npz_num_classes(arrays: Any, keys: set[str], source: str) -> Optional[int]:
    """``len(class_names)`` when stored, else ``max(label) + 1`` over every ``y_<split>`` of the file."""
    if "class_names" in keys:
        return int(_read(arrays, "class_names", source).size)
    ys = [_integer_labels(_read(arrays, f"y_{split}", source).reshape(-1), f"{source}: y_{split}")
          for split in SPLITS if f"y_{split}" in keys]
    maxima = [int(y.max()) for y in ys if y.size]
    return max(maxima) + 1 if maxima else None


class NpzImageDataset(Dataset):
    """Images stored in one npz file (or a mapping of arrays), decoded lazily with Pillow.

    Args:
        path_or_arrays: path of an ``.npz`` file in the project's layout, or a mapping with the
            same keys (e.g. a ``dict`` of numpy arrays).
        split: ``"train"`` or ``"test"``.
        transform: applied to the decoded RGB ``PIL.Image``; ``None`` returns the image itself.
        raw: yield the image undecoded for the device view pipeline (``gpu_views``): a JPEG file's
            bytes as a 1-D uint8 tensor; any other image decoded to ``(3, H, W)`` uint8 (also for raw
            arrays); ``transform`` unused.

    The split's arrays are read into memory once (npz members cannot be memory-mapped); each item
    decodes one image. Attributes: ``targets`` (int64 array, ``-1`` unknown), ``classes`` (names;
    ``class_names`` when stored, else ``"0".."K-1"`` with ``K = max(label) + 1`` over all splits of the
    file), ``source`` (where the data came from).

    Raises:
        ValueError: the file is not an npz archive, an array cannot be read, the split's keys are
            missing (the message lists the expected ones), or a label is below -1 or not in
            ``class_names``; every message names the file.
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
            arrays = _open_npz(path)
            keys = set(arrays.files)
        try:
            self._load(arrays, keys)
        finally:
            if hasattr(arrays, "close"):
                arrays.close()

    def _load(self, arrays: Any, keys: set[str]) -> None:
        split, source = self.split, self.source
        jpeg_keys = (f"jpeg_{split}", f"offsets_{split}", f"y_{split}")
        raw_keys = (f"x_{split}", f"y_{split}")
        self._jpeg: Optional[np.ndarray] = None
        self._offsets: Optional[np.ndarray] = None
        self._x: Optional[np.ndarray] = None
        if all(k in keys for k in jpeg_keys):
            self._jpeg = np.ascontiguousarray(_read(arrays, jpeg_keys[0], source), dtype=np.uint8).reshape(-1)
            self._offsets = _read(arrays, jpeg_keys[1], source).astype(np.int64).reshape(-1)
            n = len(self._offsets) - 1
        elif all(k in keys for k in raw_keys):
            self._x = _read(arrays, raw_keys[0], source)
            if self._x.ndim != 4 or self._x.shape[-1] != 3 or self._x.dtype != np.uint8:
                raise ValueError(
                    f"{raw_keys[0]} in {source} must be (N, H, W, 3) uint8, "
                    f"got {self._x.shape} {self._x.dtype}"
                )
            n = len(self._x)
        else:
            raise ValueError(
                f"{source} has no '{split}' split in a known layout: expected keys "
                f"{list(jpeg_keys)} (JPEG bytes) or {list(raw_keys)} (raw uint8 arrays); "
                f"found {sorted(keys)}"
            )
        self.targets = _integer_labels(_read(arrays, f"y_{split}", source).reshape(-1), f"{source}: y_{split}")
        if len(self.targets) != n:
            raise ValueError(
                f"{source}: y_{split} has {len(self.targets)} labels for {n} images in split '{split}'"
            )
        if self._offsets is not None and self._jpeg is not None:
            o = self._offsets
            if n < 0 or (n > 0 and (o[0] < 0 or np.any(np.diff(o) < 0) or o[-1] > len(self._jpeg))):
                raise ValueError(
                    f"{source}: offsets_{split} must be non-decreasing and within jpeg_{split} "
                    f"({len(self._jpeg)} bytes)"
                )
        if "class_names" in keys:
            self.classes = [str(c) for c in _read(arrays, "class_names", source).reshape(-1)]
        else:
            self.classes = [str(i) for i in range(_npz_num_classes(arrays, keys, source) or 0)]
        if n > 0:
            lo, hi = int(self.targets.min()), int(self.targets.max())
            if lo < -1 or ("class_names" in keys and hi >= len(self.classes)):
                raise ValueError(
                    f"{source}: y_{split} holds labels {lo}..{hi}; labels must be -1 (unknown) or "
                    f"0..{len(self.classes) - 1} ({len(self.classes)} class_names)"
                )

    @property
    def num_classes(self) -> int:
        """Number of classes: ``len(class_names)`` when stored, else ``max(label) + 1`` over all splits."""
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.targets)

    def describe(self, index: int) -> str:
        """What image ``index`` is, for error messages: ``image <index> in split '<split>' of <file>``."""
        return f"image {index} in split '{self.split}' of {self.source}"

    def _bytes(self, index: int) -> bytes:
        assert self._jpeg is not None and self._offsets is not None
        return self._jpeg[self._offsets[index] : self._offsets[index + 1]].tobytes()

    def load_image(self, index: int) -> Image.Image:
        """Decode image ``index`` as an 8-bit RGB ``PIL.Image`` (no transform)."""
        if self._x is not None:
            return Image.fromarray(np.ascontiguousarray(self._x[index]))
        return open_rgb(self._bytes(index), self.describe(index))

    def load_raw(self, index: int) -> torch.Tensor:
        """Image ``index`` for the device pipeline: a JPEG's bytes (1-D uint8), else ``(3, H, W)`` uint8.

        Non-JPEG files (PNG, 16-bit, palette...) are decoded here, by the CPU path's rule, so both paths
        read them alike.
        """
        if self._x is not None:
            return torch.from_numpy(np.ascontiguousarray(self._x[index].transpose(2, 0, 1)))
        assert self._jpeg is not None and self._offsets is not None
        data = torch.from_numpy(self._jpeg[self._offsets[index] : self._offsets[index + 1]].copy())
        if is_jpeg(data) and not exif_rotated(self._bytes(index)):
            return data
        return rgb_tensor(open_rgb(self._bytes(index), self.describe(index)))

    def image_size(self, index: int) -> tuple[int, int]:
        """``(height, width)`` of image ``index`` (from the file header; nothing is decoded)."""
        if self._x is not None:
            return int(self._x.shape[1]), int(self._x.shape[2])
        return image_size(self._bytes(index))

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


def load_rgb(path: str) -> Image.Image:
    """An image file as 8-bit RGB (``mvssl_lightning.data.images``); errors name the file."""
    return open_rgb(path, f"image file {path}")


def read_raw_image(path: str) -> torch.Tensor:
    """An image file for the device pipeline: its bytes if it is a JPEG, else decoded ``(3, H, W)`` uint8.

    Non-JPEG files are decoded with Pillow by the CPU path's rule (16-bit as ``value >> 8``, palette
    looked up...), so both paths read them alike.
    """
    what = f"image file {path}"
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ValueError(f"cannot read {what} ({type(e).__name__}: {e})") from e
    if data[:2] == b"\xff\xd8" and not exif_rotated(data):  # JPEG: decoded in batches on the device or
        return torch.frombuffer(bytearray(data), dtype=torch.uint8)  # in the collate
    return rgb_tensor(open_rgb(data, what))


def imagefolder_classes(train_dir: Path) -> list[str]:
    """The class folders of ``train_dir``, sorted (torchvision's rule; hidden folders are not classes):
    index = label in every split."""
    if not train_dir.is_dir():
        raise FileNotFoundError(
            f"imagefolder directory not found: {train_dir} (expected {train_dir.parent}/train/<class>/* "
            f"and {train_dir.parent}/val/<class>/*)"
        )
    classes = sorted(entry.name for entry in os.scandir(train_dir) if entry.is_dir() and not is_hidden(entry.name))
    if not classes:
        raise FileNotFoundError(f"no class folders in {train_dir} (expected {train_dir}/<class>/<image files>)")
    return classes


class ImageFolderSplit(ImageFolder):
    """One split of an image folder, labelled by a given class list (the ``train/`` folders).

    Every split thus shares one class-to-index map. A class folder of ``root`` missing from
    ``known_classes`` (default ``classes``) is a ``ValueError`` naming it; folders of known classes that are
    not in ``classes`` (a ``class_list`` subset) are left out. A class may have no folder (or no images) in
    ``root`` unless ``require_all`` (the training split, which defines the classes). Hidden files and
    folders and non-image files are skipped and counted (one line, :func:`~mvssl_lightning.data.files.report_found`).
    Images are read as 8-bit RGB (:func:`load_rgb`), or for ``raw`` as :func:`read_raw_image` gives them;
    errors name the file.
    """

    def __init__(
        self,
        root: PathLike,
        classes: list[str],
        transform: Optional[Callable] = None,
        raw: bool = False,
        require_all: bool = False,
        classes_from: Optional[PathLike] = None,
        known_classes: Optional[list[str]] = None,
    ) -> None:
        self._given_classes = list(classes)
        self._known_classes = set(known_classes if known_classes is not None else classes)
        self._classes_from = classes_from
        self.scan = Scan()
        base = os.path.abspath(root)

        def keep(path: str) -> bool:  # torchvision calls this for every file under the class folders
            relative = os.path.relpath(path, base).split(os.sep)
            if any(is_hidden(part) for part in relative):
                self.scan.hidden += 1
                return False
            if not is_image_file(relative[-1]):
                self.scan.non_image += 1
                return False
            return True

        super().__init__(str(root), transform=None if raw else transform,
                         loader=read_raw_image if raw else load_rgb, allow_empty=True, is_valid_file=keep)
        self.scan.files = [path for path, _ in self.samples]
        report_found(f"imagefolder {root}", self.scan)
        counts = np.bincount(np.asarray(self.targets, dtype=np.int64), minlength=len(self.classes))
        if require_all and (counts == 0).any():
            empty = [str(Path(root) / c) for c, k in zip(self.classes, counts, strict=True) if k == 0]
            raise FileNotFoundError(f"class folder(s) without image files: {', '.join(empty)}")
        if not len(self.samples):
            raise FileNotFoundError(f"no image files in the class folders of {root}")

    def find_classes(self, directory: Union[str, os.PathLike]) -> tuple[list[str], dict[str, int]]:
        """The given classes; a class folder of ``directory`` not among the known ones is an error naming it."""
        folders = [e.name for e in os.scandir(str(directory)) if e.is_dir() and not is_hidden(e.name)]
        extra = sorted(name for name in folders if name not in self._known_classes)
        if extra:
            where = self._classes_from or "the training split"
            raise ValueError(
                f"class folder(s) {', '.join(str(Path(directory) / c) for c in extra)} not in {where}: labels "
                f"come from the training split's class folders ({', '.join(sorted(self._known_classes))}), so "
                "every class of another split must have a folder there too"
            )
        return list(self._given_classes), {c: i for i, c in enumerate(self._given_classes)}

    def describe(self, index: int) -> str:
        """What image ``index`` is, for error messages: ``image file <path>``."""
        return f"image file {self.samples[index][0]}"

    def image_size(self, index: int) -> tuple[int, int]:
        """``(height, width)`` of image ``index`` (from the file header; nothing is decoded)."""
        return image_size(self.samples[index][0])


class ImageFiles(Dataset):
    """Images named by a list of file paths, with their labels (``-1``: unknown) and the class names.

    The dataset of an unlabelled image folder (every image under it, labels ``-1``) and of a list file.
    Items are ``(transform(PIL RGB image), label)``, or for ``raw`` what :func:`read_raw_image` gives;
    attributes ``samples`` (``(path, label)`` pairs, as torchvision's ``ImageFolder``), ``targets``,
    ``classes``, ``source``.
    """

    def __init__(
        self,
        paths: list[str],
        targets: list[int],
        classes: list[str],
        source: str,
        transform: Optional[Callable] = None,
        raw: bool = False,
    ) -> None:
        if len(paths) != len(targets):
            raise ValueError(f"{source}: {len(paths)} paths for {len(targets)} labels")
        self.samples = list(zip(paths, targets, strict=True))
        self.targets = np.asarray(targets, dtype=np.int64)
        self.classes = list(classes)
        self.source = source
        self.transform = transform
        self.raw = raw

    def __len__(self) -> int:
        return len(self.samples)

    def describe(self, index: int) -> str:
        """What image ``index`` is, for error messages: ``image file <path>``."""
        return f"image file {self.samples[index][0]}"

    def image_size(self, index: int) -> tuple[int, int]:
        """``(height, width)`` of image ``index`` (from the file header; nothing is decoded)."""
        return image_size(self.samples[index][0])

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, label = self.samples[index]
        if self.raw:
            return read_raw_image(path), int(label)
        img = load_rgb(path)
        if self.transform is not None:
            img = self.transform(img)
        return img, int(label)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.source!r}, n={len(self)})"


def unlabelled_folder(root: Path, transform: Optional[Callable], raw: bool) -> ImageFiles:
    """Every image under ``root`` at any depth, labels ``-1`` (hidden entries and non-image files skipped
    and counted); a folder with no images is an error naming it."""
    if not root.is_dir():
        raise FileNotFoundError(
            f"imagefolder directory not found: {root} (expected {root}/train/<class>/* and {root}/val/<class>/*, "
            "or a folder of unlabelled images at any depth)"
        )
    scan = scan_images(root)
    report_found(f"imagefolder {root} (unlabelled)", scan)
    if not scan.files:
        raise FileNotFoundError(
            f"no image files under {root} (at any depth; extensions {', '.join(IMAGE_EXTENSIONS)}; "
            f"{scan.hidden} hidden and {scan.non_image} other file(s) skipped)"
        )
    return ImageFiles(scan.files, [-1] * len(scan.files), [], f"{root} (unlabelled)", transform, raw)


def folder_labels(root: Path, labels: str) -> str:
    """``folders`` or ``none``: how the image folder at ``root`` is labelled (``auto``: module docstring)."""
    if labels not in FOLDER_LABELS:
        raise ValueError(f"labels must be one of {FOLDER_LABELS}, got {labels!r}")
    if labels != "auto":
        return labels
    return "folders" if (root / "train").is_dir() else "none"


def _imagefolder(base: Path, split: Split, transform: Optional[Callable], raw: bool, labels: str,
                 class_list: Optional[str]) -> Dataset:
    layout = folder_labels(base, labels)
    candidates = ["train"] if split == "train" else ["val", "test"]
    if layout == "none":
        if class_list is not None:
            raise ValueError("class_list needs labelled class folders (labels: folders), not an unlabelled folder")
        if not (base / "train").is_dir():
            if split == "train":
                return unlabelled_folder(base, transform, raw)
            raise MissingSplit(f"the unlabelled image folder {base} has no evaluation split (no {base}/train and "
                               f"{base}/val folders: every image under {base} is a training image)")
        for sub in candidates:
            if (base / sub).is_dir():
                return unlabelled_folder(base / sub, transform, raw)
        raise MissingSplit(f"imagefolder {base} has no evaluation split ({base}/val or {base}/test)")
    all_classes = imagefolder_classes(base / "train")
    classes = all_classes if class_list is None else select_classes(all_classes, class_list, f"{base / 'train'}")
    for sub in candidates:
        if (base / sub).is_dir():
            return ImageFolderSplit(base / sub, classes, transform, raw=raw, require_all=split == "train",
                                    classes_from=base / "train", known_classes=all_classes)
    if split == "train":
        raise FileNotFoundError(f"imagefolder directory not found: {base / 'train'}")
    raise MissingSplit(
        f"imagefolder directory not found: {base / candidates[0]} (expected {base}/train/<class>/* "
        f"and {base}/val/<class>/*)"
    )


def _filelist(path: Path, split: Split, transform: Optional[Callable], raw: bool,
              class_list: Optional[str]) -> Dataset:
    entries = read_filelist(path)
    paths, targets = entries.split(split)
    classes = entries.classes
    if class_list is not None:
        if not classes or all(c.isdigit() for c in classes):
            raise ValueError(f"class_list needs class names in the label column of filelist {path}")
        kept = select_classes(classes, class_list, f"filelist {path}")
        index = {classes.index(c): i for i, c in enumerate(kept)}
        chosen = [(p, index[t]) for p, t in zip(paths, targets, strict=True) if t in index]
        paths, targets, classes = [p for p, _ in chosen], [t for _, t in chosen], kept
    if not paths:
        if split == "test":
            raise MissingSplit(f"filelist {path} has no evaluation entries (split column val or test)")
        raise ValueError(f"filelist {path} has no training entries")
    report_found(f"filelist {path} ({split} split)", Scan(files=paths))
    return ImageFiles(paths, targets, classes, f"filelist {path}", transform, raw)


class WithSources(Dataset):
    """``(item, label, source)`` for every ``(item, label)`` of ``dataset``: ``source`` names the image.

    The device pipeline's collate keeps the sources with the undecoded images, so decoding errors name
    the file (or npz entry) instead of a position in the batch.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Any, int, str]:
        item, label = self.dataset[index]
        return item, label, describe_item(self.dataset, index)


def describe_item(dataset: Dataset, index: int) -> str:
    """What item ``index`` of ``dataset`` is (a file, an npz entry...), for error messages."""
    describe = getattr(dataset, "describe", None)
    if callable(describe):
        return str(describe(index))
    return f"image {index} of {type(dataset).__name__}"


def sample_image_sizes(dataset: Dataset, n: int = 8) -> list[tuple[int, int]]:
    """``(height, width)`` of up to ``n`` images spread over ``dataset``, read from headers only.

    Knows ``NpzImageDataset``, ``ImageFolderSplit`` and torchvision's array datasets (CIFAR, STL-10);
    returns ``[]`` for others, and skips images whose header cannot be read.
    """
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    total = len(dataset)  # type: ignore[arg-type]
    if total == 0:
        return []
    data = getattr(dataset, "data", None)
    if isinstance(data, np.ndarray) and data.ndim == 4:  # CIFAR (N, H, W, 3), STL-10 (N, 3, H, W)
        h, w = data.shape[1:3] if data.shape[-1] in (1, 3) else data.shape[2:4]
        return [(int(h), int(w))] * min(n, total)
    size_of = getattr(dataset, "image_size", None)
    if not callable(size_of):
        return []
    sizes = []
    for index in sorted({int(i) for i in np.linspace(0, total - 1, min(n, total)).round()}):
        try:
            sizes.append(size_of(index))
        except Exception:  # unreadable header: the loader names the file when training reaches it
            continue
    return sizes


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
    labels: FolderLabels = "auto",
    class_list: Optional[str] = None,
) -> Dataset:
    """Build a dataset yielding ``(transform(image), int label)`` by name.

    Args:
        name: one of :data:`DATASET_NAMES`:
            ``"default"`` (the embedded CIFAR-10 subset; ``root`` ignored),
            ``"cifar10"``/``"cifar100"``/``"stl10"`` (torchvision; ``root`` is their directory),
            ``"imagefolder"`` (class folders ``root/train/<class>`` and ``root/val/<class>``, or unlabelled
            images at any depth: module docstring), ``"npz"`` (``root`` is the ``.npz`` file),
            ``"filelist"`` (``root`` is a list file, :class:`~mvssl_lightning.data.files.FileList`),
            ``"litdata"`` (``root`` is the directory or URI of shards written by ``mvssl-data optimize``,
            read in order: :class:`~mvssl_lightning.data.shards.ShardImages`).
        root: data directory or file, see ``name``.
        split: ``"train"`` or ``"test"`` (ImageFolder reads ``val/``, else ``test/``, for ``"test"``).
        transform: applied to every PIL image.
        download: let torchvision download missing files.
        include_unlabeled: for the self-supervised training set, add unlabeled images where the
            dataset has them (STL-10: ``"train+unlabeled"``, label ``-1``). Ignored elsewhere.
        raw: yield undecoded images for the device view pipeline instead of ``transform(image)``:
            JPEG file bytes (1-D uint8) where the data are JPEG files (npz, ImageFolder), else
            ``(3, H, W)`` uint8 tensors.
        labels: how an image folder is labelled: ``"auto"``, ``"folders"`` or ``"none"`` (module docstring).
        class_list: keep only these classes (a file of class names or WordNet ids, or ``"imagenet100"``),
            labelled by their sorted order in every split; image folders and list files with class names.

    Raises:
        ValueError: unknown name or split; a class list naming classes the data lacks.
        FileNotFoundError: the data is not where ``root`` says (:class:`MissingSplit` for a split the
            dataset does not have).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    name = name.lower()
    if raw:
        transform = T.PILToTensor() if name not in ("default", "npz", "litdata") else None
    if name == "default":
        return NpzImageDataset(embedded_default_path(), split, transform, raw=raw)
    if name == "npz":
        path = _require_root(name, root)
        if path.is_dir():
            raise FileNotFoundError(f"npz data_dir must be the .npz file, got the directory {path}")
        if not path.is_file():
            raise FileNotFoundError(f"npz dataset file not found: {path}")
        return NpzImageDataset(path, split, transform, raw=raw)
    if class_list is not None and name not in ("imagefolder", "filelist"):
        raise ValueError(f"class_list applies to image folders and list files, not dataset '{name}'")
    if name == "imagefolder":
        return _imagefolder(_require_root(name, root), split, transform, raw, labels, class_list)
    if name == "filelist":
        path = _require_root(name, root)
        if path.is_dir():
            raise FileNotFoundError(f"filelist data_dir must be the list file, got the directory {path}")
        return _filelist(path, split, transform, raw, class_list)
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
    if name == "litdata":  # shards written by `mvssl-data optimize`, read in order (map-style)
        from mvssl_lightning.data.shards import MissingShardSplit, ShardImages

        if root is None:
            raise ValueError("dataset 'litdata' needs data_dir: the directory or URI given to mvssl-data optimize")
        try:
            return ShardImages(str(root), split, transform, raw=raw)
        except MissingShardSplit as e:
            raise MissingSplit(str(e)) from None
    raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASET_NAMES)}")


def peek_num_classes(name: str, root: Optional[PathLike] = None, labels: FolderLabels = "auto",
                     class_list: Optional[str] = None) -> Optional[int]:
    """Number of classes of a dataset without decoding images (reads at most labels/dir names).

    The same count the datasets report: an image folder's ``train/`` class folders; an npz file's
    ``class_names``, else ``max(label) + 1`` over all its splits.  Returns ``None`` when it cannot be
    determined (e.g. the files are not there yet).
    """
    name = name.lower()
    if name in NUM_CLASSES:
        return NUM_CLASSES[name]
    if root is None:
        return None
    path = Path(root).expanduser()
    if name == "imagefolder":
        if not path.is_dir():
            return None
        if folder_labels(path, labels) == "none":
            return 0
        if not (path / "train").is_dir():
            return None
        classes = imagefolder_classes(path / "train")  # the classes every split is labelled with
        return len(classes if class_list is None else select_classes(classes, class_list, str(path / "train")))
    if name == "filelist":
        if not path.is_file():
            return None
        entries = read_filelist(path)
        if class_list is not None:
            return len(select_classes(entries.classes, class_list, f"filelist {path}"))
        return len(entries.classes)
    if name == "npz":
        if not path.is_file():
            return None
        with _open_npz(path) as d:
            return _npz_num_classes(d, set(d.files), str(path))
    if name == "litdata":
        from mvssl_lightning.data.shards import read_metadata

        try:
            return len(read_metadata(str(root))["classes"])
        except (OSError, ValueError):
            return None
    return None
