"""View-pipeline throughput: the CPU path (workers decode + PIL recipe) against the device path
(``gpu_views``: workers read bytes, batched decode + augmentation on the accelerator).

    python -m benchmarks.pipeline                        # on a GPU machine: 224 px and 32 px, all workers
    python -m benchmarks.pipeline --preset cpu-small     # a small CPU configuration (cpu-tiny: a plumbing check)
    python -m benchmarks.pipeline --cases 32px-two_views_cifar --images 16384   # one case
    python -m benchmarks.pipeline --cases 32px-two_views_cifar --sources npz,imagefolder,litdata --source-workers 1,2

Data: JPEG bytes in the npz layout.  ``--data`` (default: ``../shared/data/cifar10.npz`` when present,
else the embedded subset; ``default``: the embedded subset) gives the 32 px images; the 224 px case re-encodes them as
``--photo-size`` px JPEGs (quality 90, bicubic upscale), a stand-in for ImageNet photos.  Each case
runs the same ``MultiViewDataModule`` twice, ``gpu_views`` false and true, and counts images/s
through the loader **and** the view construction (``on_after_batch_transfer``), synchronised, after
``--warmup`` batches.  Nothing trains: this is the bound the data pipeline puts on a training step.
Writes ``pipeline-<device>.json`` and ``.md`` to ``--out`` (default ``benchmarks/results/``), after every case.

``--sources`` adds rows comparing where the images come from, for each case: the same images as the npz
file, as an image folder (one JPEG file per image, ``dataset: imagefolder``) and as LitData shards
(``mvssl-data optimize``, ``dataset: litdata``), each with ``--source-workers`` loader workers, through the
CPU path (and the device path on CUDA).
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mvssl_lightning.data import MultiViewDataModule, embedded_default_path
from mvssl_lightning.data.cli import optimize_shards

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[1]
SHARED_CIFAR = REPO.parent / "shared" / "data" / "cifar10.npz"

# name -> (image side, recipe, view kwargs, batch size)
CASES = {
    "224px-two_views": (224, "two_views", {}, 256),
    "224px-mveb_multicrop": (224, "mveb_multicrop", {}, 256),
    "32px-two_views_cifar": (32, "two_views_cifar", {}, 512),
    "32px-mveb_multicrop_cifar": (32, "mveb_multicrop_cifar", {}, 512),
}
PRESETS = {
    "gpu": dict(cases=list(CASES), images=8192, warmup=3),
    "cpu-small": dict(cases=["224px-two_views", "32px-two_views_cifar"], images=256, warmup=1, batch_size=64),
    # the plumbing check of benchmarks.gpu_check --cpu-smoke
    "cpu-tiny": dict(cases=["224px-two_views", "32px-two_views_cifar"], images=16, warmup=1, batch_size=8),
}


#: photo shapes (height, width) relative to ``--photo-size``, cycled: mixed sizes, as a photo dataset has
#: (the device path pads each batch to its largest image)
PHOTO_SHAPES = ((1.0, 1.0), (0.75, 1.0), (1.0, 0.75), (1.2, 1.6))


def photo_npz(source: Path, side: int, n: int, out_dir: Path) -> Path:
    """``n`` images of ``source`` re-encoded as JPEGs of mixed sizes around ``side`` px (:data:`PHOTO_SHAPES`;
    train and test splits)."""
    with np.load(source) as d:
        arrays = {k: d[k] for k in d.files}
    out: dict[str, np.ndarray] = {}
    for split, count in (("train", n), ("test", 8)):
        jpeg, offsets = arrays[f"jpeg_{split}"], arrays[f"offsets_{split}"]
        files = []
        for i in range(min(count, len(offsets) - 1)):
            img = Image.open(io.BytesIO(jpeg[offsets[i]:offsets[i + 1]].tobytes())).convert("RGB")
            buf = io.BytesIO()
            fh, fw = PHOTO_SHAPES[i % len(PHOTO_SHAPES)]
            size = (round(side * fw), round(side * fh))
            img.resize(size, Image.Resampling.BICUBIC).save(buf, format="JPEG", quality=90)
            files.append(np.frombuffer(buf.getvalue(), dtype=np.uint8))
        out[f"jpeg_{split}"] = np.concatenate(files)
        out[f"offsets_{split}"] = np.concatenate([[0], np.cumsum([len(f) for f in files])]).astype(np.int64)
        out[f"y_{split}"] = arrays[f"y_{split}"][: len(files)]
    path = out_dir / f"photos-{side}.npz"
    np.savez(path, **out)
    return path


#: ``--sources``: where the images are read from (``MultiViewDataModule(dataset=...)``)
SOURCES = ("npz", "imagefolder", "litdata")


def source_copies(npz: Path, out_dir: Path) -> dict[str, Path]:
    """The images of ``npz`` (JPEG bytes) as the npz itself, an image folder of JPEG files and LitData shards."""
    folder = out_dir / "folder"
    with np.load(npz) as d:
        train_classes = {int(c) for c in d["y_train"]}
        for split, sub in (("train", "train"), ("test", "val")):
            jpeg, offsets, y = d[f"jpeg_{split}"], d[f"offsets_{split}"], d[f"y_{split}"]
            for i in range(len(offsets) - 1):
                if int(y[i]) not in train_classes:  # a class folder of val/ must exist in train/
                    continue
                target = folder / sub / f"class{int(y[i]):03d}" / f"{i:07d}.jpg"
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(jpeg[offsets[i]:offsets[i + 1]].tobytes())
    shards = out_dir / "shards"
    optimize_shards(str(npz), str(shards), num_workers=min(4, os.cpu_count() or 1))
    return {"npz": npz, "imagefolder": folder, "litdata": shards}


def subset_npz(source: Path, n: int, out_dir: Path) -> Path:
    """The first ``n`` training images (and 8 test images) of ``source`` as their own npz file."""
    with np.load(source) as d:
        arrays = {k: d[k] for k in d.files}
    out: dict[str, np.ndarray] = {}
    for split, count in (("train", n), ("test", 8)):
        offsets = arrays[f"offsets_{split}"][: count + 1]
        out[f"jpeg_{split}"] = arrays[f"jpeg_{split}"][offsets[0]:offsets[-1]]
        out[f"offsets_{split}"] = offsets - offsets[0]
        out[f"y_{split}"] = arrays[f"y_{split}"][: len(offsets) - 1]
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"subset-{n}.npz"
    np.savez(path, **out)
    return path


def measure(data: Path, recipe: str, view_kwargs: dict, batch_size: int, workers: int, gpu_views: bool,
            device: torch.device, images: int, warmup: int, decode: str, dataset: str = "npz") -> dict:
    """Images/s through loader + view construction for one configuration."""
    dm = MultiViewDataModule(
        dataset=dataset, data_dir=str(data), views=recipe, view_kwargs=view_kwargs, batch_size=batch_size,
        num_workers=workers, gpu_views=gpu_views, decode=decode, persistent_workers=workers > 0,
    )
    dm.setup()
    # at least 3 x workers x prefetch batches (DataLoader's prefetch_factor 2), so that the time is the
    # workers' steady rate, not the batches they had prefetched during the warm-up
    steps = max(1, images // batch_size, 3 * workers * 2)
    done, start = 0, None
    while done < warmup + steps:
        for images_batch, targets in dm.train_dataloader():
            if done == warmup:
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                start = time.perf_counter()
            targets = targets.to(device, non_blocking=True)
            if gpu_views:
                views = dm.on_after_batch_transfer((images_batch, targets), 0)[0]
            else:
                views = [v.to(device, non_blocking=True) for v in images_batch]
            assert views[0].dtype == torch.float32
            done += 1
            if done == warmup + steps:
                break
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    num_views = len(views)
    del views, images_batch, targets, dm
    gc.collect()  # shut this configuration's workers down here, not in the next configuration's forked workers
    return {"images_per_s": steps * batch_size / seconds, "seconds": seconds, "batches": steps,
            "num_views": num_views}


def build_parser() -> argparse.ArgumentParser:
    """The command line (also used by ``benchmarks.gpu_check``'s tests to check its command lines)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pipeline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    default_preset = "gpu" if torch.cuda.is_available() else "cpu-small"
    parser.add_argument("--preset", choices=sorted(PRESETS), default=default_preset)
    parser.add_argument("--data", default=SHARED_CIFAR if SHARED_CIFAR.is_file() else None,
                        help="an npz file, or 'default' (the embedded CIFAR-10 subset)")
    parser.add_argument("--cases", default=None, help=f"comma-separated, from {', '.join(CASES)} "
                        "(default: the preset's)")
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    parser.add_argument("--images", type=int, default=None, help="images timed per configuration")
    parser.add_argument("--photo-size", type=int, default=320, help="side of the re-encoded 'photo' JPEGs")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--note", default="", help="a remark written under the table (machine load...)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads of the main process (default: torch's choice)")
    parser.add_argument("--sources", default="", help=f"comma-separated, from {', '.join(SOURCES)}: rows comparing "
                        "where the images are read from (default: none)")
    parser.add_argument("--source-workers", default="1,2",
                        help="loader workers of the --sources rows (comma-separated)")
    return parser


def main(argv: list[str] | None = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    preset = PRESETS[args.preset]
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    data = Path(args.data) if args.data not in (None, "default") else embedded_default_path()
    cases = [c for c in args.cases.split(",") if c] if args.cases else preset["cases"]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; valid: {', '.join(CASES)}")
    sources = [s for s in args.sources.split(",") if s]
    if [s for s in sources if s not in SOURCES]:
        parser.error(f"unknown source(s) in --sources {args.sources}; valid: {', '.join(SOURCES)}")
    source_workers = [int(w) for w in args.source_workers.split(",") if w]
    n_images = args.images or preset["images"]
    rows: list[dict] = []
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu-{platform.machine()}"
    result = {
        "device": name, "cpu_count": os.cpu_count(), "torch": torch.__version__, "preset": args.preset,
        "data": os.path.relpath(data, REPO), "photo_size": args.photo_size, "images_per_config": n_images,
        "command": "python -m benchmarks.pipeline " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"), "threads": torch.get_num_threads(), "note": args.note, "rows": rows,
    }
    source_rows: list[dict] = []
    if sources:
        result["source_rows"] = source_rows
    with tempfile.TemporaryDirectory() as tmp:
        photos = None
        for case in cases:
            side, recipe, view_kwargs, batch_size = CASES[case]
            batch_size = preset.get("batch_size", batch_size)
            # one epoch holds the warm-up and every timed batch: no loader (and no worker) starts while timing
            timed = max(1, n_images // batch_size, 3 * max([args.workers, *source_workers]) * 2)
            if side > 32 and photos is None:
                photos = photo_npz(data, args.photo_size, batch_size * (timed + preset["warmup"] + 1), Path(tmp))
            source = photos if side > 32 else data
            # what decode: auto does in training: large JPEGs on the GPU, small ones in the workers
            decode = "device" if device.type == "cuda" and side > 32 else "workers"
            row = {"case": case, "recipe": recipe, "batch_size": batch_size, "workers": args.workers,
                   "decode": decode}
            for path_name, gpu_views in (("cpu_path", False), ("device_path", True)):
                row[path_name] = measure(source, recipe, view_kwargs, batch_size, args.workers, gpu_views, device,
                                         n_images, preset["warmup"], decode)
                print(case, path_name, f"{row[path_name]['images_per_s']:.0f} images/s", flush=True)
            row["speedup"] = row["device_path"]["images_per_s"] / row["cpu_path"]["images_per_s"]
            rows.append(row)
            write(result, args.out)  # after every case: a run stopped half-way keeps what it measured
            if sources:
                copies = source_copies(subset_npz(source, batch_size * (timed + preset["warmup"] + 1),
                                                  Path(tmp) / case), Path(tmp) / case)
                for name in sources:
                    for workers in source_workers:
                        srow = {"case": case, "source": name, "batch_size": batch_size, "workers": workers,
                                "decode": decode}
                        paths = (("cpu_path", False),) + ((("device_path", True),) if device.type == "cuda" else ())
                        for path_name, gpu_views in paths:
                            srow[path_name] = measure(copies[name], recipe, view_kwargs, batch_size, workers, gpu_views,
                                                      device, n_images, preset["warmup"], decode, dataset=name)
                            print(case, name, f"{workers} workers", path_name,
                                  f"{srow[path_name]['images_per_s']:.0f} images/s", flush=True)
                        source_rows.append(srow)
                        write(result, args.out)
    write(result, args.out)
    return result


def write(result: dict, out: Path) -> None:
    """``pipeline-<device>.json`` and a markdown table next to it."""
    out.mkdir(parents=True, exist_ok=True)
    stem = "pipeline-" + result["device"].lower().replace(" ", "-")
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"# View pipeline throughput on {result['device']} ({result['cpu_count']} CPU cores)", "",
        f"`{result['command']}` ({result['date']}, torch {result['torch']}); images/s through the loader and "
        "the view construction, 224 px cases from re-encoded "
        f"{result['photo_size']} px JPEGs.", "",
        "| case | views | batch | workers | decode (device path) | CPU path | device path | speed-up |",
        "| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: |",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['case']} | {r['device_path']['num_views']} | {r['batch_size']} | {r['workers']} | "
            f"{r.get('decode', 'workers')} | "
            f"{r['cpu_path']['images_per_s']:,.0f} | {r['device_path']['images_per_s']:,.0f} | {r['speedup']:.2f}x |"
        )
    if result.get("source_rows"):
        lines += [
            "", "Where the images come from (same images: an npz file, an image folder of JPEG files, LitData shards "
            "written by `mvssl-data optimize`):", "",
            "| case | source | batch | workers | CPU path | device path |", "| --- | --- | ---: | ---: | ---: | ---: |",
        ]
        for r in result["source_rows"]:
            device_rate = f"{r['device_path']['images_per_s']:,.0f}" if "device_path" in r else "-"
            lines.append(f"| {r['case']} | {r['source']} | {r['batch_size']} | {r['workers']} | "
                         f"{r['cpu_path']['images_per_s']:,.0f} | {device_rate} |")
    if result.get("note"):
        lines += ["", result["note"]]
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
