"""Training-step throughput of every method against the backbone bound and lightly-built peers.

    python -m benchmarks.throughput                       # GPU: R50/224/256 and R18-CIFAR/32/512, eager + compiled
    python -m benchmarks.throughput --preset cpu-small    # a CPU smoke configuration

Every candidate is a LightningModule trained by the same ``lightning.Trainer`` on the same synthetic,
device-resident 2-view batches (so the data pipeline is out of the picture), with SGD for everyone.
After ``--warmup`` steps, ``--steps`` steps are timed (synchronised; ``benchmarks.timing``) and the peak
memory recorded. Ratios are taken within one run: each method against the bare backbone (forward +
backward + optimiser step on the same views) and against its closest lightly-built peer
(``benchmarks.lightly_models``: BYOL for teacher methods, SimCLR otherwise).  Writes
``benchmarks/results/throughput-<device>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import lightning as L
import torch

import mvssl_lightning.methods as methods
from benchmarks.lightly_models import BareBackbone, LightlyBYOL, LightlySimCLR
from benchmarks.timing import TrainingTimer, peak_memory_gib

RESULTS = Path(__file__).resolve().parent / "results"

# method name -> (factory kwargs -> module, closest lightly peer, has an EMA teacher)
_SGD = dict(optimizer="sgd", lr=0.1, lr_scaling="none")
METHODS = {
    "mveb": (lambda **kw: methods.MVEB(**_SGD, **kw), "lightly_byol", True),
    "mec": (lambda **kw: methods.MEC(**_SGD, **kw), "lightly_byol", True),
    "infomin": (lambda **kw: methods.InfoMin(jigsaw=False, **_SGD, **kw), "lightly_byol", True),
    "er_simclr": (lambda **kw: methods.ERSimCLR(**_SGD, **kw), "lightly_simclr", False),
    "er_byol": (lambda **kw: methods.ERBYOL(**_SGD, **kw), "lightly_byol", True),
}
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
# AMDIM runs its own encoder at 128 px, so it has no ResNet bound to compare with here.
PRESETS = {
    "gpu": [("resnet50", False, 224, 256), ("resnet18", True, 32, 512)],
    "cpu-small": [("resnet18", False, 32, 32)],
}


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


def run(args: argparse.Namespace) -> dict:
    device = "cuda" if torch.cuda.is_available() and args.preset == "gpu" else "cpu"
    precision = "bf16-mixed" if device == "cuda" else "32-true"
    device_name = torch.cuda.get_device_name() if device == "cuda" else f"cpu-{platform.machine()}"
    names = [m for m in args.methods.split(",") if m]
    rows = []
    for backbone, cifar_stem, size, batch_size in PRESETS[args.preset]:
        batch_size = args.batch_size or batch_size
        views = [torch.randn(batch_size, 3, size, size, device=device) for _ in range(2)]
        batch = (views, torch.zeros(batch_size, dtype=torch.long, device=device))
        for compiled in ([False, True] if args.compile == "both" else [args.compile == "compiled"]):
            setting = dict(backbone=backbone, cifar_stem=cifar_stem, size=size, batch_size=batch_size,
                           compiled=compiled)
            kw = dict(backbone=backbone, cifar_stem=cifar_stem, channels_last=device == "cuda", compile=compiled)
            measured = {}
            for name in [*PEERS, *names]:
                torch.manual_seed(0)
                module = PEERS[name](**kw) if name in PEERS else METHODS[name][0](**kw)
                measured[name] = measure(module, batch, device, precision, args.warmup, args.steps)
                del module
                if device == "cuda":
                    torch.cuda.empty_cache()
                print(f"{setting} {name}: {measured[name]}", flush=True)
            bound = measured["bare_backbone"]["images_per_s"]
            for name, m in measured.items():
                row = {**setting, "name": name, **m, "vs_backbone": m["images_per_s"] / bound}
                if name in METHODS:
                    peer = METHODS[name][1]
                    row.update(peer=peer, vs_peer=m["images_per_s"] / measured[peer]["images_per_s"],
                               has_teacher=METHODS[name][2])
                rows.append(row)
    return {"device": device_name, "precision": precision, "torch": torch.__version__,
            "command": " ".join(["python", "-m", "benchmarks.throughput", *sys.argv[1:]]), "rows": rows}


def markdown(results: dict) -> str:
    lines = [f"Throughput on {results['device']} ({results['precision']}), `{results['command']}`", "",
             "| backbone | px | batch | compiled | model | images/s | peak GiB | x backbone | x peer (peer) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results["rows"]:
        peer = f"{r['vs_peer']:.2f} ({r['peer']})" if "vs_peer" in r else ""
        mem = f"{r['peak_memory_gib']:.1f}" if "peak_memory_gib" in r else "n/a"
        lines.append(f"| {r['backbone']} | {r['size']} | {r['batch_size']} | {r['compiled']} | {r['name']} | "
                     f"{r['images_per_s']:.0f} | {mem} | {r['vs_backbone']:.2f} | {peer} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.throughput", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    default_preset = "gpu" if torch.cuda.is_available() else "cpu-small"
    parser.add_argument("--preset", choices=sorted(PRESETS), default=default_preset)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--compile", choices=["eager", "compiled", "both"], default="both")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    results = run(args)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = "throughput-" + results["device"].lower().replace(" ", "-")
    (RESULTS / f"{stem}.json").write_text(json.dumps(results, indent=2))
    (RESULTS / f"{stem}.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
