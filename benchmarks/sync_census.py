"""Census of the host syncs of a steady-state training step, per method, with the default callbacks.

    python -m benchmarks.sync_census                          # CPU: every method, writes census-cpu.{json,md}
    python -m benchmarks.sync_census --label before           # census-cpu-before.{json,md}
    python -m benchmarks.sync_census --device cuda            # also torch.cuda.set_sync_debug_mode("warn")
    python -m benchmarks.sync_census --methods mveb,amdim --steps 20 --log-every 10

A *host sync* is a call that makes the Python thread wait for the accelerator: on CUDA, every read of a
device value on the host. The CPU census counts the calls that are host syncs when the tensors live on a
GPU, with a :class:`~torch.overrides.TorchFunctionMode` (:class:`SyncCensus`):

* ``item``: ``.item()``, ``int()``, ``float()``, ``bool()``, ``operator.index`` of a tensor, ``.tolist()``,
  ``.numpy()``, ``.cpu()``; ``torch.equal``, ``torch.allclose``;
* ``nonzero``: ``nonzero``, ``argwhere``, ``masked_select``, ``unique``, ``bincount``, one-argument
  ``where``, ``repeat_interleave`` without ``output_size``, and indexing (read or write) with a boolean mask;
* ``linalg check``: ``torch.linalg.solve`` / ``inv`` / ``cholesky`` / ``eigh`` / ``lu_factor``, ``inverse``:
  their error check reads an ``info`` tensor (the ``_ex`` variants do not);
* ``host-to-device``: ``torch.tensor`` / ``as_tensor`` / ``scalar_tensor`` with a ``device`` (a blocking copy
  on CUDA; Lightning's ``self.log`` of a Python number makes one).

Each call is filed under its *call site*: the innermost frame of ``mvssl_lightning`` on the stack, or, when
there is none, the innermost frame outside torch (Lightning's own). A call is *model side* when a frame of
``mvssl_lightning/losses``, ``methods`` or ``callbacks`` is on the stack (the method's step, its losses, the
callbacks' hooks and what they call, Lightning's ``self.log`` included); the rest (the training loop, the
progress bar's metrics) is *Lightning side*. Python-level torch functions are seen as one call
(``F.cross_entropy``), not what they call inside; ``--device cuda`` adds CUDA's own sync report
(``torch.cuda.set_sync_debug_mode("warn")``, every synchronising CUDA call, filed the same way).

The run: each method of :data:`mvssl_lightning.methods.METHODS` with a tiny backbone (a conv + BatchNorm net;
AMDIM its own encoder at 32 px), its view counts (multi-crop where its recipe has locals), the ``mvssl``
command's default callbacks (:data:`mvssl_lightning.cli.TRAINER_DEFAULTS`: ``RunCheckpoint``,
``LearningRateMonitor``, ``PreemptionCheckpoint``, ``TrainingHealth``; and ``RunSummary``) plus the
configs' ``OnlineLinearProbe`` and ``OnlineKNN``, TensorBoard logging every ``--log-every`` steps (50, the
default), no progress bar, no validation. After ``--warmup`` steps, ``--steps`` steps are counted (a
multiple of ``--log-every``: the logging steps' syncs are averaged over their interval). The counts are a
property of the code, not of the machine: the CPU census gives the same numbers on any CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import warnings
from collections import Counter
from pathlib import Path
from types import FrameType
from typing import Any, Callable, Iterator, Optional, Sequence

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

import mvssl_lightning
from mvssl_lightning.callbacks import (
    OnlineKNN,
    OnlineLinearProbe,
    PreemptionCheckpoint,
    RunCheckpoint,
    RunSummary,
    TrainingHealth,
)
from mvssl_lightning.methods import METHODS

RESULTS = Path(__file__).resolve().parent / "results" / "sync_census"
PACKAGE = Path(mvssl_lightning.__file__).resolve().parent
MODEL_SIDE = tuple(str(PACKAGE / part) for part in ("losses", "methods", "callbacks"))
TORCH = str(Path(torch.__file__).resolve().parent)
OPTIM = str(Path(torch.__file__).resolve().parent / "optim")
HERE = str(Path(__file__).resolve())
SKIP = ("contextlib.py", "warnings.py")  # frames of the census's own machinery

#: the target of issue 24: host syncs per steady-state step, model side
TARGET = 2.0

# ------------------------------------------------------------------------------------------ what syncs
_ITEM: set[Any] = {
    Tensor.item, Tensor.tolist, Tensor.numpy, Tensor.cpu, Tensor.__bool__, Tensor.__int__, Tensor.__float__,
    Tensor.__index__, torch.equal, torch.allclose, torch.is_nonzero,
}
_NONZERO: set[Any] = {
    torch.nonzero, Tensor.nonzero, torch.argwhere, Tensor.argwhere, torch.masked_select, Tensor.masked_select,
    torch.unique, Tensor.unique, torch.unique_consecutive, Tensor.unique_consecutive, torch.bincount,
    Tensor.bincount,
}
_LINALG: set[Any] = {
    torch.linalg.solve, torch.linalg.inv, torch.linalg.cholesky, torch.linalg.eigh, torch.linalg.eigvalsh,
    torch.linalg.lu_factor, torch.inverse, Tensor.inverse, torch.cholesky, Tensor.cholesky,
}
_NEW: set[Any] = {torch.tensor, torch.as_tensor, torch.scalar_tensor}


def _has_mask(index: Any) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, Tensor) and i.dtype in (torch.bool, torch.uint8) for i in items)


def sync_kind(func: Callable, args: Sequence[Any], kwargs: dict[str, Any]) -> Optional[str]:
    """The kind of host sync ``func(*args, **kwargs)`` makes on CUDA (module docstring), or None."""
    if func in _ITEM:
        return "item"
    if func in _NONZERO:
        return "nonzero"
    if func in (Tensor.__getitem__, Tensor.__setitem__):
        return "boolean mask" if len(args) > 1 and _has_mask(args[1]) else None
    if func in (torch.where, Tensor.where):
        return "nonzero" if len(args) + len(kwargs) == 1 else None
    if func in (torch.repeat_interleave, Tensor.repeat_interleave):
        return "nonzero" if kwargs.get("output_size") is None and len(args) < 4 else None
    if func in _LINALG:
        return "linalg check"
    if func in _NEW:
        return "host-to-device" if kwargs.get("device") is not None else None
    return None


def call_site(frame: Optional[FrameType]) -> tuple[str, bool]:
    """``("path:line function", model side)`` of the stack above ``frame`` (module docstring)."""
    innermost_ours: Optional[str] = None
    innermost_other: Optional[str] = None
    model_side = False
    while frame is not None:
        path = frame.f_code.co_filename
        where = f"{path}:{frame.f_lineno} {frame.f_code.co_name}"
        if path.startswith(str(PACKAGE)):
            innermost_ours = innermost_ours or where.replace(str(PACKAGE.parent) + "/", "")
            model_side = model_side or path.startswith(MODEL_SIDE)
        elif innermost_other is None and not path.startswith(TORCH) and path != HERE and not path.endswith(SKIP):
            innermost_other = where.split("site-packages/")[-1]
        frame = frame.f_back
    return innermost_ours or innermost_other or "?", model_side


class SyncCensus(TorchFunctionMode):
    """Counts the host-sync calls (:func:`sync_kind`) made while ``active``, by ``(side, kind, call site)``."""

    def __init__(self) -> None:
        super().__init__()
        self.active = False
        self.counts: Counter[tuple[str, str, str]] = Counter()

    def __torch_function__(self, func: Callable, types: Any, args: Sequence[Any] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if self.active:
            kind = sync_kind(func, args, kwargs)
            # optimisers read their step counters, CPU tensors unless ``capturable`` (no device wait)
            if kind is not None and not sys._getframe(1).f_code.co_filename.startswith(OPTIM):
                site, model_side = call_site(sys._getframe(1))
                self.counts[("model" if model_side else "lightning", kind, site)] += 1
        return func(*args, **kwargs)

    def record(self, kind: str, frame: Optional[FrameType]) -> None:
        site, model_side = call_site(frame)
        self.counts[("model" if model_side else "lightning", kind, site)] += 1


@contextlib.contextmanager
def cuda_sync_reports(census: SyncCensus) -> Iterator[None]:
    """File every warning of ``torch.cuda.set_sync_debug_mode("warn")`` made while the census is active."""
    previous = torch.cuda.get_sync_debug_mode()
    original = warnings.showwarning

    def show(message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
        if "synchronizing" in str(message):
            if census.active:
                census.record("cuda", sys._getframe(1))
            return
        original(message, category, filename, lineno, file, line)

    with warnings.catch_warnings():
        warnings.filterwarnings("always", message=".*synchronizing")  # every one, not once per place
        warnings.showwarning = show
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield
        finally:
            torch.cuda.set_sync_debug_mode(previous)
            warnings.showwarning = original


# ------------------------------------------------------------------------------------------ the run
#: per registry name: (construction kwargs of its tiny version, (globals, locals), global size, local size)
SETTINGS: dict[str, tuple[dict[str, Any], tuple[int, int], int, int]] = {
    "mveb": (dict(proj_hidden_dim=16, proj_output_dim=8), (2, 6), 16, 8),
    "mec": (dict(proj_hidden_dim=16, proj_output_dim=8, pred_hidden_dim=8), (2, 0), 16, 8),
    "amdim": (dict(backbone="amdim", cifar_stem=True, backbone_kwargs=dict(ndf=4, n_rkhs=16, depth=1)), (2, 0), 32, 0),
    "infomin": (dict(proj_hidden_dim=16, proj_output_dim=8, queue_size=64), (2, 9), 16, 8),
    "er_simclr": (dict(proj_hidden_dim=16, proj_output_dim=8), (2, 0), 16, 8),
    "er_byol": (dict(proj_hidden_dim=16, proj_output_dim=8, pred_hidden_dim=16), (2, 0), 16, 8),
    "er_dino": (dict(head_hidden_dim=16, bottleneck_dim=8, output_dim=32), (2, 6), 16, 8),
    "er_swav": (dict(proj_hidden_dim=16, proj_output_dim=8, n_prototypes=16), (2, 6), 16, 8),
}


def tiny_backbone() -> nn.Module:
    """Conv + BatchNorm + pooling, 16 features: the backbone's cost out of the way, BatchNorm kept."""
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
    )


