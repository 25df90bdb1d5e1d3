"""GPU check: one command that measures every GPU target within a time budget, and checks itself.

    python -m benchmarks.gpu_check --prepare .gpu_bundle            # here, with registry access: the bundle
    python3 -m benchmarks.gpu_check --bundle .gpu_bundle --out $OUT  # on the GPU machine (offline)
    python -m benchmarks.gpu_check --cpu-smoke --out /tmp/smoke     # every part, tiny, on the CPU (CI)

**Bootstrap** (:mod:`benchmarks.gpu_bundle`). The GPU machine has torch but not lightly or jsonargparse and
reaches no registry. ``--prepare DIR`` (here) writes into one git-ignored folder the wheels of what its
image lacks and a CIFAR-10 subset, under ``--max-mib`` (60) so that it travels with the tree (the device
tool's ``carry``). ``--bundle DIR`` (there) installs from it with ``pip install --no-index --find-links
DIR`` (pip's configuration switched off: the folder is the only source). Every run then checks, in a fresh
interpreter, each requirement's version and the imports of the parts (the ``setup`` entry of the results);
when that fails no part starts and the exit status is 1.

Five parts run in this order, so that the numbers that matter come first, each step a subprocess with a
time box (a hang or a CUDA crash ends that step only); the results files are rewritten before and after
every step, so a run that is killed keeps what finished:

a. **correctness**: ``pytest -m cuda`` (``tests/test_cuda.py`` and the CUDA tests of
   ``tests/test_device_randaugment.py`` and ``tests/test_device_decode_bound.py``, the nvJPEG race of
   pytorch/vision#9606): every method's bf16 step against float32, compiled +
   channels_last against eager, device views and batched JPEG decoding on CUDA against the CPU, the probe
   and kNN callbacks in a GPU fit;
b. **throughput** (``benchmarks.throughput``, bf16, channels_last, eager): the bare backbone first, the
   lightly-built peers, then every method at ResNet-50 / 224 px / batch 256 (two views, then MVEB's
   multi-crop); then ResNet-18-CIFAR / 32 px / batch 512 (the rates the learning run is fitted to);
c. **view pipeline** (``benchmarks.pipeline``): images/s of the CPU loader and of ``gpu_views`` at 224 px
   (re-encoded JPEG photos of mixed sizes) and 32 px, with the worker count (persistent workers, at least
   3 x workers x prefetch batches timed);
d. **learning** (``benchmarks.quality``, one process per model): MVEB and MEC against lightly-built
   SimCLR and BYOL on the bundle's CIFAR-10 subset (or ``../shared/data/cifar10.npz``, or ``--data``), batch
   512, ``--gpu-views``, kNN top-1 and seconds per epoch. ``--quality-epochs auto`` picks the most epochs
   that fit the part's box from the step rates part b measured at 32 px and the pipeline rates of part c;
e. **extras**, all optional: ViT-S/16 at 224 px, then the compiled variants (bare backbone, lightly BYOL,
   MVEB and MEC at 32 px, then MVEB at 224 px; compiling a ResNet-50 can take a minute or more per graph).

**Time boxes.** ``--budget-s`` (default 540) is split by :data:`SHARES` (seconds at 540; correctness 90,
throughput 130, pipeline 80, learning 150, extras 70; a reserve of 20 s for writing and exits). A part's
box is its share of the time still left when it starts, so time a part leaves unused goes to the later
ones; within a part each step gets its weighted share of the part's remaining time in the same way (an
optional step of weight 0 gets what its part has left, if that is enough). A step that exceeds its box is
killed (its whole process group) and recorded as ``timed out``; a step whose box is below its minimum is
``skipped``. Statuses: ``ok``, ``failed``, ``timed out``, ``skipped`` (``pending`` / ``running`` in the
files written while the run goes on; ``interrupted`` when a signal stopped the run).

**Results**: ``gpu-check-<gpu-name-slug>.json`` and ``.md`` in ``--out`` (default
``benchmarks/results/``; on the device machine pass the folder that comes back): the GPU, driver / CUDA /
cuDNN / torch versions, the exact command, the setup, each part's and step's status, seconds and box, the
measured numbers, and the table against the targets (:func:`evaluate_targets`), which is also printed at
the end. The steps' own outputs and logs go to ``--logs`` (default: a new temporary directory, never
inside ``--out``); the JSON keeps the last lines of every log, and ``gpu-check-logs.tar.gz`` in ``--out``
(one flat file, rewritten after every step) holds the logs' text.

Exit status: 0 when every part is ``ok`` (``--cpu-smoke``: the CUDA tests ``skipped``), 1 otherwise (or
when the setup fails), 2 when there is no GPU (without ``--cpu-smoke``). No network is needed.

``--cpu-smoke`` runs the same parts end to end on the CPU with tiny sizes (``CUDA_VISIBLE_DEVICES`` is
emptied for the steps, so the CUDA tests skip; one thread per process; default budget 3600 s), writes
``gpu-check-smoke-cpu.*`` to ``--out`` (default: a new temporary directory, never ``benchmarks/results/``)
and is what ``tests/test_gpu_check.py`` runs, so that the GPU run keeps working on machines without one;
``scripts/gpu_dress_rehearsal.sh`` runs it from a bundle in a fresh virtual environment, offline.
Only the compiled throughput steps have no CPU counterpart (compiling on the CPU takes minutes).
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import io
import json
import math
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script (python benchmarks/gpu_check.py): the package is beside it
    sys.path.insert(0, str(ROOT))

from benchmarks import gpu_bundle  # noqa: E402 - the standard library only, like this module

RESULTS = ROOT / "benchmarks" / "results"
SHARED_CIFAR = ROOT.parent / "shared" / "data" / "cifar10.npz"

PARTS = ("correctness", "throughput", "pipeline", "quality", "extras")
TITLES = {
    "correctness": "a. CUDA correctness (pytest -m cuda)",
    "throughput": "b. training-step throughput",
    "pipeline": "c. view pipeline",
    "quality": "d. short learning run",
    "extras": "e. extras: ViT, compiled (optional)",
}
#: seconds of the default budget (540 s) per part; rescaled to --budget-s
SHARES = {"correctness": 90.0, "throughput": 130.0, "pipeline": 80.0, "quality": 150.0, "extras": 70.0}
LOGS_ARCHIVE = "gpu-check-logs.tar.gz"
LOGS_ARCHIVE_FILE_BYTES = 2 * 2**20  # per log file (its end); the device tool takes back 16 MiB a file
DEFAULT_BUDGET_S = 540.0
SMOKE_BUDGET_S = 3600.0
RESERVE_S = 20.0  # of the default budget, kept for writing the results and the processes' exits

#: targets (benchmarks/README.md): methods vs the bare backbone (by whether they run an EMA teacher) and
#: vs their lightly-built peer; the gpu_views pipeline with two views, in images/s
TARGET_VS_BACKBONE = {False: 0.93, True: 0.70}
TARGET_VS_PEER = 1.0
TARGET_PIPELINE = {"224px-two_views": 4000.0, "32px-two_views_cifar": 40000.0}
#: the learning part's methods: a chosen two of the registry (the headline targets of benchmarks/README.md),
#: not all: four models (with the two baselines) are what its 210 s box fits
QUALITY_METHODS = ("mveb", "mec")
QUALITY_BASELINES = ("simclr", "byol")
#: relative cost of an epoch per model (MVEB: 2 + 6 smaller crops), for the per-model boxes
QUALITY_WEIGHTS = {"mveb": 1.5, "mec": 1.0, "simclr": 0.8, "byol": 1.0}
#: throughput row that stands for each quality model's training step at 32 px
QUALITY_RATE_ROWS = {"mveb": ("mveb", 8), "mec": ("mec", 2), "simclr": ("lightly_simclr", 2),
                     "byol": ("lightly_byol", 2)}
QUALITY_OVERHEAD_S = 30.0  # per model: start-up, data, first-epoch set-up, final validation, offline probe
QUALITY_SAFETY = 1.5  # measured step rates leave out data loading hiccups, the online probe, logging
QUALITY_PROBE_EPOCHS = 20
CIFAR_TRAIN_IMAGES = 50000


# ------------------------------------------------------------------------------------------------ plan
@dataclass
class Step:
    """One subprocess of a part: ``python <argv>``, with its own time box."""

    name: str
    argv: list[str]
    weight: float = 1.0
    min_s: float = 0.0  # skipped when its box is shorter
    optional: bool = False  # skipping it for lack of time leaves the part ok
    out: Optional[Path] = None  # where the step writes its results
    prepare: Optional[Callable[["Step", dict], None]] = None  # last-minute arguments (from earlier parts)


@dataclass
class Plan:
    smoke: bool
    steps: dict[str, list[Step]] = field(default_factory=dict)


def plan(args: argparse.Namespace, logs: Path) -> Plan:
    """The steps of every part, for the GPU or for ``--cpu-smoke``."""
    smoke = args.cpu_smoke
    p = Plan(smoke=smoke)
    junit = logs / "correctness.xml"
    p.steps["correctness"] = [Step(
        "pytest", ["-m", "pytest", "-m", "cuda", "-v", "-p", "no:cacheprovider", f"--junitxml={junit}",
                   "tests/test_device_randaugment.py", "tests/test_device_decode_bound.py", "tests/test_cuda.py"],
        min_s=10)]

    def tp(name: str, preset: str, *extra: str, weight: float, min_s: float, optional: bool = False) -> Step:
        out = logs / f"throughput-{name}"
        return Step(name, ["-m", "benchmarks.throughput", "--preset", preset, *extra, "--out", str(out)],
                    weight=weight, min_s=min_s, optional=optional, out=out)

    if smoke:
        p.steps["throughput"] = [tp("eager-tiny", "cpu-tiny", "--compile", "eager", "--multicrop", "--methods",
                                    "mveb,er_simclr", "--peers", "lightly_simclr,lightly_byol", "--warmup", "1",
                                    "--steps", "1", weight=1, min_s=0)]
        p.steps["extras"] = []  # compiling on the CPU takes minutes; the ViT preset is a GPU one
    else:
        # benchmarks.throughput times the bare backbone first, then the peers, the methods, the multi-crop rows
        eager = ("--compile", "eager", "--multicrop", "--warmup", "3")
        compiled = ("--compile", "compiled", "--peers", "lightly_byol", "--warmup", "3")
        p.steps["throughput"] = [
            tp("eager-r50", "gpu-r50", *eager, "--steps", "8", weight=0.65, min_s=30),
            tp("eager-cifar", "gpu-cifar", *eager, "--steps", "15", weight=0.35, min_s=20),
        ]
        p.steps["extras"] = [
            tp("eager-vit", "gpu-vit", *eager, "--steps", "8", weight=0.35, min_s=25, optional=True),  # ViT-S/16
            tp("compiled-cifar", "gpu-cifar", *compiled, "--methods", "mveb,mec", "--steps", "15", weight=0.65,
               min_s=40, optional=True),
            tp("compiled-r50", "gpu-r50", *compiled, "--methods", "mveb", "--steps", "8", weight=0.0, min_s=60,
               optional=True),
        ]

    def pl(name: str, cases: str, *extra: str, weight: float, min_s: float, optional: bool = False) -> Step:
        out = logs / f"pipeline-{name}"
        npz = learning_data(args)  # --data, or the bundle's CIFAR-10 subset (no ../shared on the GPU machine)
        data = ["--data", str(npz)] if args.data or (not smoke and npz.is_file()) else []
        return Step(name, ["-m", "benchmarks.pipeline", "--cases", cases, *data, *extra, "--out", str(out)],
                    weight=weight, min_s=min_s, out=out, optional=optional)

    if smoke:
        tiny = ("--preset", "cpu-tiny", "--workers", "0", "--photo-size", "64")
        data = () if args.data else ("--data", "default")
        p.steps["pipeline"] = [pl("224px", "224px-two_views", *tiny, *data, weight=1, min_s=0),
                               pl("32px", "32px-two_views_cifar", *tiny, *data, weight=1, min_s=0),
                               pl("sources", "32px-two_views_cifar", *tiny, *data, "--sources", "npz,litdata",
                                  "--source-workers", "0", weight=1, min_s=0)]
    else:
        p.steps["pipeline"] = [
            pl("224px", "224px-two_views,224px-mveb_multicrop", "--preset", "gpu", "--images", "1024",
               weight=0.6, min_s=15),
            pl("32px", "32px-two_views_cifar,32px-mveb_multicrop_cifar", "--preset", "gpu", "--images", "8192",
               weight=0.4, min_s=10),
            # where the images come from (npz vs LitData shards), CPU path and gpu_views; with what time is left
            pl("sources", "224px-two_views", "--preset", "gpu", "--images", "1024", "--sources", "npz,litdata",
               "--source-workers", str(max(1, (os.cpu_count() or 2) - 1)), weight=0.0, min_s=30, optional=True),
        ]

    quality = []
    for kind, names in (("method", QUALITY_METHODS), ("baseline", QUALITY_BASELINES)):
        for name in names:
            out = logs / f"quality-{name}"
            which = (["--methods", name, "--baselines", ""] if kind == "method"
                     else ["--methods", "", "--baselines", name])
            if smoke:
                sizes = ["--smoke", "--batch-size", "4", "--train-subset", "4", "--test-subset", "8",
                         "--probe-epochs", "1"]
            else:
                sizes = ["--data", str(learning_data(args)), "--batch-size", "512",
                         "--probe-epochs", str(QUALITY_PROBE_EPOCHS), "--label", "gpu-check"]
            quality.append(Step(name, ["-m", "benchmarks.quality", *which, *sizes, "--gpu-views", "--out-dir",
                                       str(out)], weight=QUALITY_WEIGHTS[name], min_s=0 if smoke else 20, out=out,
                                prepare=None if smoke else _quality_epochs_arg))
    p.steps["quality"] = quality
    return p


def learning_data(args: argparse.Namespace) -> Path:
    """The learning run's npz: ``--data``, else the bundle's CIFAR-10 subset, else ``../shared/data/cifar10.npz``."""
    if args.data:
        return Path(args.data)
    bundled = Path(args.bundle) / gpu_bundle.CIFAR_SUBSET if getattr(args, "bundle", None) else None
    return bundled if bundled is not None and bundled.is_file() else SHARED_CIFAR


def train_images(npz: Path) -> int:
    """Training images of a CIFAR npz (``len(y_train)``); :data:`CIFAR_TRAIN_IMAGES` when it cannot be read."""
    try:
        import numpy as np

        with np.load(npz) as data:
            return int(len(data["y_train"]))
    except Exception:  # noqa: BLE001 - the epoch fit falls back to the full CIFAR-10 size
        return CIFAR_TRAIN_IMAGES


# ------------------------------------------------------------------------------------------------ time boxes
def box(remaining_s: float, weights: Sequence[float]) -> float:
    """The first item's share of ``remaining_s``, in proportion to ``weights`` (it and those after it).

    When every weight left is 0 (optional steps), the first one gets all of it.
    """
    total = sum(weights)
    return max(0.0, remaining_s) * (weights[0] / total if total > 0 else 1.0)


# ------------------------------------------------------------------------------------------------ subprocesses
class Interrupted(Exception):
    """SIGTERM / SIGINT while a step runs."""


def _kill_group(proc: subprocess.Popen) -> None:
    """End ``proc`` and everything it started (its own session): SIGTERM, then SIGKILL after 3 s."""
    for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _pump(stream: Any, log: Any, prefix: str, echo: bool) -> None:
    for line in stream:
        log.write(line)
        log.flush()
        if echo:
            sys.stdout.write(f"{prefix}{line}")
            sys.stdout.flush()


def run_command(argv: Sequence[str], timeout_s: float, log_path: Path, env: Optional[dict] = None,
                echo: bool = True, prefix: str = "") -> dict[str, Any]:
    """Run ``python argv`` from the repository root with a time box; its output goes to ``log_path``.

    Returns ``status`` (``ok``, ``failed``, ``timed out``), ``returncode``, ``seconds`` and ``log_tail``.
    On ``timeout_s`` the process group is killed. Raises :class:`Interrupted` (after killing the group)
    when a signal arrives.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    status = "failed"
    with open(log_path, "w") as log:
        log.write(f"$ {shlex.join([sys.executable, *argv])}\n")
        log.flush()
        proc = subprocess.Popen([sys.executable, *argv], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, bufsize=1, start_new_session=True)
        reader = threading.Thread(target=_pump, args=(proc.stdout, log, prefix, echo), daemon=True)
        reader.start()
        try:
            returncode = proc.wait(timeout=max(timeout_s, 0.1))
            status = "ok" if returncode == 0 else "failed"
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            status = "timed out"
        except BaseException:
            _kill_group(proc)
            raise
        finally:
            reader.join(timeout=5)
    return {"status": status, "returncode": proc.returncode, "seconds": round(time.monotonic() - start, 2),
            "log_tail": _tail(log_path)}


