"""PNG bar chart of a learning-quality results dict, drawn with matplotlib (Agg, no pyplot state).

One group of three bars per model: kNN top-1 (dark), online probe (medium), offline probe (light); methods
in blue, lightly-built baselines in orange; a dashed red line at chance; the kNN value above its bar;
collapsed or failed models are marked in red. Groups keep a fixed width (the figure grows with the number
of models, 720 px at least).

matplotlib is imported inside :func:`write_chart`, so importing this module (or the benchmark) stays light.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any

METRICS = (("knn_top1", "kNN top-1"), ("online_probe_top1", "online probe"), ("offline_probe_top1", "offline probe"))
COLOURS = {
    "method": ("#1f4e96", "#5b8fd6", "#a9c6ee"),
    "baseline": ("#b4501a", "#e8904f", "#f5c9a3"),
}
CHANCE = "#d62728"
GRID = "#e3e3e3"
TEXT = "#222222"
DPI = 100
#: layout in pixels: width of one model's group, margins around the plot, figure height
GROUP_PX, LEFT_PX, RIGHT_PX, TOP_PX, BOTTOM_PX, HEIGHT_PX, MIN_WIDTH_PX = 94, 64, 24, 100, 70, 480, 720
BAR_W = 0.22  # bar width as a fraction of a group


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def write_chart(results: dict[str, Any], path: Path) -> Path:
    """Draw the chart of ``results`` (see ``python -m benchmarks.quality``) into ``path`` (PNG)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.legend_handler import HandlerTuple
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    rows = results["rows"]
    width_px = max(LEFT_PX + max(len(rows), 1) * GROUP_PX + RIGHT_PX, MIN_WIDTH_PX)
    slots = (width_px - LEFT_PX - RIGHT_PX) / GROUP_PX  # groups that fit: the x range, so groups keep their width
    fig = Figure(figsize=(width_px / DPI, HEIGHT_PX / DPI), dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((LEFT_PX / width_px, BOTTOM_PX / HEIGHT_PX, 1 - (LEFT_PX + RIGHT_PX) / width_px,
                       1 - (TOP_PX + BOTTOM_PX) / HEIGHT_PX))

    # bars, kNN values, flags
    for g, row in enumerate(rows):
        colours = COLOURS.get(row.get("kind"), COLOURS["method"])
        for i, (key, _) in enumerate(METRICS):
            value = row.get(key)
            if not _finite(value):
                continue
            x = g + (i - 1) * (BAR_W + 0.01)
            ax.bar(x, min(max(value, 0.0), 1.0), width=BAR_W, color=colours[i], linewidth=0, zorder=2)
            if i == 0:
                ax.text(x, min(max(value, 0.0), 1.0) + 0.01, f"{100 * value:.1f}", ha="center", va="bottom",
                        fontsize=7.5, color=TEXT, zorder=3)
        flag = "failed" if "error" in row else ("collapsed" if row.get("collapsed") else "")
        if flag:
            ax.text(g - 1.5 * BAR_W, 0.985, flag, ha="left", va="top", fontsize=8, color=CHANCE, zorder=3)
    ax.axhline(results["chance"], color=CHANCE, linestyle=(0, (4, 4)), linewidth=1.5, zorder=3)

    # axes, grid, labels
    ax.set_xlim(-0.5, slots - 0.5)
    ax.set_ylim(0.0, 1.0)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels(["\n".join(textwrap.wrap(r.get("label", r["name"]), 16)[:3]) for r in rows],
                       fontsize=8, color=TEXT)
    ax.tick_params(axis="x", length=0)
    ax.set_yticks([k / 10 for k in range(0, 11, 2)])
    ax.set_yticks([k / 10 for k in range(1, 10, 2)], minor=True)
    ax.set_yticklabels([f"{k * 10}%" for k in range(0, 11, 2)], fontsize=8, color=TEXT)
    ax.tick_params(axis="y", which="both", length=0)
    ax.grid(axis="y", which="both", color=GRID, linewidth=0.8, zorder=0)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)

    # title, legend
    title = (f"Top-1 on {results['dataset']} ({results['image_size']} px): {results['epochs']} epoch(s), "
             f"batch {results['batch_size']}, {results['device']}")
    if results.get("label"):
        title += f" [{results['label']}]"
    fig.text(LEFT_PX / width_px, 1 - 12 / HEIGHT_PX, title, ha="left", va="top", fontsize=11, color=TEXT)
    handles: list[Any] = [(Patch(color=COLOURS["method"][i]), Patch(color=COLOURS["baseline"][i]))
                          for i in range(len(METRICS))]
    handles.append(Line2D([], [], color=CHANCE, linestyle=(0, (4, 4)), linewidth=1.5))
    labels = [name for _, name in METRICS] + [f"chance ({100 * results['chance']:.0f} %)"]
    ax.legend(handles, labels, handler_map={tuple: HandlerTuple(ndivide=None, pad=0.2)}, loc="lower left",
              bbox_to_anchor=(0.0, 1.02), ncol=len(labels), frameon=False, fontsize=9, handlelength=2.2,
              columnspacing=1.5, borderaxespad=0.0, labelcolor=TEXT,
              title="blue: methods, orange: lightly baselines", title_fontsize=9, alignment="left")

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=DPI, metadata={"Software": None})
    return path
