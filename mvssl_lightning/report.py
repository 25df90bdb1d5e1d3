"""One-file report of a training run, read from its TensorBoard event files.

    python -m mvssl_lightning.report RUN_DIR [--out report.png | --out report.html]
    mvssl-report runs/quickstart/version_0 --out quickstart.html

``RUN_DIR`` is a run's log directory (``runs/<name>/version_<n>``, where the ``TensorBoardLogger`` writes
``events.out.tfevents.*``) or a directory above it; when several directories under it hold event files,
the most recently written one is used (and named on stderr). The report is one PNG with:

* **loss** panels: ``train/loss`` and every other ``train/<term>`` the method logs (one panel each, their
  scales differ), except the schedules ``train/ema_momentum`` and ``train/lambda_inv``;
* one **accuracy** panel: every ``knn/top*`` and ``probe/*top*`` curve (per-step curves left out when
  the epoch curve exists);
* **diag** panels: one per statistic of ``RepresentationDiagnostics`` (``diag/<space>/<statistic>``),
  one line per space;
* **other** panels: every remaining scalar (learning rates, schedules, the probe's loss), one each;
* **picture** panels: the latest image of every image tag (``diag/pca``, ``diag/spectrum``,
  ``diag/std_hist``); when the event files hold none, the latest ``diagnostics/epoch_XXX_*.png`` files.

With ``--out *.html`` the PNG is written next to it (same name, ``.png``) and the HTML embeds it as
base64, with the list of panels and the last value of every scalar: one self-contained file to share.
The default output is ``RUN_DIR/report.png``. :func:`make_report` is the Python entry point; it returns
the panel titles it drew.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import math
import re
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

__all__ = ["Report", "RunData", "find_event_dir", "load_run", "main", "make_report"]

EVENT_GLOB = "events.out.tfevents.*"
#: ``train/`` scalars that are schedules, not loss terms.
NON_LOSS_TAGS = ("train/ema_momentum", "train/lambda_inv")
#: Scalars not drawn (Lightning's bookkeeping).
SKIPPED_TAGS = ("epoch", "hp_metric")
_DIAG = re.compile(r"^diag/([^/]+)/(.+)$")
_ACCURACY = re.compile(r"^(knn|probe)/.*top\d")
_COLUMNS = 4
#: Drawing order of the diagnostics (others follow, alphabetically).
DIAG_ORDER = ("rankme", "std_sqrt_d", "dead_fraction", "std_min", "std_mean", "alignment", "uniformity",
              "er_entropy", "mec_coding_length")


@dataclass
class RunData:
    """Scalars ``{tag: [(step, value), ...]}`` and the latest image ``{tag: (step, png bytes)}`` of a run."""

    event_dir: Path
    scalars: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    images: dict[str, tuple[int, bytes]] = field(default_factory=dict)


@dataclass
class Report:
    """What :func:`make_report` wrote: the PNG, the HTML (or None), and the panel titles in drawing order."""

    png: Path
    html: Optional[Path]
    panels: list[str]
    event_dir: Path


def find_event_dir(run_dir: Path) -> Path:
    """The directory of ``run_dir``'s event files (the most recently written one if there are several)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory not found: {run_dir}")
    files = [p for p in run_dir.rglob(EVENT_GLOB) if p.is_file()]
    if not files:
        raise FileNotFoundError(
            f"no TensorBoard event files ({EVENT_GLOB}) under {run_dir}; pass a run's log directory, "
            "e.g. runs/quickstart/version_0 (the TensorBoardLogger's log_dir)"
        )
    dirs = {p.parent for p in files}
    latest = max(files, key=lambda p: p.stat().st_mtime).parent
    if len(dirs) > 1:
        others = ", ".join(str(d) for d in sorted(dirs - {latest}))
        print(f"mvssl-report: several runs under {run_dir}; using the latest, {latest} (others: {others})",
              file=sys.stderr)
    return latest