def _tail(path: Path, chars: int = 4000) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return text[-chars:]


# ------------------------------------------------------------------------------------------------ collecting
_OUTCOME = re.compile(r"^(tests/\S+::\S+) (PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)\b")


def collect_correctness(part: dict, step: Step, result: dict, log_path: Path, junit: Path) -> None:
    """Test outcomes from pytest's ``-v`` lines (present even when the run was cut) and failure messages from
    its JUnit XML (written at the end)."""
    outcomes: dict[str, str] = {}
    for line in log_path.read_text(errors="replace").splitlines():
        m = _OUTCOME.match(line)
        if m:
            outcomes[m.group(1)] = m.group(2).lower()
    messages: dict[str, str] = {}
    if junit.is_file():
        try:
            for case in ET.parse(junit).getroot().iter("testcase"):
                for kind in ("failure", "error"):
                    el = case.find(kind)
                    if el is not None:
                        name = f"{case.get('classname', '')}.{case.get('name', '')}"
                        messages[name] = (el.get("message") or "")[:500]
        except ET.ParseError:
            pass
    counts = {k: sum(v == k for v in outcomes.values()) for k in ("passed", "failed", "skipped", "error")}
    part["results"] = {"counts": counts, "tests": outcomes, "failure_messages": messages}
    if result["status"] == "timed out":
        return
    if counts["failed"] or counts["error"] or result["returncode"] != 0:
        result["status"] = "failed"
    elif counts["passed"] == 0:
        result["status"] = "skipped"  # no CUDA: every test skipped cleanly
    else:
        result["status"] = "ok"


