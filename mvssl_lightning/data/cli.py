"""``mvssl-data``: data tools.  ``mvssl-data optimize`` writes LitData shards (:mod:`mvssl_lightning.data.shards`).

    mvssl-data optimize --input data/imagenet --output /fast/shards/imagenet
    mvssl-data optimize --input images.csv --output s3://bucket/shards --num-workers 16
    mvssl-data optimize --input cifar10.npz --output shards/cifar10 --chunk-bytes 64MB

``--input`` is an image folder (read as ``dataset: imagefolder`` reads it), a list file (``dataset:
filelist``) or an npz file (``dataset: npz``); ``--output`` a local directory or an object-store URI
(LitData's credentials rules).  Every image is stored as its original file bytes (an image folder's or
list's files, an npz file's JPEG members; raw npz arrays are encoded as PNG, losslessly) with its label,
in the input's order, by ``litdata.optimize``: ``<output>/train`` and, when the input has an evaluation
split, ``<output>/test``, plus ``<output>/mvssl_shards.json`` (format version, class names, counts,
labels).  Train on them with ``dataset: litdata`` and ``data_dir: <output>``.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
from PIL import Image

from mvssl_lightning.data.datasets import MissingSplit, NpzImageDataset, build_dataset
from mvssl_lightning.data.shards import METADATA_NAME, SHARD_FORMAT, SHARD_VERSION, read_text, split_dir, write_text

__all__ = ["main", "optimize_shards"]

SPLIT_NAMES = ("train", "test")


Entry = tuple[int, Optional[str], int, str]  # (index, file path or None for an npz member, label, source)


class _ReadItem:
    """``litdata.optimize``'s function: ``(index, path, label, source)`` -> the stored item (picklable)."""

    def __init__(self, npz: Optional[str], split: str) -> None:
        self.npz, self.split = npz, split
        self._dataset: Optional[NpzImageDataset] = None

    def __call__(self, entry: Entry) -> dict[str, Any]:
        index, path, label, source = entry
        if path is not None:
            with open(path, "rb") as f:
                data = f.read()
        else:
            data = self._npz_bytes(index)
        return {"image": data, "label": int(label), "source": source}

    def _npz_bytes(self, index: int) -> bytes:
        if self._dataset is None:
            assert self.npz is not None
            self._dataset = NpzImageDataset(self.npz, self.split)  # type: ignore[arg-type]
        ds = self._dataset
        if ds._x is None:
            return ds._bytes(index)  # the stored file, as it is
        buffer = io.BytesIO()  # raw arrays: PNG, lossless
        Image.fromarray(np.ascontiguousarray(ds._x[index])).save(buffer, format="PNG")
        return buffer.getvalue()


def _entries(input_path: Path, split: str) -> Optional[tuple[list[Entry], list[str], Optional[str]]]:
    """``(entries, classes, npz path)`` of ``split`` of the input, or None when the input has no such split."""
    if input_path.suffix == ".npz" and input_path.is_file():
        try:
            ds = NpzImageDataset(input_path, split)  # type: ignore[arg-type]
        except ValueError as e:
            if split != "train" and "has no" in str(e):
                return None
            raise
        entries: list[Entry] = [(i, None, int(ds.targets[i]), ds.describe(i)) for i in range(len(ds))]
        return entries, list(ds.classes), str(input_path)
    name = "imagefolder" if input_path.is_dir() else "filelist"
    try:
        dataset = build_dataset(name, input_path, split)  # type: ignore[arg-type]
    except MissingSplit:
        return None
    except FileNotFoundError:
        if split == "train":
            raise
        return None
    samples = getattr(dataset, "samples", None)
    if samples is None:
        raise ValueError(f"{input_path}: {type(dataset).__name__} lists no image files")
    files: list[Entry] = [(i, str(path), int(label), f"image file {path}") for i, (path, label) in enumerate(samples)]
    return files, [str(c) for c in getattr(dataset, "classes", [])], None


def _count_chunks(where: str, storage_options: Optional[dict]) -> int:
    return len(json.loads(read_text(split_dir(where, "index.json"), storage_options))["chunks"])