def build_method(name: str, **kwargs: Any) -> L.LightningModule:
    """The tiny version of method ``name`` (:data:`SETTINGS`), SGD without lr scaling, seeded."""
    settings = SETTINGS[name][0]
    torch.manual_seed(0)
    args = {"backbone": tiny_backbone(), "optimizer": "sgd", "lr": 0.05, "lr_scaling": "none", "warmup_steps": 2}
    return METHODS[name](**{**args, **settings, **kwargs})


class ViewsDataset(torch.utils.data.Dataset):
    """``n`` samples of random views (``globals`` of ``size`` px, ``locals`` of ``local_size`` px), labels
    ``i % 10``."""

    def __init__(self, n: int, counts: tuple[int, int], size: int, local_size: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.views = [torch.randn(n, 3, size, size, generator=g) for _ in range(counts[0])]
        self.views += [torch.randn(n, 3, local_size, local_size, generator=g) for _ in range(counts[1])]

    def __len__(self) -> int:
        return self.views[0].shape[0]

    def __getitem__(self, i: int) -> tuple[list[Tensor], int]:
        return [v[i] for v in self.views], i % 10


def default_callbacks(tmp: str) -> list[L.Callback]:
    """The ``mvssl`` command's default callbacks (``cli.TRAINER_DEFAULTS`` and ``RunSummary``) and the
    configs' probe and kNN."""
    return [
        RunCheckpoint(dirpath=tmp, save_last="link"),
        LearningRateMonitor(logging_interval="step"),
        PreemptionCheckpoint(),
        TrainingHealth(),
        OnlineLinearProbe(num_classes=10),
        OnlineKNN(k=20),
        RunSummary(plot=False, print_summary=False),
    ]


class _Window(L.Callback):
    """Turns the census on at the start of optimiser step ``start`` and off at the start of step ``stop``."""

    def __init__(self, census: SyncCensus, start: int, stop: int) -> None:
        self.census, self.start, self.stop = census, start, stop

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, idx: int) -> None:
        self.census.active = self.start <= trainer.global_step < self.stop