def load_run(event_dir: Path) -> RunData:
    """Every scalar and the latest image of every image tag in ``event_dir`` (all its event files)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(event_dir), size_guidance={"scalars": 0, "images": 1})  # 1: the latest
    acc.Reload()
    tags = acc.Tags()
    data = RunData(Path(event_dir))
    for tag in tags.get("scalars", []):
        points = sorted((int(e.step), float(e.value)) for e in acc.Scalars(tag))
        data.scalars[tag] = points
    for tag in tags.get("images", []):
        events = acc.Images(tag)
        if events:
            data.images[tag] = (int(events[-1].step), bytes(events[-1].encoded_image_string))
    if not data.images:
        data.images = _pictures_on_disk(Path(event_dir) / "diagnostics")
    return data


def _pictures_on_disk(folder: Path) -> dict[str, tuple[int, bytes]]:
    """The latest ``epoch_XXX_<name>.png`` per name, as ``{"diag/<name>": (epoch, bytes)}``."""
    latest: dict[str, tuple[int, Path]] = {}
    for path in folder.glob("epoch_*_*.png") if folder.is_dir() else []:
        m = re.match(r"^epoch_(\d+)_(.+)\.png$", path.name)
        if m and (m.group(2) not in latest or int(m.group(1)) > latest[m.group(2)][0]):
            latest[m.group(2)] = (int(m.group(1)), path)
    return {f"diag/{name}": (epoch, path.read_bytes()) for name, (epoch, path) in sorted(latest.items())}


def _without_step_duplicates(tags: Sequence[str], all_tags: Sequence[str]) -> list[str]:
    """Leave out ``x_step`` when ``x_epoch`` is also logged."""
    return [t for t in tags if not (t.endswith("_step") and t[: -len("_step")] + "_epoch" in all_tags)]


def _group(data: RunData) -> list[tuple[str, dict[str, list[tuple[int, float]]]]]:
    """Scalar panels ``[(title, {line label: points})]`` in drawing order (module docstring)."""
    tags = [t for t in data.scalars if t not in SKIPPED_TAGS]
    losses = [t for t in tags if t.startswith("train/") and t not in NON_LOSS_TAGS]
    losses.sort(key=lambda t: (t != "train/loss", t))
    accuracy = sorted(_without_step_duplicates([t for t in tags if _ACCURACY.match(t)], tags))
    diag: dict[str, dict[str, list[tuple[int, float]]]] = defaultdict(dict)
    for t in tags:
        m = _DIAG.match(t)
        if m:
            diag[m.group(2)][m.group(1)] = data.scalars[t]
    used = set(losses) | {t for t in tags if _ACCURACY.match(t)} | {t for t in tags if _DIAG.match(t)}
    other = sorted(t for t in tags if t not in used)
    panels: list[tuple[str, dict[str, list[tuple[int, float]]]]] = []
    panels += [(f"loss: {t}", {t: data.scalars[t]}) for t in losses]
    if accuracy:
        panels.append(("accuracy", {t: data.scalars[t] for t in accuracy}))
    order = sorted(diag, key=lambda s: (DIAG_ORDER.index(s) if s in DIAG_ORDER else len(DIAG_ORDER), s))
    panels += [(f"diag: {stat}", diag[stat]) for stat in order]
    panels += [(f"other: {t}", {t: data.scalars[t]}) for t in other]
    return panels


def _draw(data: RunData, title: str) -> tuple[bytes, list[str]]:
    """The report figure as PNG bytes, and the panel titles."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from PIL import Image

    scalar_panels = _group(data)
    pictures = []
    for tag, (step, png) in sorted(data.images.items()):
        with Image.open(io.BytesIO(png)) as img:
            pictures.append((f"picture: {tag}", step, np.asarray(img.convert("RGB"))))
    width = 4.2 * _COLUMNS
    scalar_rows = math.ceil(len(scalar_panels) / _COLUMNS)
    picture_rows = [pictures[i : i + 2] for i in range(0, len(pictures), 2)]  # two pictures per row
    heights = [3.0] * scalar_rows + [
        max(width / 2 * a.shape[0] / a.shape[1] for _, _, a in row) + 0.4 for row in picture_rows
    ]
    if not heights:
        heights = [1.5]
    fig = Figure(figsize=(width, sum(heights) + 0.8), layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(len(heights), _COLUMNS, height_ratios=heights)
    titles: list[str] = []
    for i, (name, lines) in enumerate(scalar_panels):
        ax = fig.add_subplot(grid[i // _COLUMNS, i % _COLUMNS])
        for label, points in lines.items():
            steps, values = zip(*points, strict=True) if points else ((), ())
            ax.plot(steps, values, label=label, marker="o" if len(points) <= 20 else None, markersize=3)
        last = "; ".join(f"{v[-1][1]:.4g}" for v in lines.values() if v)
        ax.set_title(f"{name}\nlast: {last}", fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(True, alpha=0.3)
        if len(lines) > 1 or name == "accuracy":
            ax.legend(fontsize=7)
        titles.append(name)
    half = _COLUMNS // 2
    for j, (name, step, array) in enumerate(pictures):
        row, col = scalar_rows + j // 2, (j % 2) * half
        ax = fig.add_subplot(grid[row, col : col + half])
        ax.imshow(array)
        ax.set_axis_off()
        ax.set_title(f"{name} (step {step})", fontsize=10)
        titles.append(name)
    if not titles:
        ax = fig.add_subplot(grid[0, :])
        ax.set_axis_off()
        ax.text(0.5, 0.5, "the event files hold no scalars or images yet", ha="center", va="center")
    fig.suptitle(title, fontsize=12)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    return buffer.getvalue(), titles


def _html(title: str, png: bytes, panels: list[str], data: RunData) -> str:
    rows = "\n".join(
        f"<tr><td>{html.escape(tag)}</td><td>{points[-1][0]}</td><td>{points[-1][1]:.6g}</td></tr>"
        for tag, points in sorted(data.scalars.items())
        if points and tag not in SKIPPED_TAGS
    )
    items = "\n".join(f"<li>{html.escape(p)}</li>" for p in panels)
    image = base64.b64encode(png).decode("ascii")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:1em}} img{{max-width:100%}} td{{padding:0 1em}}</style></head>
<body>
<h1>{html.escape(title)}</h1>
<img alt="report" src="data:image/png;base64,{image}">
<h2>Panels</h2>
<ul id="panels">
{items}
</ul>
<h2>Last values</h2>
<table><tr><th>scalar</th><th>step</th><th>value</th></tr>
{rows}
</table>
</body></html>
"""


def make_report(run_dir: Path, out: Optional[Path] = None) -> Report:
    """Write the report of the run in ``run_dir`` (module docstring) to ``out`` (``.png`` or ``.html``;
    default ``run_dir/report.png``). Raises ``FileNotFoundError`` when there are no event files."""
    run_dir = Path(run_dir)
    event_dir = find_event_dir(run_dir)
    data = load_run(event_dir)
    out = Path(out) if out is not None else run_dir / "report.png"
    suffix = out.suffix.lower()
    if suffix not in (".png", ".html", ".htm"):
        raise ValueError(f"--out must end in .png or .html, got {out}")
    title = f"mvssl_lightning run: {event_dir}"
    png, panels = _draw(data, title)
    png_path = out if suffix == ".png" else out.with_suffix(".png")
    png_path.parent.mkdir(parents=True, exist_ok=True)
    png_path.write_bytes(png)
    html_path = None
    if suffix != ".png":
        html_path = out
        html_path.write_text(_html(title, png, panels, data), encoding="utf-8")
    return Report(png=png_path, html=html_path, panels=panels, event_dir=event_dir)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``mvssl-report`` / ``python -m mvssl_lightning.report``."""
    parser = argparse.ArgumentParser(
        prog="mvssl-report",
        description="Learning curves, accuracies, representation diagnostics and the latest pictures of a "
        "run, from its TensorBoard event files, in one PNG (or one self-contained HTML).",
    )
    parser.add_argument("run_dir", type=Path, help="the run's log directory (e.g. runs/quickstart/version_0)")
    parser.add_argument("--out", type=Path, default=None,
                        help="report.png or report.html (default: RUN_DIR/report.png)")
    args = parser.parse_args(argv)
    try:
        report = make_report(args.run_dir, args.out)
    except (FileNotFoundError, ValueError) as e:
        parser.error(str(e))
    print(f"wrote {report.html or report.png} ({len(report.panels)} panels from {report.event_dir})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
