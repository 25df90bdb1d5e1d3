"""What ``compile=True`` compiles, per method: Dynamo's graphs, compiled frames and graph breaks.

    python -m benchmarks.compile_census                        # every method, writes compile-cpu.{json,md}
    python -m benchmarks.compile_census --methods amdim,mveb --steps 3

Each method of :data:`mvssl_lightning.methods.METHODS` is built as in :mod:`benchmarks.sync_census` (tiny
backbone, its view counts: multi-crop where its recipe has locals) with ``compile=True``, on the CPU with
``torch.compile``'s ``eager`` backend (Dynamo traces, no code is generated: the counts are those of any
backend), and takes ``--steps`` steps (``compute_loss`` and ``backward``). Recorded from
``torch._dynamo.utils.counters``: ``unique_graphs`` and compiled ``frames`` after the first step (a frame
compiled again for a new shape or module is a recompile), ``graph_breaks``, and ``later_frames``: frames
compiled after the first step (0: no recompiles in the steady state). The counts are a property of the code
and of the torch version, not of the machine.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch._dynamo.utils import counters

from benchmarks.sync_census import RESULTS, SETTINGS, ViewsDataset, build_method
from mvssl_lightning.methods import METHODS


def compile_counts(name: str, steps: int = 3, batch_size: int = 8) -> dict[str, Any]:
    """Dynamo's counts for ``steps`` steps of the tiny method ``name`` compiled with the eager backend."""
    _, view_counts, size, local_size = SETTINGS[name]
    described = f"{view_counts[0]} x {size} px" + (f" + {view_counts[1]} x {local_size} px" if view_counts[1] else "")
    views = ViewsDataset(batch_size, view_counts, size, local_size).views
    compile_ = torch.compile
    torch.compile = functools.partial(compile_, backend="eager")
    torch._dynamo.reset()
    counters.clear()
    try:
        model = build_method(name, compile=True)
        model.configure_model()
        first: dict[str, int] = {}
        for step in range(steps):
            loss = model.compute_loss(views)[0]  # type: ignore[operator]
            loss.backward()
            if step == 0:
                first = {"unique_graphs": counters["stats"]["unique_graphs"], "frames": counters["frames"]["ok"]}
        return {
            **first,
            "graph_breaks": sum(counters["graph_break"].values()),
            "later_frames": counters["frames"]["ok"] - first["frames"],
            "views": described,
        }
    finally:
        torch.compile = compile_
        torch._dynamo.reset()


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated registry names")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    command = ("python -m benchmarks.compile_census " + " ".join(sys.argv[1:] if argv is None else argv)).strip()
    results: dict[str, Any] = {"torch": torch.__version__, "backend": "eager", "command": command, "methods": {}}
    lines = [f"# Compile census (CPU, eager backend, torch {torch.__version__})", "", f"`{command}`", "",
             "| method | views | graphs | compiled frames | graph breaks | frames compiled after step 1 |",
             "| --- | --- | --- | --- | --- | --- |"]
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.methods.split(","):
        row = compile_counts(name, args.steps)
        results["methods"][name] = row
        lines.append(f"| {name} | {row['views']} | {row['unique_graphs']} | {row['frames']} | {row['graph_breaks']} "
                     f"| {row['later_frames']} |")
        print(f"{name}: {row}", flush=True)
    (args.out / "compile-cpu.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "compile-cpu.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