def census_of(
    name: str,
    steps: int = 100,
    warmup: int = 20,
    log_every: int = 50,
    batch_size: int = 16,
    device: str = "cpu",
    callbacks: Optional[Callable[[str], list[L.Callback]]] = None,
    **method_kwargs: Any,
) -> dict[str, Any]:
    """Host syncs of ``steps`` steady-state steps of method ``name`` (module docstring): per step, model
    side and Lightning side, and the counts by ``(side, kind, call site)``."""
    if steps % log_every:
        raise ValueError(f"--steps ({steps}) must be a multiple of --log-every ({log_every})")
    _, counts, size, local_size = SETTINGS[name]
    model = build_method(name, **method_kwargs)
    data = ViewsDataset(batch_size * (warmup + steps + 1), counts, size, local_size)
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False, drop_last=True)
    census = SyncCensus()
    with tempfile.TemporaryDirectory() as tmp:
        trainer = L.Trainer(
            accelerator=device, devices=1, max_steps=warmup + steps + 1, log_every_n_steps=log_every,
            logger=TensorBoardLogger(tmp, name="census", default_hp_metric=False),
            callbacks=[_Window(census, warmup, warmup + steps), *(callbacks or default_callbacks)(tmp)],
            enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
        )
        reports = cuda_sync_reports(census) if device == "cuda" else contextlib.nullcontext()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            with census, reports:
                trainer.fit(model, train_dataloaders=loader)
    calls, cuda = Counter[str](), Counter[str]()  # the torch calls; CUDA's own reports
    for (side, kind, _), n in census.counts.items():
        (cuda if kind == "cuda" else calls)[side] += n
    sites = sorted(census.counts.items(), key=lambda item: (item[0][0] != "model", -item[1], item[0]))
    row: dict[str, Any] = {
        "model_side_per_step": calls["model"] / steps,
        "lightning_side_per_step": calls["lightning"] / steps,
    }
    if device == "cuda":
        row["cuda_model_side_per_step"] = cuda["model"] / steps
        row["cuda_lightning_side_per_step"] = cuda["lightning"] / steps
    row["sites"] = [{"side": s, "kind": k, "site": site, "per_step": n / steps} for (s, k, site), n in sites]
    return row


