"""Learning quality of every method against lightly-built baselines, on the same budget.

    python -m benchmarks.quality --data ../shared/data/cifar10.npz --epochs 200 --batch-size 512
    python -m benchmarks.quality --smoke          # embedded data, tiny subset, 1 epoch, CPU: minutes
    python -m benchmarks.quality --render benchmarks/results/quality-cifar10-<device>.json  # redraw .md/.png

Each method is built from its shipped ``configs/<method>_cifar10.yaml`` (model + view recipe; see
``benchmarks/quality/recipes.py``), each baseline from lightly's CIFAR-10 recipe (``benchmarks/lightly_models.py``),
and all of them are trained by the same ``lightning.Trainer`` on the same data (the npz training split,
labels unused), with the same epochs, batch size, precision and ResNet-18 (CIFAR stem up to 64 px;
AMDIM keeps its own encoder). After the final epoch one validation pass gives, on the test split:

* kNN top-1 / top-5 (``OnlineKNN``: k = 200, T = 0.1, bank = train split with the eval transform);
* the online linear probe's top-1 (``OnlineLinearProbe``, trained during pre-training);
* the offline linear probe's top-1 (``mvssl_lightning.core.probe.linear_probe``: AdamW on the
  standardised frozen features of the train split, 100 epochs);
* the collapse check (``features.py``: spread and effective rank of the test features);

plus seconds per training epoch and peak memory (``benchmarks/timing.py``), and the final loss. Results go
to ``benchmarks/results/quality-<dataset>[-<label>]-<device>.{json,md,png}`` (``report.py``, ``chart.py``),
rewritten after every model.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import lightly
import lightning as L
import torch

from benchmarks.quality.chart import write_chart
from benchmarks.quality.features import FeatureCollector, feature_spread
from benchmarks.quality.recipes import BASELINES, METHOD_CONFIGS, METHOD_LABELS, Budget, build_baseline, build_method
from benchmarks.quality.report import markdown
from benchmarks.timing import TrainingTimer, peak_memory_gib, reset_peak_memory
from mvssl_lightning.callbacks import OnlineKNN, OnlineLinearProbe
from mvssl_lightning.core.probe import linear_probe
from mvssl_lightning.data.datasets import build_dataset, peek_num_classes

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
KNN_K, KNN_T = 200, 0.1
PROBE_EPOCHS = 100

BASELINE_LABELS = {"simclr": "SimCLR (lightly)", "byol": "BYOL (lightly)", "barlowtwins": "Barlow Twins (lightly)"}

#: ``--smoke``: every model on a tiny subset of the embedded data, one epoch, fp32 on the CPU
SMOKE = dict(data="default", epochs=1, batch_size=8, train_subset=16, test_subset=32, num_workers=0,
             accelerator="cpu", precision="32-true", label="smoke")
DEFAULTS = dict(data="default", epochs=200, batch_size=512, train_subset=None, test_subset=None,
                num_workers=min(8, os.cpu_count() or 1), accelerator="auto", precision=None, label="")


# ---------------------------------------------------------------------------------------- arguments
def _names(value: str, valid: Sequence[str], what: str) -> list[str]:
    names = [n.strip().lower().replace("-", "_") for n in value.split(",") if n.strip()]
    unknown = [n for n in names if n not in valid]
    if unknown:
        raise ValueError(f"unknown {what} {', '.join(map(repr, unknown))}; valid names: {', '.join(valid)}")
    return list(dict.fromkeys(names))


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse and validate the command line (``--smoke`` fills every option not given)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.quality", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="an npz file in the project's layout, or 'default' (the embedded "
                        "CIFAR-10 subset, 5000 train / 1000 test)")
    parser.add_argument("--methods", default=",".join(METHOD_CONFIGS), help=f"from {', '.join(METHOD_CONFIGS)}")
    parser.add_argument("--baselines", default=",".join(BASELINES), help=f"from {', '.join(BASELINES)} ('' for none)")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--train-subset", type=int, help="train on (and bank) this many training images")
    parser.add_argument("--test-subset", type=int, help="evaluate on this many test images")
    parser.add_argument("--num-workers", type=int)
    parser.add_argument("--accelerator", choices=["auto", "cpu", "cuda", "gpu"])
    parser.add_argument("--precision", help="Lightning precision (default: bf16-mixed on a GPU, 32-true on a CPU)")
    parser.add_argument("--gpu-views", action="store_true",
                        help="build every model's training views on the accelerator (MultiViewDataModule gpu_views)")
    parser.add_argument("--probe-epochs", type=int, default=PROBE_EPOCHS, help="offline linear probe epochs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--label", help="inserted in the output names, e.g. 'short' (--smoke: 'smoke')")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    parser.add_argument("--smoke", action="store_true", help="CPU smoke run on the embedded data (minutes)")
    parser.add_argument("--progress", action="store_true", help="show Lightning's progress bar")
    parser.add_argument("--render", type=Path, help="only rewrite the .md and .png of an existing results .json")
    args = parser.parse_args(argv)
    if args.render is not None:
        if not args.render.is_file():
            parser.error(f"--render: results file not found: {args.render}")
        return args
    for key, value in (SMOKE if args.smoke else DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    try:
        args.methods = _names(args.methods, list(METHOD_CONFIGS), "method")
        args.baselines = _names(args.baselines, list(BASELINES), "baseline")
    except ValueError as e:
        parser.error(str(e))
    if not args.methods and not args.baselines:
        parser.error("nothing to run: --methods and --baselines are both empty")
    if args.data != "default" and not Path(args.data).expanduser().is_file():
        parser.error(f"--data: npz file not found: {args.data} "
                     "(give an .npz file in the project's layout, or 'default')")
    if args.epochs < 1 or args.batch_size < 1:
        parser.error("--epochs and --batch-size must be >= 1")
    return args


# ---------------------------------------------------------------------------------------- environment
def _device(accelerator: str) -> torch.device:
    if accelerator in ("cuda", "gpu") and not torch.cuda.is_available():
        raise SystemExit(f"--accelerator {accelerator}: no CUDA device is available")
    return torch.device("cuda" if accelerator != "cpu" and torch.cuda.is_available() else "cpu")


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.machine()}, {os.cpu_count()} cores)"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _git(*cmd: str) -> str:
    try:
        return subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _data_facts(args: argparse.Namespace) -> dict[str, Any]:
    """Dataset name/path, image side, class count and split sizes (after subsets), read without training."""
    dataset = "default" if args.data == "default" else "npz"
    data_dir = None if dataset == "default" else str(Path(args.data).expanduser().resolve())
    train = build_dataset(dataset, data_dir, "train", None)
    test = build_dataset(dataset, data_dir, "test", None)
    image = train[0][0]
    n_train = min(len(train), args.train_subset or len(train))
    n_test = min(len(test), args.test_subset or len(test))
    if n_train < args.batch_size:
        raise SystemExit(f"the training split has {n_train} images, fewer than --batch-size {args.batch_size}")
    num_classes = peek_num_classes(dataset, data_dir) or int(max(int(train.targets.max()), int(test.targets.max())) + 1)
    name = "default" if dataset == "default" else Path(args.data).stem
    return {"dataset": dataset, "data_dir": data_dir, "name": name, "image_size": int(min(image.size)),
            "num_classes": num_classes, "train_size": n_train, "test_size": n_test}


# ---------------------------------------------------------------------------------------- one model
def train_and_evaluate(model: L.LightningModule, datamodule: L.LightningDataModule, args: argparse.Namespace,
                       device: torch.device, num_classes: int) -> dict[str, Any]:
    """Fit ``model`` for ``args.epochs`` epochs, validate once at the end, and measure it."""
    timer, collector = TrainingTimer(), FeatureCollector()
    # the online probe of the committed results: SGD lr 0.1, momentum 0.9 (the library's default is now AdamW)
    callbacks = [OnlineLinearProbe(num_classes=num_classes, optimizer="sgd", lr=0.1),
                 OnlineKNN(k=KNN_K, temperature=KNN_T, num_classes=num_classes), timer, collector]
    with tempfile.TemporaryDirectory() as tmp:
        trainer = L.Trainer(
            accelerator=device.type, devices=1, precision=args.precision, max_epochs=args.epochs,
            check_val_every_n_epoch=args.epochs, num_sanity_val_steps=0, logger=False,
            enable_checkpointing=False, enable_progress_bar=args.progress, enable_model_summary=False,
            callbacks=callbacks, default_root_dir=tmp, log_every_n_steps=50,
        )
        reset_peak_memory(device)
        start = time.perf_counter()
        trainer.fit(model, datamodule=datamodule)
        fit_s = time.perf_counter() - start
        peak, peak_what = peak_memory_gib(device)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    train_f, train_y = collector.features(0)
    test_f, test_y = collector.features(1)
    probe = linear_probe(train_f.to(device), train_y.to(device), test_f.to(device), test_y.to(device), num_classes,
                         epochs=args.probe_epochs, seed=args.seed)
    epochs_s = timer.train_epoch_s
    lr = float(trainer.optimizers[0].param_groups[0].get("initial_lr", math.nan)) if trainer.optimizers else math.nan
    return {
        "knn_top1": metrics.get("knn/top1", math.nan), "knn_top5": metrics.get("knn/top5", math.nan),
        "online_probe_top1": metrics.get("probe/val_top1", math.nan),
        "offline_probe_top1": probe.test_top1, "offline_probe_train_top1": probe.train_top1,
        **feature_spread(test_f), "feature_dim": int(test_f.shape[1]),
        "final_loss": metrics.get("train/loss", math.nan), "steps": int(trainer.global_step),
        "train_s_per_epoch": statistics.median(epochs_s) if epochs_s else math.nan,
        "first_epoch_s": epochs_s[0] if epochs_s else math.nan, "train_s_total": sum(epochs_s),
        "final_val_s": timer.val_epoch_s[-1] if timer.val_epoch_s else math.nan, "fit_s": fit_s,
        "peak_memory_gib": peak, "peak_memory_measure": peak_what,
        "lr": lr,
    }


def build(name: str, kind: str, budget: Budget, args: argparse.Namespace, device: torch.device):
    """``(model, datamodule, description)`` of a method or a baseline (``--gpu-views`` for all alike)."""
    model, datamodule, info = _build(name, kind, budget, args)
    datamodule.gpu_views = bool(args.gpu_views)
    return model, datamodule, {**info, "gpu_views": bool(args.gpu_views)}


def _build(name: str, kind: str, budget: Budget, args: argparse.Namespace):
    if kind == "method":
        model, datamodule, info = build_method(name, budget, seed=args.seed)
        return model, datamodule, {"label": METHOD_LABELS[name], **info}
    model, datamodule, info = build_baseline(name, budget, seed=args.seed)
    return model, datamodule, {"label": BASELINE_LABELS[name], **info}


# ---------------------------------------------------------------------------------------- outputs
def output_stem(results: dict[str, Any]) -> str:
    """``quality-<dataset>[-<label>]-<device>``."""
    parts = ["quality", results["dataset"], results["label"], results["device_slug"]]
    return "-".join(_slug(p) for p in parts if p)


def write_outputs(results: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """Write the JSON, the markdown table and the chart; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = output_stem(results)
    paths = {ext: out_dir / f"{stem}.{ext}" for ext in ("json", "md", "png")}
    paths["json"].write_text(json.dumps(results, indent=2) + "\n")
    paths["md"].write_text(markdown(results, chart=paths["png"].name))
    write_chart(results, paths["png"])
    return paths


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run every requested model and return the results (also written after every model)."""
    device = _device(args.accelerator)
    args.precision = args.precision or ("bf16-mixed" if device.type == "cuda" else "32-true")
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")
    facts = _data_facts(args)
    budget = Budget(dataset=facts["dataset"], data_dir=facts["data_dir"], image_size=facts["image_size"],
                    epochs=args.epochs, batch_size=args.batch_size,
                    steps_per_epoch=facts["train_size"] // args.batch_size, num_workers=args.num_workers,
                    train_subset=args.train_subset, test_subset=args.test_subset)
    results: dict[str, Any] = {
        "benchmark": "learning quality", "dataset": facts["name"],
        "data": args.data if args.data == "default" else facts["data_dir"],
        "image_size": facts["image_size"], "num_classes": facts["num_classes"], "chance": 1 / facts["num_classes"],
        "train_size": facts["train_size"], "test_size": facts["test_size"], "epochs": args.epochs,
        "batch_size": args.batch_size, "steps_per_epoch": budget.steps_per_epoch, "precision": args.precision,
        "device": _device_name(device), "device_slug": "cpu" if device.type == "cpu" else _slug(_device_name(device)),
        "num_workers": args.num_workers, "gpu_views": bool(args.gpu_views), "seed": args.seed, "smoke": args.smoke,
        "label": args.label,
        "knn": {"k": KNN_K, "temperature": KNN_T, "bank": "train split, eval transform", "queries": "test split"},
        "offline_probe": {"epochs": args.probe_epochs, "optimizer": "AdamW lr 1e-3 wd 1e-4, cosine, batch 256",
                          "features": "standardised frozen backbone features, train split (eval transform)"},
        "torch": torch.__version__, "lightning": L.__version__, "lightly": lightly.__version__,
        "python": platform.python_version(),
        "command": " ".join(["python", "-m", "benchmarks.quality", *map(shlex.quote, args.argv)]),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "rows": [],
    }
    for kind, names in (("method", args.methods), ("baseline", args.baselines)):
        for name in names:
            print(f"[quality] {kind} {name}: training {args.epochs} epoch(s) on {facts['train_size']} images",
                  flush=True)
            row: dict[str, Any] = {"name": name, "kind": kind}
            try:
                model, datamodule, info = build(name, kind, budget, args, device)
                row.update(info)
                row.update(train_and_evaluate(model, datamodule, args, device, facts["num_classes"]))
            except Exception as e:  # keep the other models' results; reported and turned into exit status 1
                row["error"] = f"{type(e).__name__}: {e}"
                print(f"[quality] {name} failed: {row['error']}", file=sys.stderr, flush=True)
            finally:
                model = datamodule = None
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            results["rows"].append(row)
            write_outputs(results, args.out_dir)
            if "error" not in row:
                print(f"[quality] {name}: kNN {row['knn_top1']:.3f}  online probe {row['online_probe_top1']:.3f}  "
                      f"offline probe {row['offline_probe_top1']:.3f}  {row['train_s_per_epoch']:.1f} s/epoch",
                      flush=True)
    return results


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point; returns 0 when every model ran, 1 otherwise."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.render is not None:
        results = json.loads(args.render.read_text())
        paths = write_outputs(results, args.render.parent)
        print("wrote " + ", ".join(str(p) for p in paths.values()))
        return 0
    args.argv = argv
    results = run(args)
    paths = write_outputs(results, args.out_dir)
    print(paths["md"].read_text())
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 1 if any("error" in r for r in results["rows"]) else 0


if __name__ == "__main__":
    sys.exit(main())
