"""Peak memory of the kNN evaluation at epoch end: the earlier path against the chunked one.

    python -m benchmarks.knn_memory                       # CPU: N=200,000 x D=512 bank, 10,000 queries
    python -m benchmarks.knn_memory --bank 1281167 --dim 2048 --queries 50000   # ImageNet scale (GPU)

Each case runs in a fresh process. The bank arrives as ``OnlineKNN`` collects it, a list of
L2-normalised ``(batch, D)`` pieces with their labels; what is measured is the memory taken *on top of*
that list while the epoch-end step turns it into the class rankings of the queries:

* ``earlier``: the code before issue 24 -- concatenate the pieces, drop unlabelled rows (a copy),
  normalise in float32 (a copy), transpose contiguously (a copy), then lightly's ``knn_predict`` per
  query chunk;
* ``chunked-float32``: :func:`mvssl_lightning.core.knn.knn_classify` on the pieces as they are (no
  concatenated copy; bank chunks of at most ``CHUNK_ELEMENTS`` elements, running top-k);
* ``chunked-bfloat16``: the same with the bank held in bfloat16 (``OnlineKNN(bank_dtype="bfloat16")``):
  the list itself is half as large (reported as ``bank_gib``).

Peak: on CUDA ``torch.cuda.max_memory_allocated`` minus what was allocated before; on the CPU the peak
resident set size (``VmHWM``, reset through ``/proc/self/clear_refs``) minus the resident size before, with
glibc's mmap threshold fixed at 128 KiB (``MALLOC_MMAP_THRESHOLD_``) so that freed tensors leave the
resident set. Each case first runs once on a tiny input (code pages, thread pools).
The rankings of the three cases are compared (``same_top1_as_earlier``). Results: ``--out`` (default
``benchmarks/results/``) ``knn-memory-<device>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CASES = ("earlier", "chunked-float32", "chunked-bfloat16")


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _hwm_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def run_case(case: str, bank: int, dim: int, queries: int, classes: int, k: int, batch: int,
             device: str, chunk_elements: int = 2**25) -> dict[str, Any]:
    """One case in this process (call it in a fresh one): ``peak_extra_gib`` over the collected bank."""
    import ctypes
    import gc

    import torch
    import torch.nn.functional as F

    from mvssl_lightning.core.knn import knn_classify

    torch.set_num_threads(1)
    dev = torch.device(device)
    g = torch.Generator(device=dev).manual_seed(0)
    dtype = torch.bfloat16 if case == "chunked-bfloat16" else torch.float32
    pieces, labels = [], []
    for start in range(0, bank, batch):
        n = min(batch, bank - start)
        pieces.append(F.normalize(torch.randn(n, dim, generator=g, device=dev), dim=1).to(dtype))
        labels.append(torch.randint(0, classes, (n,), generator=g, device=dev))
    q = F.normalize(torch.randn(queries, dim, generator=g, device=dev), dim=1)
    bank_bytes = sum(p.numel() * p.element_size() for p in pieces)

    def step(pieces: list, labels: list, q: Any) -> Any:
        if case == "earlier":
            from lightly.utils.benchmarking import knn_predict

            b, y = torch.cat(pieces), torch.cat(labels)
            keep = y >= 0
            b, y = b[keep], y[keep]
            b_t = F.normalize(b.float(), dim=1).t().contiguous()
            kk = min(k, b_t.shape[1])
            chunk = max(1, min(2**25 // (kk * classes), 2**25 // b_t.shape[1]))
            return torch.cat([knn_predict(c, b_t, y, num_classes=classes, knn_k=kk, knn_t=0.1)
                              for c in F.normalize(q, dim=1).split(chunk)])
        return knn_classify(q, pieces, torch.cat(labels), classes, k, 0.1, max_chunk_elements=chunk_elements)

    step([p[:k] for p in pieces[:2]], [y[:k] for y in labels[:2]], q[:8])  # code paths and thread pools warm
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        base = torch.cuda.memory_allocated(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    else:
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass
        Path("/proc/self/clear_refs").write_text("5")
        base = _rss_bytes()
    start = time.perf_counter()
    ranking = step(pieces, labels, q)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        peak = torch.cuda.max_memory_allocated(dev) - base
    else:
        peak = _hwm_bytes() - base
    seconds = time.perf_counter() - start
    return {"case": case, "bank_gib": bank_bytes / 2**30, "peak_extra_gib": peak / 2**30,
            "peak_extra_x_float32_bank": peak / (bank * dim * 4), "seconds": seconds,
            "top1": ranking[:, 0].tolist()}


def measure(cases: Sequence[str], bank: int, dim: int, queries: int, classes: int, k: int, batch: int,
            device: str, chunk_elements: int = 2**25) -> list[dict[str, Any]]:
    """Every case in a fresh ``python`` process; rows with ``same_top1_as_earlier`` (or as the first case)."""
    rows = []
    for case in cases:
        code = ("import json, sys; from benchmarks.knn_memory import run_case; "
                f"print('KNN-MEMORY ' + json.dumps(run_case({case!r}, {bank}, {dim}, {queries}, {classes}, {k}, "
                f"{batch}, {device!r}, {chunk_elements})))")
        # glibc: every block over 128 KiB its own mapping, handed back when freed (no dynamic threshold), so
        # that the peak resident size counts live tensors, not the heap's fragmentation
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
        done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env=env)
        line = next((ln for ln in done.stdout.splitlines() if ln.startswith("KNN-MEMORY ")), None)
        if line is None:
            raise RuntimeError(f"case {case} failed:\n{done.stderr[-3000:]}")
        rows.append(json.loads(line[len("KNN-MEMORY "):]))
    ref = rows[0]["top1"]
    for r in rows:
        top1 = r.pop("top1")
        r["same_top1_as_" + rows[0]["case"]] = sum(map(int.__eq__, top1, ref)) / max(len(ref), 1)
    return rows


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.knn_memory", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bank", type=int, default=200_000, help="bank rows (ImageNet: 1,281,167)")
    parser.add_argument("--dim", type=int, default=512, help="feature dimension (ResNet-50: 2048)")
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--k", type=int, default=200)
    parser.add_argument("--batch", type=int, default=512, help="rows per collected piece (the eval batch size)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--chunk-elements", type=int, default=2**25,
                        help="knn_classify's max_chunk_elements (default: its CHUNK_ELEMENTS, 2**25)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    cases = [c for c in args.cases.split(",") if c]
    rows = measure(cases, args.bank, args.dim, args.queries, args.classes, args.k, args.batch, args.device,
                   args.chunk_elements)
    device = args.device if args.device == "cpu" else "cuda"
    if device == "cuda":
        import torch

        device = torch.cuda.get_device_name()
    name = f"cpu-{platform.machine()}" if args.device == "cpu" else device
    command = " ".join(["python", "-m", "benchmarks.knn_memory", *(argv if argv is not None else sys.argv[1:])])
    record = {"benchmark": "kNN epoch-end peak memory", "device": name, "command": command,
              "bank": args.bank, "dim": args.dim, "queries": args.queries, "classes": args.classes, "k": args.k,
              "chunk_elements": args.chunk_elements, "float32_bank_gib": args.bank * args.dim * 4 / 2**30,
              "rows": rows}
    slug = "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"knn-memory-{slug}.json").write_text(json.dumps(record, indent=2) + "\n")
    lines = [f"# kNN epoch-end peak memory on {name}", "", f"`{command}`: bank {args.bank:,} x {args.dim} "
             f"({record['float32_bank_gib']:.2f} GiB in float32), {args.queries:,} queries, {args.classes} "
             f"classes, k={args.k}, chunks of {args.chunk_elements:,} elements. Peak = memory taken on top of the "
             "collected bank.", "",
             "| case | bank GiB | peak extra GiB | x float32 bank | seconds | same top-1 |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        same = next(v for key, v in r.items() if key.startswith("same_top1_as_"))
        lines.append(f"| {r['case']} | {r['bank_gib']:.3f} | {r['peak_extra_gib']:.3f} | "
                     f"{r['peak_extra_x_float32_bank']:.2f} | {r['seconds']:.1f} | {same:.4f} |")
    (args.out / f"knn-memory-{slug}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
