"""Finding image files: folder scans, list files and class lists.

Three ways to say which files a dataset holds, each read once when the dataset is built:

- :func:`scan_images`: every image file under a folder, at any depth, in sorted order. Hidden entries
  (names starting with ``.``: ``.ipynb_checkpoints/``, ``.DS_Store``, macOS AppleDouble ``._0001.png``)
  and files whose extension is not an image's are skipped and counted, never silently:
  :func:`report_found` prints one line with the count of images found and of each kind skipped.
- :func:`read_filelist`: a list file, CSV (``.csv``) or text. See :class:`FileList` for the format.
- :func:`read_class_list`: a file of class names (folder names, or ImageNet's WordNet ids), or the name of
  a list shipped with the package (:data:`CLASS_LISTS`: ``imagenet100``, CMC's ImageNet-100 subset);
  :func:`select_classes` keeps those classes and names the ones that are missing.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Optional, Union

from lightning.pytorch.utilities import rank_zero_info

__all__ = [
    "CLASS_LISTS",
    "IMAGE_EXTENSIONS",
    "FileList",
    "Scan",
    "is_hidden",
    "is_image_file",
    "read_class_list",
    "read_filelist",
    "report_found",
    "scan_images",
    "select_classes",
]

#: File extensions read as images (torchvision's ``IMG_EXTENSIONS``), compared case-insensitively.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
#: Class lists shipped with the package: name -> file in ``mvssl_lightning/data/assets``.
CLASS_LISTS = {"imagenet100": "imagenet100.txt"}
#: Lines :func:`report_found` has printed in this process (each is printed once).
_REPORTED: set[str] = set()
#: How many names an error message lists before "..."
_SHOWN = 8

PathLike = Union[str, os.PathLike]


def is_hidden(name: str) -> bool:
    """Whether a file or folder name is hidden (``.name``; includes AppleDouble ``._name`` files)."""
    return name.startswith(".")


def is_image_file(name: str) -> bool:
    """Whether a file name has an image extension (:data:`IMAGE_EXTENSIONS`)."""
    return name.lower().endswith(IMAGE_EXTENSIONS)


@dataclass
class Scan:
    """Image files found under a folder, and what was skipped on the way."""

    files: list[str] = field(default_factory=list)
    hidden: int = 0
    non_image: int = 0

    def add(self, other: Scan) -> None:
        self.files += other.files
        self.hidden += other.hidden
        self.non_image += other.non_image


def scan_images(root: PathLike) -> Scan:
    """Every image file under ``root`` at any depth, sorted by path; hidden entries and non-image files
    skipped and counted (module docstring). Symbolic links to folders are followed."""
    scan = Scan()
    for folder, dirs, files in os.walk(os.fspath(root), followlinks=True):
        kept_dirs = [d for d in dirs if not is_hidden(d)]
        scan.hidden += len(dirs) - len(kept_dirs)
        dirs[:] = sorted(kept_dirs)
        for name in files:
            if is_hidden(name):
                scan.hidden += 1
            elif not is_image_file(name):
                scan.non_image += 1
            else:
                scan.files.append(os.path.join(folder, name))
    scan.files.sort()
    return scan


def report_found(what: str, scan: Scan) -> None:
    """Print one line: ``<what>: N images found`` and, when any, what was skipped (rank zero only)."""
    skipped = []
    if scan.hidden:
        skipped.append(f"{scan.hidden:,} hidden file(s) or folder(s)")
    if scan.non_image:
        skipped.append(f"{scan.non_image:,} file(s) without an image extension ({', '.join(IMAGE_EXTENSIONS)})")
    line = f"{what}: {len(scan.files):,} images found" + (f"; skipped {' and '.join(skipped)}" if skipped else "")
    if line not in _REPORTED:  # the data module builds a split more than once (views, eval transforms)
        _REPORTED.add(line)
        rank_zero_info(line)


def _shown(names: list[str]) -> str:
    return ", ".join(names[:_SHOWN]) + (f", ... ({len(names)} in all)" if len(names) > _SHOWN else "")


def read_class_list(spec: str) -> list[str]:
    """The classes of a class list: a name of :data:`CLASS_LISTS` or a text file, one class per line (blank
    lines and ``#`` comments skipped). An empty list or a repeated class is a ``ValueError`` naming the file."""
    if spec in CLASS_LISTS:
        path = Path(str(resources.files("mvssl_lightning.data").joinpath("assets", CLASS_LISTS[spec])))
    else:
        path = Path(spec).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"class_list {spec!r} is neither a file nor a list shipped with the package ({', '.join(CLASS_LISTS)})"
            )
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    classes = [line for line in lines if line]
    if not classes:
        raise ValueError(f"class_list {path} names no classes")
    repeated = sorted({c for c in classes if classes.count(c) > 1})
    if repeated:
        raise ValueError(f"class_list {path} names these classes more than once: {_shown(repeated)}")
    return classes


