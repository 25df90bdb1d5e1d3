"""What ``RepresentationDiagnostics`` adds to a training epoch.

    python -m benchmarks.diagnostics_overhead                                   # configs/mveb_cifar10.yaml
    python -m benchmarks.diagnostics_overhead --configs quickstart,mveb_cifar10 --train-batches 3

For each config, the model, view recipe and data module are built from its ``model`` and ``data``
sections (parsed with the same types as ``mvssl fit``), with CIFAR-10 from ``--data`` (an npz in the
project's layout; the embedded 5,000 / 1,000 subset when absent), and trained twice for two short
epochs (``--train-batches`` training batches each, ``--val-batches`` batches per validation loader),
with the config's probe and kNN callbacks and a ``TensorBoardLogger``: once without and once with the
config's own ``RepresentationDiagnostics`` entry (``trainer.callbacks+``; on its ``num_samples``
validation images, with its pictures). Measured:

* ``diag_s``: the callback's ``on_validation_epoch_end`` (wall clock, CUDA synchronised), at the first
  validation (``cold``: the subset's images and views are built and cached) and the second (``warm``);
* ``train_batch_s``: the second training epoch of the run with the callback, per batch (data loading,
  step and probe included); ``val_image_s``: its second validation without the callback's hook, per
  image (timed in the same run as the hook, so that both see the same load on a shared machine);
* ``full_epoch_s``: a full CIFAR-10 epoch extrapolated from these: ``ceil(50,000 / batch)`` training
  batches plus a validation of the 50,000 + 10,000 images (the kNN bank and the test split);
* ``overhead``: ``diag_s / full_epoch_s`` with a validation at every epoch (the shipped CIFAR configs
  validate every 10 epochs: a tenth of that), cold and warm;
* ``short_run_overhead``: ``(fit_s with - fit_s without) / fit_s without`` of the two short runs
  themselves (dominated by the fixed cost at this length, and noisy on a shared machine).

Results: ``benchmarks/results/diagnostics-overhead-<device>.{json,md}``.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import lightning.pytorch as pl
import torch
import yaml
from jsonargparse import ArgumentParser
from lightning.pytorch.loggers import TensorBoardLogger

from benchmarks.quality.recipes import recipe_args
from benchmarks.timing import TrainingTimer, synchronize
from mvssl_lightning.callbacks import RepresentationDiagnostics
from mvssl_lightning.data import MultiViewDataModule
from mvssl_lightning.methods.base import SiameseModule

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
RESULTS = ROOT / "benchmarks" / "results"
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "cifar10.npz"
CIFAR_TRAIN, CIFAR_TEST = 50_000, 10_000
DIAG_CLASS = "mvssl_lightning.callbacks.RepresentationDiagnostics"


class TimedDiagnostics(RepresentationDiagnostics):
    """``RepresentationDiagnostics`` that records the seconds of each validation-epoch hook."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.seconds: list[float] = []

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        synchronize(pl_module.device)
        start = time.perf_counter()
        super().on_validation_epoch_end(trainer, pl_module)
        synchronize(pl_module.device)
        if not trainer.sanity_checking:
            self.seconds.append(time.perf_counter() - start)


def _instantiate(entry: dict[str, Any]) -> pl.Callback:
    module, _, name = entry["class_path"].rpartition(".")
    return getattr(importlib.import_module(module), name)(**(entry.get("init_args") or {}))


