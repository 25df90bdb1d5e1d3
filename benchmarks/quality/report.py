"""The markdown table of a learning-quality results dict (``python -m benchmarks.quality``)."""

from __future__ import annotations

import math
from typing import Any, Optional


def _pct(value: Any) -> str:
    return "n/a" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{100 * value:.1f}"


def _num(value: Any, fmt: str) -> str:
    return "n/a" if value is None or (isinstance(value, float) and not math.isfinite(value)) else format(value, fmt)


def _who(row: dict[str, Any]) -> str:
    label = row.get("label", row["name"])
    return f"*{label}*" if row["kind"] == "baseline" else f"**{label}**"


def markdown(results: dict[str, Any], chart: Optional[str] = None) -> str:
    """A header naming the setting, then one table row per model (baselines in italics, failures noted).

    Accuracies are top-1 in percent on the test split; ``chart`` is an image file name to link.
    """
    r = results
    subset = f"{r['train_size']} train / {r['test_size']} test images"
    lines = [
        f"Learning quality on `{r['dataset']}` ({r['image_size']} px, {r['num_classes']} classes, {subset}): "
        f"{r['epochs']} epoch(s), batch {r['batch_size']}, {r['precision']}, {r['device']}; "
        f"torch {r['torch']}, lightning {r['lightning']}, lightly {r['lightly']}; {r['date']}, "
        f"commit `{(r.get('git_commit') or 'unknown')[:10]}`{' (uncommitted changes)' if r.get('git_dirty') else ''}.",
        "",
        f"`{r['command']}`",
        "",
        f"kNN: k = {r['knn']['k']}, T = {r['knn']['temperature']}, bank = train split, queries = test split. "
        f"Online probe: trained during pre-training. Offline probe: {r['offline_probe']['epochs']} epochs on the "
        f"frozen features. Chance: {_pct(r['chance'])} %. std x sqrt(d): spread of the L2-normalised test "
        "features (0 = collapsed). s/epoch: median training epoch (data loading, step and online probe; no "
        "validation).",
        "",
        "| model | views | kNN top-1 | online probe | offline probe | std x sqrt(d) | eff. rank | collapsed | s/epoch "
        "| peak GiB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in r["rows"]:
        if "error" in row:
            lines.append(f"| {_who(row)} | | failed: {row['error'][:120].replace('|', '/')} | | | | | | | |")
            continue
        lines.append(
            f"| {_who(row)} | {row.get('num_views', '?')} | {_pct(row['knn_top1'])} | "
            f"{_pct(row['online_probe_top1'])} | {_pct(row['offline_probe_top1'])} | "
            f"{_num(row['std_x_sqrt_d'], '.3f')} | {_num(row['effective_rank'], '.1f')} | "
            f"{'**yes**' if row['collapsed'] else 'no'} | {_num(row['train_s_per_epoch'], '.1f')} | "
            f"{_num(row['peak_memory_gib'], '.2f')} |"
        )
    lines += ["", "Methods in bold, lightly-built baselines in italics; accuracies in % (top-1, test split)."]
    if r["rows"] and r["rows"][0].get("peak_memory_measure"):
        lines[-1] += f" Peak memory: {r['rows'][0]['peak_memory_measure']}."
    if chart:
        lines += ["", f"![learning quality]({chart})"]
    return "\n".join(lines) + "\n"