def markdown(results: dict[str, Any], command: str) -> str:
    """The results as a table per method and the model-side call sites."""
    lines = [f"# Host-sync census ({results['device']})", "", f"`{command}`", "",
             f"torch {results['torch']}, lightning {results['lightning']}; {results['steps']} steady-state steps "
             f"after {results['warmup']}, logging every {results['log_every']}; target: at most {TARGET:g} "
             "model-side syncs per step.", "",
             "| method | model side / step | Lightning side / step |", "| --- | --- | --- |"]
    for name, row in results["methods"].items():
        extra = f" (CUDA: {row['cuda_model_side_per_step']:.2f})" if "cuda_model_side_per_step" in row else ""
        lines.append(f"| {name} | {row['model_side_per_step']:.2f}{extra} | {row['lightning_side_per_step']:.2f} |")
    lines += ["", "Model-side call sites (syncs per step):", ""]
    for name, row in results["methods"].items():
        lines.append(f"- **{name}**: " + ("; ".join(
            f"`{s['site']}` {s['kind']} {s['per_step']:.2f}" for s in row["sites"] if s["side"] == "model") or "none"))
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated registry names")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--label", default="", help="suffix of the result files (e.g. before, after)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    command = "python -m benchmarks.sync_census " + " ".join(sys.argv[1:] if argv is None else argv)
    results: dict[str, Any] = {
        "device": args.device if args.device == "cpu" else torch.cuda.get_device_name(),
        "torch": torch.__version__, "lightning": L.__version__, "steps": args.steps, "warmup": args.warmup,
        "log_every": args.log_every, "command": command.strip(), "methods": {},
    }
    stem = f"census-{args.device}" + (f"-{args.label}" if args.label else "")
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.methods.split(","):
        row = census_of(name, args.steps, args.warmup, args.log_every, args.batch_size, args.device)
        results["methods"][name] = row
        print(f"{name}: {row['model_side_per_step']:.2f} model-side, {row['lightning_side_per_step']:.2f} "
              f"Lightning-side syncs per step", flush=True)
        (args.out / f"{stem}.json").write_text(json.dumps(results, indent=2) + "\n")
        (args.out / f"{stem}.md").write_text(markdown(results, command.strip()))


if __name__ == "__main__":
    main()
