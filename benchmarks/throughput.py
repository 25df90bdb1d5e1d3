"""Training-step throughput of every method against the backbone bound and lightly-built peers.

    python -m benchmarks.throughput                       # GPU: R50/224/256 and R18-CIFAR/32/512, eager + compiled
    python -m benchmarks.throughput --preset cpu-small    # a CPU smoke configuration
    python -m benchmarks.throughput --preset gpu-r50 --compile compiled --methods mveb,mec --peers lightly_byol

Every candidate is a LightningModule trained by the same ``lightning.Trainer`` on the same synthetic,
device-resident 2-view batches (so the data pipeline is out of the picture), with SGD for everyone.
After ``--warmup`` steps, ``--steps`` steps are timed (synchronised; ``benchmarks.timing``) and the peak
memory recorded. Ratios are taken within one run: each method against the bare backbone (forward +
backward + optimiser step on the same views) and against its closest lightly-built peer
(``benchmarks.lightly_models``: BYOL for teacher methods, SimCLR otherwise).  With ``--multicrop`` MVEB
is also timed on its multi-crop views (2 globals + 6 locals of 96 px at 224 px, of half the side otherwise)
against the bare backbone on the same 8 views (row ``mveb`` with ``views`` 8; no lightly peer: it has 2
views). The methods are those of the registry ``mvssl_lightning.methods.METHODS``. AMDIM runs its own
encoder, which takes 32 px or 128 px inputs: it is timed on two views of the side nearest the setting's
(32 px up to 64 px, else 128 px), and its row has no ``vs_backbone`` and no peer (no ResNet bound, no
lightly AMDIM).

Presets: ``gpu`` (the three GPU settings: ResNet-50 / 224, ResNet-18-CIFAR / 32 and ViT-S/16 / 224),
``gpu-r50``, ``gpu-cifar`` and ``gpu-vit`` (one each), ``cpu-small``, ``cpu-vit`` (ViT-S/16's width and depth
on 32 px images) and ``cpu-tiny`` (ResNet-18 at 16 px, batch 4: the plumbing check of
``benchmarks.gpu_check --cpu-smoke``).
``--methods`` and ``--peers`` pick the models (the bare backbone is always timed: every ratio needs it).
Writes ``throughput-<device>.json`` and ``.md`` to ``--out`` (default ``benchmarks/results/``), rewritten
after every model, so a run stopped half-way keeps what it measured.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import json
import platform
import re
import sys
from pathlib import Path
from typing import Optional, Sequence

import lightning as L
import torch

from benchmarks.lightly_models import BareBackbone, LightlyBYOL, LightlySimCLR
from benchmarks.timing import TrainingTimer, peak_memory_gib
from mvssl_lightning.methods import METHODS as REGISTRY

RESULTS = Path(__file__).resolve().parent / "results"

_SGD = dict(optimizer="sgd", lr=0.1, lr_scaling="none")
#: per registry name: (has an EMA teacher, construction kwargs of its 2-view timing); its lightly peer is
#: BYOL with a teacher, SimCLR without. A method added to ``METHODS`` without an entry stops the benchmark
#: at import (and fails tests/test_registry.py), so none is silently left out.
SETTINGS: dict[str, tuple[bool, dict]] = {
    "mveb": (True, {}),
    "mec": (True, {}),
    "amdim": (False, {}),
    "infomin": (True, dict(jigsaw=False)),  # two views: no jigsaw patches
    "er_simclr": (False, {}),
    "er_byol": (True, {}),
    "er_dino": (True, {}),
    "er_swav": (False, {}),
}
#: methods that run their own encoder instead of the ResNet: name -> {input side: its cifar_stem}
OWN_ENCODER = {"amdim": {32: True, 128: False}}


def _build_method(cls, extra: dict, **kw) -> L.LightningModule:
    return cls(**_SGD, **kw, **extra)


def _method_table() -> dict:
    """Method name -> (factory kwargs -> module, closest lightly peer or None, has an EMA teacher)."""
    missing = [name for name in REGISTRY if name not in SETTINGS]
    if missing:
        raise RuntimeError(f"benchmarks/throughput.py: no SETTINGS entry for {', '.join(missing)}")
    table = {}
    for name, cls in REGISTRY.items():
        teacher, extra = SETTINGS[name]
        peer = None if name in OWN_ENCODER else ("lightly_byol" if teacher else "lightly_simclr")
        table[name] = (functools.partial(_build_method, cls, extra), peer, teacher)
    return table


METHODS = _method_table()
#: the methods whose multi-crop recipe ``--multicrop`` times: name -> (globals, locals)
MULTICROP = {"mveb": (2, 6)}
# the peers: SGD lr 0.1 (momentum 0.9, weight decay 1e-6, no schedule) as the methods above; SimCLR with
# lightly's default head (hidden = feature dimension), BYOL with lightly's example head 4096-256 and an
# EMA of 0.99 -> 1 on a cosine
_PEER_SGD = dict(lr=0.1, lr_reference_batch=None, weight_decay=1e-6, cosine=False)
PEERS = {
    "bare_backbone": lambda **kw: BareBackbone(**_PEER_SGD, **kw),
    "lightly_simclr": lambda **kw: LightlySimCLR(**_PEER_SGD, **kw),
    "lightly_byol": lambda **kw: LightlyBYOL(proj_hidden_dim=4096, pred_hidden_dim=4096, final_ema_momentum=1.0,
                                             **_PEER_SGD, **kw),
}
#: ViT-S/16 as DINO trains it; dynamic image size: MVEB's 96 px local crops interpolate the position embedding
VIT_S16 = ("timm:vit_small_patch16_224", False, 224, 256, {"dynamic_img_size": True})
#: (backbone, cifar_stem, image side, batch size, backbone_kwargs) of each setting
PRESETS: dict[str, list[tuple[str, bool, int, int, dict]]] = {
    "gpu": [("resnet50", False, 224, 256, {}), ("resnet18", True, 32, 512, {}), VIT_S16],
    "gpu-r50": [("resnet50", False, 224, 256, {})],
    "gpu-cifar": [("resnet18", True, 32, 512, {})],
    "gpu-vit": [VIT_S16],
    "cpu-small": [("resnet18", False, 32, 32, {})],
    "cpu-tiny": [("resnet18", False, 16, 4, {})],
    # ViT-S/16's width and depth on 32 px images (2 x 2 patches; 16 px locals: 1 patch): the CPU smoke rows
    "cpu-vit": [("timm:vit_small_patch16_224", False, 32, 16, {"img_size": 32, "dynamic_img_size": True})],
}


def local_size(size: int) -> int:
    """Side of the multi-crop local views: 96 px at 224 px (MVEB's recipe), half the side otherwise."""
    return 96 if size == 224 else max(size // 2, 8)


class _SameBatch(torch.utils.data.IterableDataset):
    def __init__(self, batch, length: int) -> None:
        self.batch, self.length = batch, length

    def __iter__(self):
        for _ in range(self.length):
            yield self.batch


def measure(module: L.LightningModule, batch, device: str, precision: str, warmup: int, steps: int) -> dict:
    timer = TrainingTimer(warmup_steps=warmup)
    loader = torch.utils.data.DataLoader(_SameBatch(batch, warmup + steps), batch_size=None)
    trainer = L.Trainer(
        accelerator=device, devices=1, precision=precision, max_steps=warmup + steps, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0, num_sanity_val_steps=0, callbacks=[timer],
    )
    trainer.fit(module, loader)
    result = {"images_per_s": timer.images_per_s, "steps": timer.timed_steps}
    if device == "cuda":
        result["peak_memory_gib"] = peak_memory_gib(torch.device(device))[0]
    return result


def own_encoder_side(name: str, size: int) -> int:
    """The input side of an :data:`OWN_ENCODER` method nearest ``size`` (AMDIM: 32 px up to 64 px, else 128)."""
    return min(OWN_ENCODER[name], key=lambda side: (abs(side - size), side))


def _views(n_global: int, n_local: int, size: int, batch_size: int, device: str) -> list[torch.Tensor]:
    return [torch.randn(batch_size, 3, size, size, device=device) for _ in range(n_global)] + [
        torch.randn(batch_size, 3, local_size(size), local_size(size), device=device) for _ in range(n_local)]


def run(args: argparse.Namespace, on_row=None) -> dict:
    """Time every requested model; ``on_row(results)`` is called after each one (results so far)."""
    device = "cuda" if torch.cuda.is_available() and args.preset.startswith("gpu") else "cpu"
    precision = "bf16-mixed" if device == "cuda" else "32-true"
    device_name = torch.cuda.get_device_name() if device == "cuda" else f"cpu-{platform.machine()}"
    names = [m for m in args.methods.split(",") if m]
    peers = ["bare_backbone", *[p for p in args.peers.split(",") if p and p != "bare_backbone"]]
    unknown = [n for n in names if n not in METHODS] + [p for p in peers if p not in PEERS]
    if unknown:
        raise SystemExit(f"unknown model(s) {', '.join(unknown)}; methods: {', '.join(METHODS)}; "
                         f"peers: {', '.join(PEERS)}")
    command = " ".join(["python", "-m", "benchmarks.throughput", *args.argv])
    results = {"device": device_name, "precision": precision, "torch": torch.__version__, "command": command,
               "rows": []}
    for backbone, cifar_stem, size, batch_size, backbone_kwargs in PRESETS[args.preset]:
        batch_size = args.batch_size or batch_size
        targets = torch.zeros(batch_size, dtype=torch.long, device=device)
        two_views = (_views(2, 0, size, batch_size, device), targets)
        for compiled in ([False, True] if args.compile == "both" else [args.compile == "compiled"]):
            setting = dict(backbone=backbone, cifar_stem=cifar_stem, size=size, batch_size=batch_size,
                           compiled=compiled)
            kw = dict(backbone=backbone, cifar_stem=cifar_stem, channels_last=device == "cuda", compile=compiled,
                      backbone_kwargs=backbone_kwargs or None)
            resnet = backbone.startswith("resnet")  # own-encoder methods are timed in the ResNet settings only
            jobs = [(name, 2, two_views) if name not in OWN_ENCODER  # else two views of the side it takes
                    else (name, 2, (_views(2, 0, own_encoder_side(name, size), batch_size, device), targets))
                    for name in [*peers, *names] if resnet or name not in OWN_ENCODER]
            if args.multicrop:
                for name, (n_global, n_local) in MULTICROP.items():
                    if name in names:
                        batch = (_views(n_global, n_local, size, batch_size, device), targets)
                        jobs += [("bare_backbone", n_global + n_local, batch), (name, n_global + n_local, batch)]
            measured: dict[tuple[str, int], dict] = {}
            for name, n_views, batch in jobs:
                torch.manual_seed(0)
                if name in OWN_ENCODER:
                    side = batch[0][0].shape[-1]
                    encoder = inspect.signature(REGISTRY[name]).parameters["backbone"].default  # its own
                    own = dict(backbone=encoder, cifar_stem=OWN_ENCODER[name][side], size=side)
                    module = METHODS[name][0](**{**kw, "backbone": encoder, "cifar_stem": own["cifar_stem"],
                                                 "backbone_kwargs": None})
                else:
                    own = None
                    module = PEERS[name](**kw) if name in PEERS else METHODS[name][0](**kw)
                m = measure(module, batch, device, precision, args.warmup, args.steps)
                measured[(name, n_views)] = m
                del module
                if device == "cuda":
                    torch.cuda.empty_cache()
                print(f"{setting} {name} ({n_views} views): {m}", flush=True)
                row = {**setting, "name": name, "views": n_views, **m}
                if own is None:
                    row["vs_backbone"] = m["images_per_s"] / measured[("bare_backbone", n_views)]["images_per_s"]
                else:  # its own encoder and views: no ResNet bound
                    row.update(own)
                if name in METHODS:
                    peer = METHODS[name][1]
                    if peer is not None:
                        row["peer"] = peer
                    row["has_teacher"] = METHODS[name][2]
                    if n_views == 2 and (peer, 2) in measured:
                        row["vs_peer"] = m["images_per_s"] / measured[(peer, 2)]["images_per_s"]
                results["rows"].append(row)
                if on_row is not None:
                    on_row(results)
    return results


def markdown(results: dict) -> str:
    lines = [f"Throughput on {results['device']} ({results['precision']}), `{results['command']}`", "",
             "| backbone | px | batch | compiled | model | views | images/s | peak GiB | x backbone | x peer (peer) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results["rows"]:
        peer = f"{r['vs_peer']:.2f} ({r['peer']})" if "vs_peer" in r else ""
        mem = f"{r['peak_memory_gib']:.1f}" if "peak_memory_gib" in r else "n/a"
        vs_backbone = f"{r['vs_backbone']:.2f}" if "vs_backbone" in r else "n/a"
        lines.append(f"| {r['backbone']} | {r['size']} | {r['batch_size']} | {r['compiled']} | {r['name']} | "
                     f"{r.get('views', 2)} | {r['images_per_s']:.0f} | {mem} | {vs_backbone} | {peer} |")
    return "\n".join(lines) + "\n"


def write(results: dict, out: Path) -> Path:
    """``throughput-<device>.json`` and ``.md`` in ``out``; returns the JSON's path."""
    out.mkdir(parents=True, exist_ok=True)
    stem = "throughput-" + re.sub(r"\s+", "-", results["device"].lower())
    (out / f"{stem}.json").write_text(json.dumps(results, indent=2))
    (out / f"{stem}.md").write_text(markdown(results))
    return out / f"{stem}.json"


def build_parser() -> argparse.ArgumentParser:
    """The command line (also used by ``benchmarks.gpu_check``'s tests to check its command lines)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.throughput", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    default_preset = "gpu" if torch.cuda.is_available() else "cpu-small"
    parser.add_argument("--preset", choices=sorted(PRESETS), default=default_preset)
    parser.add_argument("--methods", default=",".join(METHODS), help=f"from {', '.join(METHODS)}")
    parser.add_argument("--peers", default=",".join(PEERS),
                        help=f"from {', '.join(PEERS)} (bare_backbone is always timed)")
    parser.add_argument("--multicrop", action="store_true",
                        help="also time MVEB on its multi-crop views against the bare backbone on the same views")
    parser.add_argument("--compile", choices=["eager", "compiled", "both"], default="both")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    results = run(args, on_row=lambda partial: write(partial, args.out))
    write(results, args.out)
    print(markdown(results))
    return results


if __name__ == "__main__":
    main()