def _read_json(out: Optional[Path], pattern: str) -> Optional[dict]:
    if out is None:
        return None
    for path in sorted(out.glob(pattern)):
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return None
    return None


def collect_rows(part: dict, step: Step, result: dict, pattern: str) -> None:
    """Append the rows of the step's results file (also a partial one) to the part's, tagged with the step."""
    data = _read_json(step.out, pattern)
    results = part.setdefault("results", {"rows": []})
    if data is None:
        return
    for key, value in data.items():
        if key not in ("rows", "command"):
            results.setdefault(key, value)
    if step.name != "sources":  # the sources step re-measures a 224 px case first: its source_rows are what it adds
        results["rows"].extend({"step": step.name, **row} for row in data.get("rows", []))
    results.setdefault("commands", {})[step.name] = data.get("command")


def collect_quality(part: dict, step: Step, result: dict) -> None:
    data = _read_json(step.out, "quality-*.json")
    results = part.setdefault("results", {"rows": []})
    if data is None:
        return
    for key in ("dataset", "image_size", "train_size", "test_size", "epochs", "batch_size", "steps_per_epoch",
                "precision", "gpu_views", "chance", "num_workers"):
        if key in data:
            results.setdefault(key, data[key])
    for row in data.get("rows", []):
        results["rows"].append({"step": step.name, **row})
        if "error" in row and result["status"] == "ok":
            result["status"] = "failed"