def optimize_shards(
    input_path: str,
    output: str,
    num_workers: int = 1,
    chunk_bytes: str = "64MB",
    overwrite: bool = False,
    storage_options: Optional[dict] = None,
) -> dict[str, Any]:
    """Write the shards of ``input_path`` to ``output`` (module docstring); returns the summary."""
    os.environ.setdefault("LITDATA_DISABLE_VERSION_CHECK", "1")
    from litdata import optimize

    source = Path(input_path).expanduser()
    if not source.exists():
        raise FileNotFoundError(f"--input {input_path} does not exist (an image folder, a list file or an .npz file)")
    start = time.perf_counter()
    meta: dict[str, Any] = {"format": SHARD_FORMAT, "version": SHARD_VERSION, "input": str(input_path),
                            "classes": [], "splits": {}}
    summary: dict[str, Any] = {"images": 0, "bytes": 0, "shards": 0}
    for split in SPLIT_NAMES:
        found = _entries(source, split)
        if found is None:
            print(f"mvssl-data: {input_path} has no '{split}' split; none written", flush=True)
            continue
        entries, classes, npz = found
        if split == "train":
            meta["classes"] = classes
        if not entries:
            raise ValueError(f"--input {input_path}: the '{split}' split has no images")
        where = split_dir(output, split)
        print(f"mvssl-data: {len(entries)} '{split}' images -> {where}", flush=True)
        optimize(fn=_ReadItem(npz, split), inputs=entries, output_dir=where, chunk_bytes=chunk_bytes,
                 num_workers=max(1, min(int(num_workers), len(entries))), keep_data_ordered=True,
                 mode="overwrite" if overwrite else None, storage_options=storage_options or {},
                 start_method=_start_method())
        stored = _stored_bytes(entries, npz, split)
        meta["splits"][split] = {"images": len(entries), "bytes": stored, "labels": [e[2] for e in entries]}
        summary["images"] += len(entries)
        summary["bytes"] += stored
        summary["shards"] += _count_chunks(where, storage_options)
    write_text(split_dir(output, METADATA_NAME), json.dumps(meta) + "\n", storage_options)
    summary["seconds"] = round(time.perf_counter() - start, 2)
    print(f"mvssl-data: wrote {summary['images']} images, {summary['bytes']:,} bytes of image files, "
          f"{summary['shards']} shards to {output} in {summary['seconds']:.1f} s", flush=True)
    return summary


def _start_method() -> Optional[str]:
    """``fork`` on Linux (a writer starts in milliseconds; spawn re-imports torch, seconds per split), else
    LitData's default.  The writers only read files and encode PNGs: nothing that forking could break."""
    return "fork" if sys.platform.startswith("linux") and "fork" in mp.get_all_start_methods() else None


def _stored_bytes(entries: list[Entry], npz: Optional[str], split: str) -> int:
    """Total size of the stored image files (file sizes; npz members' lengths)."""
    if npz is None:
        return sum(os.path.getsize(path) for _, path, _, _ in entries if path is not None)
    reader = _ReadItem(npz, split)
    return sum(len(reader(entry)["image"]) for entry in entries)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mvssl-data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    opt = sub.add_parser("optimize", help="write LitData shards of an image folder, list file or npz file")
    opt.add_argument("--input", required=True, help="an image folder, a list file (CSV / text) or an .npz file")
    opt.add_argument("--output", required=True, help="a local directory or an object-store URI (s3://, gs://...)")
    opt.add_argument("--num-workers", type=int, default=min(4, os.cpu_count() or 1),
                     help="processes writing shards (default: min(4, CPU count))")
    opt.add_argument("--chunk-bytes", default="64MB", help="size of one shard file (LitData's chunk_bytes)")
    opt.add_argument("--overwrite", action="store_true", help="replace shards already at --output")
    return parser


def main(argv: Optional[list[str]] = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.num_workers < 1:
        parser.error(f"--num-workers must be >= 1, got {args.num_workers}")
    try:
        optimize_shards(args.input, args.output, args.num_workers, args.chunk_bytes, args.overwrite)
    except (FileNotFoundError, ValueError) as e:
        print(f"mvssl-data: error: {' '.join(str(e).split())}", file=sys.stderr)
        raise SystemExit(2) from e


if __name__ == "__main__":
    main()
