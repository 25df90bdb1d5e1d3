"""PNG bar chart of a learning-quality results dict, drawn with Pillow's ``ImageDraw`` (no matplotlib).

One group of three bars per model: kNN top-1 (dark), online probe (medium), offline probe (light);
methods in blue, lightly-built baselines in orange; a dashed red line at chance; the kNN value above
its bar; collapsed or failed models are marked in red.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

METRICS = (("knn_top1", "kNN top-1"), ("online_probe_top1", "online probe"), ("offline_probe_top1", "offline probe"))
COLOURS = {
    "method": ("#1f4e96", "#5b8fd6", "#a9c6ee"),
    "baseline": ("#b4501a", "#e8904f", "#f5c9a3"),
}
CHANCE = "#d62728"
GRID = "#e3e3e3"
TEXT = "#222222"
BAR_W, BAR_GAP, GROUP_GAP = 20, 2, 30
LEFT, RIGHT, TOP, PLOT_H, BOTTOM = 64, 24, 92, 300, 64


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        return ImageFont.load_default()


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _wrap(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont, width: float) -> list[str]:
    lines: list[str] = []
    for word in text.split():
        if lines and draw.textlength(f"{lines[-1]} {word}", font=font) <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines


def _dashed_hline(draw: ImageDraw.ImageDraw, x0: int, x1: int, y: int, colour: str, dash: int = 8) -> None:
    for x in range(x0, x1, 2 * dash):
        draw.line([(x, y), (min(x + dash, x1), y)], fill=colour, width=2)


def write_chart(results: dict[str, Any], path: Path) -> Path:
    """Draw the chart of ``results`` (see ``benchmarks/quality.py``) into ``path`` (PNG)."""
    rows = results["rows"]
    group_w = len(METRICS) * (BAR_W + BAR_GAP) - BAR_GAP
    width = max(LEFT + max(len(rows), 1) * (group_w + GROUP_GAP) + RIGHT, 720)
    height = TOP + PLOT_H + BOTTOM
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    small, normal, title_font = _font(11), _font(13), _font(15)

    def y_of(value: float) -> float:
        return TOP + PLOT_H * (1 - min(max(value, 0.0), 1.0))

    # title, legend
    title = (f"Top-1 on {results['dataset']} ({results['image_size']} px): {results['epochs']} epoch(s), "
             f"batch {results['batch_size']}, {results['device']}")
    if results.get("label"):
        title += f" [{results['label']}]"
    draw.text((LEFT, 10), title, fill=TEXT, font=title_font)
    x = LEFT
    for i, (_, name) in enumerate(METRICS):
        for j, kind in enumerate(("method", "baseline")):
            draw.rectangle([x + 12 * j, 38, x + 12 * j + 10, 50], fill=COLOURS[kind][i])
        draw.text((x + 28, 37), name, fill=TEXT, font=normal)
        x += 36 + int(draw.textlength(name, font=normal)) + 18
    draw.text((x, 37), "blue: methods, orange: lightly baselines", fill=TEXT, font=normal)
    draw.line([(LEFT, 66), (LEFT + 24, 66)], fill=CHANCE, width=2)
    draw.text((LEFT + 30, 59), f"chance ({100 * results['chance']:.0f} %)", fill=TEXT, font=normal)

    # axes and grid
    for tick in range(0, 11):
        y = y_of(tick / 10)
        draw.line([(LEFT, y), (width - RIGHT, y)], fill=GRID if tick else TEXT, width=1)
        if tick % 2 == 0:
            label = f"{tick * 10}%"
            draw.text((LEFT - 8 - draw.textlength(label, font=small), y - 6), label, fill=TEXT, font=small)
    draw.line([(LEFT, TOP), (LEFT, TOP + PLOT_H)], fill=TEXT, width=1)

    # bars
    for g, row in enumerate(rows):
        x0 = LEFT + GROUP_GAP // 2 + g * (group_w + GROUP_GAP)
        colours = COLOURS.get(row.get("kind"), COLOURS["method"])
        for i, (key, _) in enumerate(METRICS):
            value = row.get(key)
            if not _finite(value):
                continue
            bx = x0 + i * (BAR_W + BAR_GAP)
            draw.rectangle([bx, y_of(value), bx + BAR_W - 1, TOP + PLOT_H], fill=colours[i])
            if i == 0:
                text = f"{100 * value:.1f}"
                tw = draw.textlength(text, font=small)
                draw.text((bx + BAR_W / 2 - tw / 2, y_of(value) - 14), text, fill=TEXT, font=small)
        flag = "failed" if "error" in row else ("collapsed" if row.get("collapsed") else "")
        if flag:
            draw.text((x0, TOP + 4), flag, fill=CHANCE, font=small)
        for k, line in enumerate(_wrap(draw, row.get("label", row["name"]), small, group_w + GROUP_GAP - 6)[:3]):
            tw = draw.textlength(line, font=small)
            draw.text((x0 + group_w / 2 - tw / 2, TOP + PLOT_H + 6 + 14 * k), line, fill=TEXT, font=small)

    _dashed_hline(draw, LEFT, width - RIGHT, int(y_of(results["chance"])), CHANCE)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG", optimize=True)
    return path