# ------------------------------------------------------------------------------------------------ learning epochs
def quality_epochs(record: dict, box_s: float, images: int = CIFAR_TRAIN_IMAGES) -> Optional[int]:
    """The most epochs of all four models that fit ``box_s``, from the measured rates; None without them.

    Seconds per epoch of a model: ``images / min(its step rate at 32 px (part b, eager), the gpu_views
    pipeline rate at 32 px for its number of views (part c))`` times :data:`QUALITY_SAFETY`; plus
    :data:`QUALITY_OVERHEAD_S` per model. ``images``: the training set's size (50,000 for CIFAR-10).
    """
    tp = [r for r in _rows(record, "throughput") if r.get("size") == 32 and not r.get("compiled")]
    pipe = {r["case"]: r["device_path"]["images_per_s"] for r in _rows(record, "pipeline") if "device_path" in r}
    per_epoch = 0.0
    for name, views in QUALITY_RATE_ROWS.values():
        rate = next((r["images_per_s"] for r in tp if r["name"] == name and r.get("views", 2) == views), None)
        if rate is None or not math.isfinite(rate) or rate <= 0:
            return None
        data_rate = pipe.get("32px-mveb_multicrop_cifar" if views > 2 else "32px-two_views_cifar", math.inf)
        per_epoch += QUALITY_SAFETY * images / min(rate, data_rate)
    spare = box_s - QUALITY_OVERHEAD_S * len(QUALITY_RATE_ROWS)
    return max(1, min(20, int(spare // per_epoch)))


def _quality_epochs_arg(step: Step, context: dict) -> None:
    step.argv += ["--epochs", str(context["quality_epochs"])]


# ------------------------------------------------------------------------------------------------ targets
def _rows(record: dict, part: str) -> list[dict]:
    """The rows of ``part``'s results; ``"throughput"``: part b's and then the extras' (same benchmark)."""
    names = ("throughput", "extras") if part == "throughput" else (part,)
    return [r for name in names for p in record["parts"] if p["name"] == name
            for r in p.get("results", {}).get("rows", [])]


def evaluate_targets(record: dict) -> list[dict]:
    """One row per target and measurement: ``target``, ``setting``, ``measured``, ``threshold``, ``pass``."""
    out: list[dict] = []
    part = next(p for p in record["parts"] if p["name"] == "correctness")
    counts = part.get("results", {}).get("counts")
    if counts is not None:
        failed = counts["failed"] + counts["error"]
        measured = f"{counts['passed']}/{failed}/{counts['skipped']}"
        verdict = {"ok": True, "skipped": None}.get(part["status"], False)
        out.append({"target": "CUDA tests pass", "setting": "pytest -m cuda; passed/failed/skipped",
                    "measured": measured, "threshold": "all pass", "pass": verdict})
    for r in _rows(record, "throughput"):
        if "peer" not in r:  # a peer or the bare backbone itself
            continue
        setting = (f"{r['backbone']} {r['size']} px batch {r['batch_size']}, {r.get('views', 2)} views, "
                   f"{'compiled' if r['compiled'] else 'eager'}")
        teacher = bool(r.get("has_teacher"))
        threshold = TARGET_VS_BACKBONE[teacher]
        out.append({"target": f"{r['name']} vs bare backbone ({'EMA teacher' if teacher else 'no teacher'})",
                    "setting": setting, "measured": r["vs_backbone"], "threshold": threshold,
                    "pass": _ge(r["vs_backbone"], threshold)})
        if "vs_peer" in r:
            out.append({"target": f"{r['name']} vs {r['peer']}", "setting": setting, "measured": r["vs_peer"],
                        "threshold": TARGET_VS_PEER, "pass": _ge(r["vs_peer"], TARGET_VS_PEER)})
    for r in _rows(record, "pipeline"):
        if r.get("case") in TARGET_PIPELINE and "device_path" in r:
            threshold = TARGET_PIPELINE[r["case"]]
            rate = r["device_path"]["images_per_s"]
            out.append({"target": f"gpu_views pipeline {r['case']} (images/s)",
                        "setting": f"batch {r['batch_size']}, {r['workers']} workers, decode {r.get('decode')}",
                        "measured": rate, "threshold": threshold, "pass": _ge(rate, threshold)})
    qpart = next(p for p in record["parts"] if p["name"] == "quality")
    chance = qpart.get("results", {}).get("chance", 0.1)
    for r in _rows(record, "quality"):
        if "knn_top1" not in r:
            continue
        epochs = qpart.get("results", {}).get("epochs")
        out.append({"target": f"{r.get('label', r['name'])} learns (kNN top-1 >= 2 x chance)",
                    "setting": f"{epochs} epochs, {r.get('train_s_per_epoch', math.nan):.1f} s/epoch",
                    "measured": r["knn_top1"], "threshold": 2 * chance, "pass": _ge(r["knn_top1"], 2 * chance)})
    return out


def _ge(value: Any, threshold: float) -> Optional[bool]:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return None if not math.isfinite(v) else v >= threshold


# ------------------------------------------------------------------------------------------------ environment
def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _run_quiet(cmd: Sequence[str]) -> str:
    try:
        return subprocess.run(list(cmd), cwd=ROOT, capture_output=True, text=True, timeout=15).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


_GPU_PROBE = """
import json, torch
info = {"available": torch.cuda.is_available()}
if info["available"]:
    try:
        x = torch.ones(4, device="cuda")
        assert float((x + 1).sum()) == 8.0
        props = torch.cuda.get_device_properties(0)
        info.update(name=props.name, memory_gib=round(props.total_memory / 2**30, 1),
                    count=torch.cuda.device_count(), cudnn=torch.backends.cudnn.version())
    except Exception as e:
        info["error"] = f"{type(e).__name__}: {e}"
print("GPU-PROBE " + json.dumps(info))
"""


def probe_gpu(env: Optional[dict] = None) -> dict[str, Any]:
    """What a fresh process sees of the GPU: ``available``, ``name``, ``memory_gib``, ``count``, ``cudnn``
    or ``error`` (run apart, so that this process never holds a CUDA context the steps might need)."""
    try:
        done = subprocess.run([sys.executable, "-c", _GPU_PROBE], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=180)
    except (OSError, subprocess.SubprocessError) as e:
        return {"available": False, "error": f"{type(e).__name__}: {e}"}
    for line in done.stdout.splitlines():
        if line.startswith("GPU-PROBE "):
            return json.loads(line[len("GPU-PROBE "):])
    return {"available": False, "error": (done.stderr or done.stdout).strip()[-1000:] or "no answer"}


def gpu_problem(info: dict[str, Any]) -> Optional[str]:
    """Why this machine cannot run the GPU check (from :func:`probe_gpu`), or None."""
    if info.get("error"):
        return f"the GPU cannot be used: {info['error']}"
    if not info.get("available"):
        return "no CUDA GPU is available (torch.cuda.is_available() is False)"
    return None


def environment(gpu: Optional[dict[str, Any]]) -> dict[str, Any]:
    """The machine and the versions; ``gpu``: :func:`probe_gpu`'s answer (None: the CPU smoke run)."""
    import torch

    env: dict[str, Any] = {
        "python": platform.python_version(), "torch": torch.__version__, "cuda_build": torch.version.cuda,
        "cpu_count": os.cpu_count(), "machine": platform.machine(), "hostname": platform.node(),
        "git_commit": _run_quiet(["git", "rev-parse", "HEAD"]),
        "git_dirty": bool(_run_quiet(["git", "status", "--porcelain", "--untracked-files=no"])),
    }
    for module in ("torchvision", "lightning", "lightly"):
        try:
            env[module] = __import__(module).__version__
        except Exception:  # noqa: BLE001 - a version is information, never a reason to stop
            env[module] = None
    if gpu is None:
        env["gpu"] = f"cpu-{platform.machine()} (smoke)"
        return env
    env.update(gpu=gpu["name"], gpu_memory_gib=gpu.get("memory_gib"), gpu_count=gpu.get("count"),
               cudnn=gpu.get("cudnn"))
    smi = _run_quiet(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
    env["driver"] = smi.splitlines()[0].strip() if smi else None
    return env


# ------------------------------------------------------------------------------------------------ outputs
def output_stem(record: dict) -> str:
    """``gpu-check-<gpu-name-slug>``, or ``gpu-check-smoke-cpu`` for ``--cpu-smoke``."""
    if record["mode"] == "cpu-smoke":
        return "gpu-check-smoke-cpu"
    return f"gpu-check-{_slug(record['environment']['gpu'])}"


def _fmt(value: Any, digits: int = 2) -> str:
    if isinstance(value, bool) or value is None:
        return {True: "pass", False: "**FAIL**", None: "n/a"}[value]
    if isinstance(value, float):
        if not math.isfinite(value):
            return "n/a"
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.{digits}f}"
    return str(value)


def markdown(record: dict) -> str:
    env = record["environment"]
    smoke = record["mode"] == "cpu-smoke"
    lines = [f"# GPU check on {env['gpu']}{' (CPU smoke run: the numbers mean nothing)' if smoke else ''}", "",
             f"`{record['command']}`, started {record['started']}, budget {record['budget_s']:.0f} s, "
             f"elapsed {record.get('elapsed_s', 0):.0f} s"
             f"{'' if record.get('finished') else ' (still running, or cut)'}.",
             "",
             f"torch {env['torch']} (CUDA {env.get('cuda_build')}, cuDNN {env.get('cudnn')}), "
             f"driver {env.get('driver')}, "
             f"torchvision {env.get('torchvision')}, lightning {env.get('lightning')}, lightly {env.get('lightly')}, "
             f"Python {env['python']}, {env['cpu_count']} CPU cores; commit {env.get('git_commit', '')[:12]}"
             f"{' (dirty)' if env.get('git_dirty') else ''}.", "",
             _setup_line(record.get("setup", {})), "",
             "| part | status | seconds | box (s) | steps |", "|---|---|---:|---:|---|"]
    for p in record["parts"]:
        steps = ", ".join(f"{s['name']}: {s['status']}" for s in p.get("steps", []))
        lines.append(f"| {TITLES[p['name']]} | {p['status']} | {_fmt(p.get('seconds'), 0)} | "
                     f"{_fmt(p.get('budget_s'), 0)} | {steps} |")
    lines += ["", "## Targets", "", "| target | setting | measured | threshold | result |", "|---|---|---:|---:|---|"]
    for t in record.get("targets", []):
        lines.append(f"| {t['target']} | {t['setting']} | {_fmt(t['measured'])} | {_fmt(t['threshold'])} | "
                     f"{_fmt(t['pass'])} |")
    lines += ["", "Methods vs the bare backbone: >= 0.93x without an EMA teacher, >= 0.70x with one (MVEB's "
              "multi-crop included); >= 1.0x the lightly-built peer; the gpu_views pipeline >= 4,000 images/s at "
              "224 px and >= 40,000 at 32 px (two views). The learning run is a short sanity check (the "
              "200-epoch targets are `python -m benchmarks.quality`'s)."]
    tp = _rows(record, "throughput")
    if tp:
        lines += ["", "## Throughput", "", "| step | backbone | px | batch | compiled | model | views | images/s | "
                  "peak GiB | x backbone | x peer |", "|---|---|---:|---:|---|---|---:|---:|---:|---:|---:|"]
        for r in tp:
            peer = f"{r['vs_peer']:.2f} ({r['peer']})" if "vs_peer" in r else ""
            lines.append(f"| {r['step']} | {r['backbone']} | {r['size']} | {r['batch_size']} | {r['compiled']} | "
                         f"{r['name']} | {r.get('views', 2)} | {_fmt(r['images_per_s'])} | "
                         f"{_fmt(r.get('peak_memory_gib'), 1)} | {_fmt(r.get('vs_backbone'))} | {peer} |")
    pipe = _rows(record, "pipeline")
    if pipe:
        lines += ["", "## View pipeline (images/s)", "", "| case | views | batch | workers | decode | CPU path | "
                  "device path | speed-up |", "|---|---:|---:|---:|---|---:|---:|---:|"]
        for r in pipe:
            lines.append(f"| {r['case']} | {r['device_path']['num_views']} | {r['batch_size']} | {r['workers']} | "
                         f"{r.get('decode')} | {_fmt(r['cpu_path']['images_per_s'])} | "
                         f"{_fmt(r['device_path']['images_per_s'])} | {r['speedup']:.2f}x |")
    pipeline_part = next((p for p in record["parts"] if p["name"] == "pipeline"), {})
    sources = pipeline_part.get("results", {}).get("source_rows", [])
    if sources:
        lines += ["", "Where the images come from (npz vs LitData shards, images/s):", "",
                  "| case | source | workers | CPU path | device path |", "|---|---|---:|---:|---:|"]
        for r in sources:
            device_rate = _fmt(r["device_path"]["images_per_s"]) if "device_path" in r else "-"
            lines.append(f"| {r['case']} | {r['source']} | {r['workers']} | {_fmt(r['cpu_path']['images_per_s'])} | "
                         f"{device_rate} |")
    q = _rows(record, "quality")
    if q:
        qres = next(p for p in record["parts"] if p["name"] == "quality")["results"]
        lines += ["", f"## Learning ({qres.get('dataset')}, {qres.get('train_size')} train / {qres.get('test_size')} "
                  f"test images, {qres.get('epochs')} epochs, batch {qres.get('batch_size')}, {qres.get('precision')}, "
                  f"gpu_views {qres.get('gpu_views')})", "",
                  "| model | views | kNN top-1 | online probe | offline probe | s/epoch | peak GiB | error |",
                  "|---|---:|---:|---:|---:|---:|---:|---|"]
        for r in q:
            lines.append(f"| {r.get('label', r['name'])} | {r.get('num_views', '')} | {_fmt(r.get('knn_top1'), 3)} | "
                         f"{_fmt(r.get('online_probe_top1'), 3)} | {_fmt(r.get('offline_probe_top1'), 3)} | "
                         f"{_fmt(r.get('train_s_per_epoch'), 1)} | {_fmt(r.get('peak_memory_gib'), 2)} | "
                         f"{r.get('error', '')} |")
    corr = next(p for p in record["parts"] if p["name"] == "correctness").get("results", {})
    failed = [name for name, outcome in corr.get("tests", {}).items() if outcome in ("failed", "error")]
    if failed:
        lines += ["", "## Failed CUDA tests", ""] + [f"- `{name}`" for name in failed]
    return "\n".join(lines) + "\n"


def _setup_line(setup: dict) -> str:
    status = setup.get("status", "pending")
    line = f"Setup: {status}"
    if "install" in setup:
        installed = " ".join(setup["install"].get("installed", [])) or "nothing new"
        line += f"; from the bundle `{setup.get('bundle')}`: {installed}"
    if setup.get("problems"):
        line += "; problems: " + "; ".join(f"`{p[:200]}`" for p in setup["problems"])
    return line + "."


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_outputs(record: dict, out_dir: Path) -> dict[str, Path]:
    """Rewrite ``<stem>.json`` and ``<stem>.md`` (with the targets evaluated on what is there now)."""
    record["targets"] = evaluate_targets(record)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = output_stem(record)
    paths = {"json": out_dir / f"{stem}.json", "md": out_dir / f"{stem}.md"}
    _atomic_write(paths["json"], json.dumps(record, indent=2, default=str) + "\n")
    _atomic_write(paths["md"], markdown(record))
    return paths


# ------------------------------------------------------------------------------------------------ main
def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget-s", type=float, default=None,
                        help=f"wall-clock budget of the whole check in seconds (default {DEFAULT_BUDGET_S:.0f}; "
                             f"--cpu-smoke: {SMOKE_BUDGET_S:.0f}, so that a slow machine does not cut it)")
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="every part on the CPU with tiny sizes (the CUDA tests skip); results to --out or a "
                             "temporary directory")
    parser.add_argument("--out", type=Path, default=None,
                        help="results directory (default: benchmarks/results; --cpu-smoke: a temporary directory)")
    parser.add_argument("--logs", type=Path, default=None,
                        help="directory for the steps' logs and own results (default: a temporary directory)")
    parser.add_argument("--data", type=Path, default=None,
                        help=f"CIFAR-10 npz for the learning run and the pipeline (default: {SHARED_CIFAR})")
    parser.add_argument("--quality-epochs", default="auto",
                        help="epochs of the learning run, or 'auto' (fit the box from parts b and c; default)")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, from {', '.join(PARTS)}")
    parser.add_argument("--prepare", type=Path, default=None, metavar="DIR",
                        help="build the offline bundle in DIR (wheels the GPU image lacks + a CIFAR-10 subset; "
                             "needs registry access; git-ignored default .gpu_bundle) and exit")
    parser.add_argument("--max-mib", type=float, default=gpu_bundle.DEFAULT_MAX_MIB,
                        help="--prepare: the bundle's size limit in MiB (the CIFAR-10 subset shrinks to fit)")
    parser.add_argument("--bundle", type=Path, default=None, metavar="DIR",
                        help="install the bundle's wheels offline (pip --no-index --find-links DIR) before the "
                             "environment check; its CIFAR-10 subset is the learning run's data")
    parser.add_argument("--quiet", action="store_true", help="do not echo the steps' output")
    args = parser.parse_args(argv)
    args.parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = [p for p in args.parts if p not in PARTS]
    if unknown:
        parser.error(f"unknown part(s) {', '.join(unknown)}; valid: {', '.join(PARTS)}")
    if args.quality_epochs != "auto" and not (args.quality_epochs.isdigit() and int(args.quality_epochs) >= 1):
        parser.error("--quality-epochs must be 'auto' or a positive integer")
    if args.budget_s is None:
        args.budget_s = SMOKE_BUDGET_S if args.cpu_smoke else DEFAULT_BUDGET_S
    if args.budget_s <= 0:
        parser.error("--budget-s must be positive")
    if args.data is not None and not args.data.is_file():
        parser.error(f"--data: file not found: {args.data}")
    if args.bundle is not None and not (args.bundle / gpu_bundle.MANIFEST).is_file():
        parser.error(f"--bundle {args.bundle}: no {gpu_bundle.MANIFEST} there (build it with --prepare DIR)")
    if args.prepare is not None and (args.bundle is not None or args.cpu_smoke):
        parser.error("--prepare builds the bundle and exits: run it alone (with --data / --max-mib)")
    if args.out is not None and args.logs is not None and _inside(args.logs, args.out):
        parser.error(f"--logs {args.logs} is inside --out {args.out}: --out takes the results files only")
    return args


def _inside(path: Path, folder: Path) -> bool:
    return path.resolve() == folder.resolve() or folder.resolve() in path.resolve().parents


def run_prepare(args: argparse.Namespace) -> int:
    """``--prepare DIR``: build the bundle (:func:`benchmarks.gpu_bundle.prepare`) and print what is in it."""
    try:
        manifest = gpu_bundle.prepare(args.prepare, data=args.data, max_mib=args.max_mib)
    except gpu_bundle.BundleError as e:
        print(f"gpu_check --prepare: {e}", file=sys.stderr)
        return 1
    data = manifest["data"]
    print(f"wrote {args.prepare}: {len(manifest['wheels'])} wheels ({manifest['wheels_mib']:.1f} MiB: "
          f"{', '.join(f'{n} {v}' for n, v in manifest['distributions'].items())}), "
          + (f"CIFAR-10 subset {data['train']} train / {data['test']} test ({data['mib']:.1f} MiB)" if data
             else "no CIFAR-10 data (none found; pass --data)")
          + f"; {manifest['total_mib']:.1f} MiB in all, {manifest['seconds']:.0f} s")
    return 0


def setup_environment(args: argparse.Namespace, logs: Path) -> dict[str, Any]:
    """Install the bundle (with ``--bundle``), then check the requirements' versions and the parts' imports in a
    fresh interpreter: ``{"status", "install"?, "versions", "problems", "seconds"}``."""
    start = time.monotonic()
    setup: dict[str, Any] = {}
    requirements = gpu_bundle.project_requirements()
    if args.bundle is not None:
        setup["bundle"] = str(args.bundle)
        setup["install"] = gpu_bundle.install(args.bundle, log=logs / "setup-install.log")
        if setup["install"]["status"] != "ok":
            setup.update(status="failed", problems=["pip install from the bundle failed (install.log_tail)"],
                         seconds=round(time.monotonic() - start, 1))
            return setup
    setup.update(gpu_bundle.check_environment(requirements))
    setup["seconds"] = round(time.monotonic() - start, 1)
    return setup


def write_logs_archive(logs: Path, out: Path) -> Optional[Path]:
    """``out/gpu-check-logs.tar.gz``: the text logs under ``logs`` (``*.log``, ``*.xml``, ``*.json``, ``*.md``;
    each file's last :data:`LOGS_ARCHIVE_FILE_BYTES`), one flat file beside the results."""
    files = sorted(f for f in logs.rglob("*") if f.is_file() and f.suffix in (".log", ".xml", ".json", ".md"))
    if not files:
        return None
    path = out / LOGS_ARCHIVE
    tmp = path.with_name(path.name + ".tmp")
    with tarfile.open(tmp, "w:gz") as tar:
        for f in files:
            data = f.read_bytes()[-LOGS_ARCHIVE_FILE_BYTES:]
            info = tarfile.TarInfo(str(f.relative_to(logs)))
            info.size, info.mtime = len(data), int(f.stat().st_mtime)
            tar.addfile(info, io.BytesIO(data))
    os.replace(tmp, path)
    return path


def _on_signal(signum: int, frame: Any) -> None:
    raise Interrupted(signal.Signals(signum).name)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.prepare is not None:
        return run_prepare(args)
    t0 = time.monotonic()
    gpu = None
    if not args.cpu_smoke:
        gpu = probe_gpu()
        problem = gpu_problem(gpu)
        if problem is not None:
            print(f"gpu_check: {problem}.\nThis check needs one CUDA GPU; on a machine without one run "
                  "`python -m benchmarks.gpu_check --cpu-smoke` (every part on the CPU, tiny sizes).", file=sys.stderr)
            return 2
    out = args.out or (Path(tempfile.mkdtemp(prefix="gpu-check-smoke-")) if args.cpu_smoke else RESULTS)
    logs = args.logs or Path(tempfile.mkdtemp(prefix="gpu-check-logs-"))
    if _inside(logs, out):
        print(f"gpu_check: --logs {logs} is inside the results folder {out}; pass another --logs", file=sys.stderr)
        return 2
    logs.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("MVSSL_CUDA_TESTS_DEVICE", None)
    if args.cpu_smoke:  # the CPU, one thread per process (the parts run one at a time)
        env.update(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    steps = plan(args, logs).steps
    scale = args.budget_s / DEFAULT_BUDGET_S
    deadline = t0 + args.budget_s - RESERVE_S * min(scale, 1.0)
    record: dict[str, Any] = {
        "benchmark": "gpu check", "mode": "cpu-smoke" if args.cpu_smoke else "gpu",
        "command": " ".join(["python", "-m", "benchmarks.gpu_check", *map(shlex.quote, argv)]),
        "budget_s": args.budget_s, "shares_s": {k: v * scale for k, v in SHARES.items()},
        "started": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "finished": None, "elapsed_s": 0.0, "logs": str(logs), "environment": environment(gpu),
        "setup": {"status": "pending"},
        "parts": [{"name": name, "title": TITLES[name], "status": "pending", "steps": []} for name in PARTS],
        "targets": [],
    }
    print(f"gpu_check: {record['environment']['gpu']}, budget {args.budget_s:.0f} s; results -> {out}; "
          f"logs -> {logs}", flush=True)

    def save() -> None:
        record["elapsed_s"] = round(time.monotonic() - t0, 1)
        write_outputs(record, out)
        write_logs_archive(logs, out)

    save()
    record["setup"] = setup_environment(args, logs)
    if record["setup"]["status"] != "ok":
        for part in record["parts"]:
            part.update(status="skipped", note="setup failed")
        record["finished"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        save()
        print("gpu_check: the environment is not ready, no part was started:\n  "
              + "\n  ".join(record["setup"].get("problems", [])), file=sys.stderr)
        return 1
    if "install" in record["setup"]:  # the versions of what was just installed
        importlib.invalidate_caches()
        record["environment"] = environment(gpu)
    print(f"gpu_check: setup ok in {record['setup']['seconds']:.0f} s"
          + (f" (installed from the bundle: {' '.join(record['setup']['install']['installed']) or 'nothing new'})"
             if "install" in record["setup"] else ""), flush=True)
    save()
    context: dict[str, Any] = {}
    previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    interrupted = False
    try:
        for i, name in enumerate(PARTS):
            part = record["parts"][i]
            if name not in args.parts:
                part.update(status="skipped", note="not requested (--parts)")
                save()
                continue
            interrupted = _run_part(name, part, steps[name], args, record, context, deadline, save,
                                    [SHARES[p] for p in PARTS[i:] if p in args.parts], logs, env)
            if interrupted:
                break
    except Interrupted:  # between two steps
        interrupted = True
        for part in record["parts"]:
            if part["status"] == "running":
                part["status"] = "interrupted"
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    record["finished"] = None if interrupted else datetime.datetime.now(datetime.timezone.utc).strftime(
        "%Y-%m-%d %H:%M:%S UTC")
    save()
    paths = write_outputs(record, out)
    print("\n" + _summary(record) + f"\nwrote {paths['json']} and {paths['md']}", flush=True)
    expected = {"correctness": "skipped", "extras": "skipped"} if args.cpu_smoke else {"extras": "skipped"}
    ok = all(p["status"] in ("ok", expected.get(p["name"], "ok")) or p.get("note") == "not requested (--parts)"
             for p in record["parts"])
    return 0 if ok and not interrupted else 1


def _run_part(name: str, part: dict, steps: list[Step], args: argparse.Namespace, record: dict, context: dict,
              deadline: float, save: Callable[[], None], shares_left: list[float], logs: Path, env: dict) -> bool:
    """Run one part's steps in their boxes; returns whether a signal interrupted it."""
    start = time.monotonic()
    part_box = box(deadline - start, shares_left)
    part_deadline = start + part_box
    part.update(status="running", budget_s=round(part_box, 1))
    if name == "quality":
        data = learning_data(args)
        if not args.cpu_smoke and not Path(data).is_file():
            part.update(status="skipped", note=f"no CIFAR-10 npz at {data} (pass --data or --bundle)", seconds=0.0)
            save()
            return False
        fitted = quality_epochs(record, part_box, CIFAR_TRAIN_IMAGES if args.cpu_smoke else train_images(data))
        if args.cpu_smoke:
            part["epochs_rule"] = "smoke: benchmarks.quality --smoke (1 epoch)"
        elif args.quality_epochs != "auto":
            context["quality_epochs"], part["epochs_rule"] = int(args.quality_epochs), "--quality-epochs"
        elif fitted is not None:
            context["quality_epochs"], part["epochs_rule"] = fitted, "auto: fitted to the box from parts b and c"
        else:
            context["quality_epochs"], part["epochs_rule"] = 8, "auto: no rates from parts b and c, 8"
    save()
    interrupted = False
    for j, step in enumerate(steps):
        now = time.monotonic()
        step_box = box(part_deadline - now, [s.weight for s in steps[j:]])
        entry: dict[str, Any] = {"name": step.name, "budget_s": round(step_box, 1)}
        part["steps"].append(entry)
        if step_box < step.min_s or step_box <= 0:
            entry.update(status="skipped", note=f"no time left (box {step_box:.0f} s < {step.min_s:.0f} s)",
                         no_time=True, optional=step.optional, seconds=0.0)
            save()
            continue
        if step.prepare is not None:
            step.prepare(step, context)
        entry.update(status="running", command=" ".join(["python", *map(shlex.quote, step.argv)]))
        save()
        log_path = logs / f"{name}-{step.name}.log"
        print(f"\n== {TITLES[name]}: {step.name} (box {step_box:.0f} s)", flush=True)
        try:
            result = run_command(step.argv, step_box, log_path, env=env, echo=not args.quiet,
                                 prefix=f"[{name}:{step.name}] ")
        except Interrupted as e:
            result = {"status": "interrupted", "returncode": None, "seconds": round(time.monotonic() - now, 2),
                      "log_tail": _tail(log_path), "note": f"stopped by {e}"}
            interrupted = True
        if name == "correctness":
            collect_correctness(part, step, result, log_path, logs / "correctness.xml")
        elif name == "quality":
            collect_quality(part, step, result)
        else:
            collect_rows(part, step, result, f"{'throughput' if name == 'extras' else name}-*.json")
        entry.update(result)
        save()
        if interrupted:
            break
    part["seconds"] = round(time.monotonic() - start, 1)
    part["status"] = "interrupted" if interrupted else part_status(part["steps"])
    save()
    return interrupted


def part_status(steps: list[dict]) -> str:
    """A part's status from its steps': any failed, else any timed out (or a needed step left without time),
    else ``skipped`` when every step skipped on its own (the CUDA tests without CUDA), else ``ok``."""
    statuses = [s["status"] for s in steps]
    if not steps or all(s.get("no_time") and s.get("optional") for s in steps):
        return "skipped"  # nothing to run here (the CPU smoke run's extras), or no time for optional steps
    if "failed" in statuses:
        return "failed"
    if "timed out" in statuses or any(s.get("no_time") and not s.get("optional") for s in steps):
        return "timed out"
    ran = [s["status"] for s in steps if not s.get("no_time")]
    if ran and all(st == "skipped" for st in ran):
        return "skipped"
    return "ok" if ran else "timed out"


def _summary(record: dict) -> str:
    lines = ["GPU check: " + ", ".join(f"{p['name']} {p['status']}" for p in record["parts"]), "",
             f"{'target':56} {'measured':>14} {'threshold':>10}  {'result':6}  setting"]
    for t in record["targets"]:
        lines.append(f"{t['target'][:56]:56} {_fmt(t['measured']):>14} {_fmt(t['threshold']):>10}  "
                     f"{_fmt(t['pass']).strip('*'):6}  {t['setting']}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