def load(config: str, data: Optional[Path], batch_size: Optional[int], num_workers: int, seed: int):
    """``(model, datamodule, other callbacks, diagnostics init_args, description)`` of ``configs/<config>.yaml``."""
    cfg = yaml.safe_load((CONFIGS / f"{config}.yaml").read_text())
    entries = (cfg.get("trainer") or {}).get("callbacks+") or []
    diag = [e for e in entries if e["class_path"] == DIAG_CLASS]
    if len(diag) != 1:
        raise ValueError(f"configs/{config}.yaml has {len(diag)} {DIAG_CLASS} entries, expected 1")
    others = [e for e in entries if e["class_path"] != DIAG_CLASS]
    section = {"model": copy.deepcopy(cfg["model"]), "data": copy.deepcopy(cfg["data"])}
    d = section["data"]
    d.update(num_workers=num_workers, download=False, train_subset=None, test_subset=None, gpu_views=False)
    if data is not None:
        d.update(dataset="npz", data_dir=str(data))
    else:
        d.update(dataset="default", data_dir=None)
    if batch_size is not None:
        d["batch_size"] = batch_size
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(SiameseModule, "model")
    parser.add_class_arguments(MultiViewDataModule, "data")
    pl.seed_everything(seed, verbose=False)
    init = parser.instantiate(parser.parse_object(section))
    model_args = recipe_args(section["model"])  # the class's recipe defaults + what the config changes
    info = {"config": f"configs/{config}.yaml", "model": type(init.model).__name__,
            "backbone": model_args.get("backbone"), "cifar_stem": model_args.get("cifar_stem"), "views": d["views"],
            "batch_size": d["batch_size"], "dataset": d["dataset"], "diagnostics": diag[0].get("init_args") or {}}
    return init.model, init.data, [_instantiate(e) for e in others], diag[0].get("init_args") or {}, info


def timed_fit(config: str, args: argparse.Namespace, with_diagnostics: bool, log_dir: Path) -> dict[str, Any]:
    model, data, callbacks, diag_args, info = load(config, args.data, args.batch_size, args.num_workers, args.seed)
    timer = TrainingTimer()
    diag = TimedDiagnostics(**diag_args) if with_diagnostics else None
    trainer = pl.Trainer(
        accelerator=args.accelerator, devices=1, precision=args.precision, max_epochs=2,
        limit_train_batches=args.train_batches, limit_val_batches=args.val_batches, num_sanity_val_steps=0,
        check_val_every_n_epoch=1, logger=TensorBoardLogger(log_dir, name=config), enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
        callbacks=[timer, *callbacks, *([diag] if diag is not None else [])],
    )
    start = time.perf_counter()
    trainer.fit(model, datamodule=data)
    synchronize(model.device)
    fit_s = time.perf_counter() - start
    val_images = sum(min(args.val_batches * data.eval_batch_size, len(ds))
                     for ds in (data.eval_train_dataset, data.test_dataset))  # type: ignore[arg-type]
    out = {**info, "fit_s": fit_s, "train_epoch_s": timer.train_epoch_s, "val_epoch_s": timer.val_epoch_s,
           "val_images": val_images, "device": str(model.device)}
    if diag is not None:
        out["diag_s"] = diag.seconds
        out["diag_statistics"] = diag.last_statistics
    return out


def summarize(without: dict[str, Any], with_diag: dict[str, Any], train_batches: int) -> dict[str, Any]:
    batch = with_diag["batch_size"]
    # the epoch is timed in the same run as the callback (the timer's validation excludes the callback's
    # hook), so that both see the same machine load
    train_batch_s = with_diag["train_epoch_s"][-1] / train_batches
    val_image_s = with_diag["val_epoch_s"][-1] / with_diag["val_images"]
    full_epoch_s = math.ceil(CIFAR_TRAIN / batch) * train_batch_s + (CIFAR_TRAIN + CIFAR_TEST) * val_image_s
    cold, warm = with_diag["diag_s"][0], with_diag["diag_s"][-1]
    return {
        "train_batch_s": train_batch_s, "val_image_s": val_image_s, "full_epoch_s": full_epoch_s,
        "diag_s_cold": cold, "diag_s_warm": warm,
        "overhead_cold": cold / full_epoch_s, "overhead_warm": warm / full_epoch_s,
        "short_run_overhead": (with_diag["fit_s"] - without["fit_s"]) / without["fit_s"],
    }