def select_classes(available: list[str], class_list: str, where: str) -> list[str]:
    """The classes of ``class_list`` (:func:`read_class_list`), sorted: the label map of every split.

    Raises:
        ValueError: the list names classes that ``available`` (the classes of ``where``) lacks; the message
            lists them.
    """
    wanted = read_class_list(class_list)
    missing = sorted(set(wanted) - set(available))
    if missing:
        raise ValueError(
            f"class_list {class_list!r} names {len(missing)} class(es) that {where} does not have: {_shown(missing)}"
        )
    return sorted(wanted)


@dataclass
class FileList:
    """The entries of a list file: image paths (absolute), their labels and splits, and the class names.

    Format. Blank lines and lines starting with ``#`` are skipped.

    - Text (any extension but ``.csv``): one image per line, ``<path>`` or ``<path> <integer label>`` (the
      label is the last whitespace-separated field when it is an integer; a path may contain spaces).
    - CSV (``.csv``): columns ``path``, optional ``label``, optional ``split``; a first row whose first field
      has a field ``path`` is a header naming the columns (any order), otherwise the columns are ``path[,label]``.

    Paths are relative to the list file's folder unless absolute. A label is an integer (``-1`` or empty:
    unknown) or, in a CSV, a class name: when any label is not an integer, every non-empty label is a class
    name and the classes are the sorted names (one label map for every split). ``split`` is ``train``,
    ``val`` or ``test`` (``val`` and ``test`` are the same, the evaluation split); without the column every
    entry is ``train``.
    """

    source: str
    paths: list[str]
    labels: list[int]
    splits: list[str]
    classes: list[str]

    def split(self, name: str) -> tuple[list[str], list[int]]:
        """Paths and labels of one split (``"train"`` or ``"test"``; ``val`` entries are ``test``)."""
        keep = [i for i, s in enumerate(self.splits) if s == name]
        return [self.paths[i] for i in keep], [self.labels[i] for i in keep]


def _is_int(text: str) -> bool:
    return text.lstrip("-").isdigit()


def _rows(path: Path) -> list[tuple[int, list[str]]]:
    """``(line number, fields)`` of the list file's entries."""
    text = path.read_text()
    lines = text.splitlines()
    if path.suffix.lower() == ".csv":
        rows = []
        for number, fields in enumerate(csv.reader(lines), start=1):
            fields = [f.strip() for f in fields]
            if not fields or not any(fields) or fields[0].startswith("#"):
                continue
            rows.append((number, fields))
        return rows
    rows = []
    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.rsplit(None, 1)
        rows.append((number, [parts[0], parts[1]] if len(parts) == 2 and _is_int(parts[1]) else [line]))
    return rows


def _field(fields: list[str], index: Optional[int]) -> str:
    return fields[index] if index is not None and index < len(fields) else ""


def read_filelist(path: PathLike) -> FileList:
    """Read a list file (:class:`FileList`); errors name the file and line.

    Raises:
        FileNotFoundError: the list file is missing.
        ValueError: no entries, a bad label or split, or a missing image (the first entries are checked).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"filelist not found: {path}")
    rows = _rows(path)
    columns: dict[str, Optional[int]] = {"path": 0, "label": 1, "split": None}
    if rows and path.suffix.lower() == ".csv" and "path" in (f.lower() for f in rows[0][1]):
        header = [h.lower() for h in rows.pop(0)[1]]
        unknown = sorted(set(header) - {"path", "label", "split"})
        if unknown:
            raise ValueError(f"filelist {path}: unknown column(s) {', '.join(unknown)}; expected path, label, split")
        columns = {name: header.index(name) if name in header else None for name in ("path", "label", "split")}
    if not rows:
        raise ValueError(f"filelist {path} lists no images")
    base = path.parent
    paths, raw_labels, splits = [], [], []
    for number, fields in rows:
        entry = _field(fields, columns["path"])
        if not entry:
            raise ValueError(f"filelist {path}, line {number}: no path")
        split = _field(fields, columns["split"]).lower() or "train"
        if split not in ("train", "val", "test"):
            raise ValueError(f"filelist {path}, line {number}: split must be train, val or test, got {split!r}")
        paths.append(str(base / entry) if not os.path.isabs(entry) else entry)
        raw_labels.append(_field(fields, columns["label"]))
        splits.append("train" if split == "train" else "test")
    named = any(label and not _is_int(label) for label in raw_labels)
    if named:
        classes = sorted({label for label in raw_labels if label and label != "-1"})
        index = {c: i for i, c in enumerate(classes)}
        labels = [index[label] if label and label != "-1" else -1 for label in raw_labels]
    else:
        labels = [int(label) if label else -1 for label in raw_labels]
        bad = [(number, label) for (number, _), label in zip(rows, labels, strict=True) if label < -1]
        if bad:
            raise ValueError(f"filelist {path}, line {bad[0][0]}: label {bad[0][1]} is below -1 (-1 means unknown)")
        classes = [str(i) for i in range(max(labels) + 1)] if max(labels) >= 0 else []
    missing = [p for p in paths[:64] if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(
            f"filelist {path}: image file(s) not found: {_shown(missing)} (relative paths are relative to {base})"
        )
    return FileList(str(path), paths, labels, splits, classes)