def markdown(results: dict[str, Any]) -> str:
    lines = [
        "# RepresentationDiagnostics overhead", "",
        f"Command: `{results['command']}`", "",
        f"Machine: {results['machine']}. Each config's model and data, trained twice for 2 epochs of "
        f"{results['train_batches']} batches ({results['val_batches']} validation batches per loader), without "
        "and with the config's RepresentationDiagnostics entry. A full CIFAR-10 epoch is extrapolated from the "
        "run with it, its hook excluded (ceil(50,000 / batch) training batches + a validation of 60,000 "
        "images); the overhead assumes a validation at every epoch (the shipped CIFAR configs validate "
        "every 10 epochs: a tenth).", "",
        "| config | model | batch | data | train s/batch | val ms/image | full epoch s (extrap.) | "
        "diag s cold / warm | overhead cold / warm | short-run overhead |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["runs"]:
        s = r["summary"]
        lines.append(
            f"| {r['config']} | {r['model']} ({r['backbone']}, cifar_stem {r['cifar_stem']}) | {r['batch_size']} | "
            f"{r['dataset']} | {s['train_batch_s']:.2f} | {1e3 * s['val_image_s']:.2f} | {s['full_epoch_s']:.0f} | "
            f"{s['diag_s_cold']:.2f} / {s['diag_s_warm']:.2f} | {100 * s['overhead_cold']:.2f} % / "
            f"{100 * s['overhead_warm']:.2f} % | {100 * s['short_run_overhead']:.1f} % |"
        )
    lines += ["", "diag s: seconds of the callback's hook per validation epoch (cold: the first, which builds "
              "and caches the subset's images and views; warm: the next; both draw and save the pictures). On a "
              "shared machine the absolute seconds vary severalfold with the load of other processes; the "
              "overhead divides timings from the same run, and the short-run overhead (two separate runs of 4 "
              "batches, where the callback's fixed cost dominates) is mostly that noise.", ""]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.diagnostics_overhead", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="mveb_cifar10", help="comma-separated names under configs/")
    parser.add_argument("--data", type=lambda s: None if s in ("", "default") else Path(s),
                        default=DEFAULT_DATA if DEFAULT_DATA.is_file() else None,
                        help="CIFAR-10 npz, or 'default' for the embedded subset (default: ../shared/data/cifar10.npz "
                        "when present, else the embedded subset)")
    parser.add_argument("--train-batches", type=int, default=3)
    parser.add_argument("--val-batches", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=None, help="default: the config's")
    parser.add_argument("--num-workers", type=int, default=1)
    parser.add_argument("--accelerator", default="auto")
    parser.add_argument("--precision", default=None, help="default: 32-true on a CPU, bf16-mixed on a GPU")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    on_gpu = torch.cuda.is_available() and args.accelerator in ("auto", "gpu", "cuda")
    args.precision = args.precision or ("bf16-mixed" if on_gpu else "32-true")
    device = torch.cuda.get_device_name(0).replace(" ", "-").lower() if on_gpu else "cpu"
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for config in args.configs.split(","):
            without = timed_fit(config, args, False, Path(tmp))
            with_diag = timed_fit(config, args, True, Path(tmp))
            run = {**{k: v for k, v in with_diag.items() if k not in ("fit_s", "train_epoch_s", "val_epoch_s")},
                   "without": without, "with": with_diag, "summary": summarize(without, with_diag, args.train_batches)}
            runs.append(run)
            print(json.dumps({"config": config, **run["summary"]}, indent=1), flush=True)
    results = {
        "command": "python -m benchmarks.diagnostics_overhead " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": f"{device}, {torch.get_num_threads()} torch threads, {platform.processor() or platform.machine()}, "
                   f"torch {torch.__version__}",
        "train_batches": args.train_batches, "val_batches": args.val_batches, "precision": args.precision,
        "data": os.path.relpath(args.data, ROOT) if args.data else "embedded default subset", "runs": runs,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"diagnostics-overhead-{device}"
    (args.out / f"{stem}.json").write_text(json.dumps(results, indent=2, default=str))
    (args.out / f"{stem}.md").write_text(markdown(results))
    return results


if __name__ == "__main__":
    main()
