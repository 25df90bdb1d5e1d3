"""Pictures: the representation diagnostics' figures and a run's learning curves.

matplotlib is imported only inside the drawing functions, with the Agg canvas: pyplot's global state
and the user's matplotlib backend are not touched.

**Diagnostics** (:func:`plot_diagnostics`, drawn by
:class:`mvssl_lightning.callbacks.RepresentationDiagnostics`): the 2-D PCA map of the normalised
embedding coloured by class, the singular-value spectrum (log scale, normalised by the largest) and the
histogram of ``sqrt(d) sigma_j`` (:mod:`mvssl_lightning.core.statistics`), one panel per space. PCA
(:func:`pca_2d`: an exact float64 SVD with a fixed sign convention) rather than t-SNE or UMAP: it is
deterministic (the same embedding gives the same map, so maps of successive epochs are comparable), its
axes are linear directions of the embedding whose explained variance is shown, it costs one small SVD,
and it needs no extra dependency.

**Learning curves** (:func:`plot_learning_curves`, drawn by
:class:`mvssl_lightning.callbacks.RunSummary` as ``learning_curves.png``): the epoch means of every
``train/*`` term, one small panel each, and the accuracies per epoch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
import torch
from torch import Tensor

from mvssl_lightning.core.statistics import DEAD_THRESHOLD, unit_rows

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["pca_2d", "plot_diagnostics", "plot_learning_curves"]


def pca_2d(z: Tensor) -> tuple[Tensor, Tensor]:
    """2-D PCA of the L2-normalised rows of ``z (n, d)``: coordinates ``(n, 2)`` and the explained
    variance ratios ``(2,)``, by an exact float64 SVD of the centred rows. Signs are fixed so that
    each component's largest-magnitude loading is positive (the same embedding always gives the same
    map)."""
    u = unit_rows(z)
    centred = u - u.mean(dim=0)
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)
    k = min(2, vh.shape[0])
    comps = vh[:k]
    signs = torch.sign(comps.gather(1, comps.abs().argmax(dim=1, keepdim=True))).clamp_min(0) * 2 - 1
    comps = comps * signs
    coords = centred @ comps.T
    if k < 2:
        coords = torch.cat([coords, coords.new_zeros(coords.shape[0], 2 - k)], dim=1)
    var = s.pow(2)
    ratio = var[:2] / var.sum().clamp_min(torch.finfo(var.dtype).tiny)
    ratio = torch.cat([ratio, ratio.new_zeros(2 - ratio.numel())])
    return coords, ratio


def plot_diagnostics(
    embeddings: dict[str, Tensor],
    labels: Tensor,
    singular_values: dict[str, Tensor],
    scaled_std: dict[str, Tensor],
    statistics: dict[str, dict[str, float]],
    epoch: int,
    dead_threshold: float = DEAD_THRESHOLD,
    class_names: Optional[Sequence[str]] = None,
) -> dict[str, Figure]:
    """The three pictures (``"pca"``, ``"spectrum"``, ``"std_hist"``) as matplotlib figures, one panel per
    space; the PCA legend names class ``c`` ``class_names[c]`` when given. matplotlib is imported here,
    with the Agg canvas (no pyplot, no global backend change)."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = list(embeddings)
    k = len(names)
    y = labels.detach().cpu().long()
    classes = sorted(int(c) for c in torch.unique(y) if c >= 0)

    def new(width: float) -> tuple[Figure, list]:
        fig = Figure(figsize=(width * k, 4.0), layout="constrained")
        FigureCanvasAgg(fig)
        return fig, [fig.add_subplot(1, k, i + 1) for i in range(k)]

    figures: dict[str, Figure] = {}
    fig, axes = new(5.0)
    cmap = matplotlib.colormaps["tab10" if len(classes) <= 10 else "tab20" if len(classes) <= 20 else "turbo"]
    for ax, name in zip(axes, names, strict=True):
        coords, ratio = pca_2d(embeddings[name])
        xy = coords.cpu().numpy()
        unknown = (y < 0).numpy()
        if unknown.any():
            ax.scatter(xy[unknown, 0], xy[unknown, 1], s=6, c="lightgrey", label="unlabelled")
        for i, c in enumerate(classes):
            sel = (y == c).numpy()
            colour = cmap(i % cmap.N if len(classes) <= 20 else i / max(len(classes) - 1, 1))
            name_c = class_names[c] if class_names is not None and c < len(class_names) else str(c)
            ax.scatter(xy[sel, 0], xy[sel, 1], s=6, color=colour, label=name_c)
        ax.set_title(f"{name}: PCA of the normalised embedding")
        ax.set_xlabel(f"PC1 ({100 * float(ratio[0]):.1f} % var.)")
        ax.set_ylabel(f"PC2 ({100 * float(ratio[1]):.1f} % var.)")
        if 0 < len(classes) <= 20:
            ax.legend(fontsize=6, markerscale=2, ncols=2, title="class", title_fontsize=7)
    fig.suptitle(f"epoch {epoch}: {len(y)} validation images")
    figures["pca"] = fig

    fig, axes = new(4.5)
    for ax, name in zip(axes, names, strict=True):
        s = singular_values[name].detach().cpu().double()
        s = s / s[0] if len(s) and s[0] > 0 else s
        ax.semilogy(np.arange(1, len(s) + 1), s.clamp_min(1e-12).numpy())
        ax.set_title(f"{name}: RankMe {statistics[name]['rankme']:.1f} of {len(s)}")
        ax.set_xlabel("index k")
        ax.set_ylabel("s_k / s_1")
        ax.grid(True, which="both", alpha=0.3)
    fig.suptitle(f"epoch {epoch}: singular-value spectrum")
    figures["spectrum"] = fig

    fig, axes = new(4.5)
    for ax, name in zip(axes, names, strict=True):
        v = scaled_std[name].detach().cpu().double().numpy()
        top = max(1.1, float(v.max()) * 1.05) if v.size else 1.1
        ax.hist(v, bins=np.linspace(0.0, top, 45), color="tab:blue")
        ax.axvline(dead_threshold, color="tab:red", linestyle="--", label=f"dead < {dead_threshold:g}")
        ax.axvline(1.0, color="grey", linestyle=":", label="isotropic (1)")
        st = statistics[name]
        ax.set_title(f"{name}: std x sqrt(d) {st['std_sqrt_d']:.3f}, dead {100 * st['dead_fraction']:.1f} %")
        ax.set_xlabel("sqrt(d) x std of dimension j")
        ax.set_ylabel("dimensions")
        ax.legend(fontsize=7)
    fig.suptitle(f"epoch {epoch}: per-dimension spread of the normalised embedding")
    figures["std_hist"] = fig
    return figures


def plot_learning_curves(
    rows: list[dict[str, Any]], path: Path, accuracies: Mapping[str, str]
) -> dict[str, list[str]]:
    """Left, one small panel per ``train/*`` term (each on its own scale); right, the accuracies
    ``{key: title}`` (``RunSummary``'s ``ACCURACIES``), in that order.

    Epochs are on the x axis, the validation before training (``init``) first.  Returns the series
    drawn per side (``{"losses": [...], "accuracies": [...]}``)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    epochs = [r["epoch"] for r in rows]
    ticks = list(range(len(epochs)))
    labels = [str(e) for e in epochs]

    def series(key: str) -> Optional[tuple[list[int], list[float]]]:
        points = [(i, float(r[key])) for i, r in enumerate(rows) if r.get(key) is not None]
        return (list(zip(*points, strict=True)) if points else None)  # type: ignore[return-value]

    terms = sorted({k for r in rows for k in r if k.startswith("train/")})
    terms.sort(key=lambda k: k != "train/loss")  # the total first
    fig = Figure(figsize=(11, max(3.5, 1.6 * len(terms))), layout="constrained")
    FigureCanvasAgg(fig)  # draws without pyplot, leaving the user's matplotlib backend alone
    left, right = fig.subfigures(1, 2, width_ratios=[1, 1.3], squeeze=False)[0]
    drawn_terms = []
    axes = left.subplots(max(1, len(terms)), 1, sharex=True, squeeze=False)[:, 0]
    for ax, term in zip(axes, terms, strict=False):
        xy = series(term)
        if xy:
            ax.plot(*xy, marker="o", color="tab:gray" if term != "train/loss" else "tab:red")
            ax.set_ylabel(term.removeprefix("train/"), fontsize="small")
            ax.tick_params(labelsize="small")
            ax.grid(alpha=0.3)
            drawn_terms.append(term.removeprefix("train/"))
    axes[0].set_title("training terms (epoch means)")
    axes[-1].set(xticks=ticks, xticklabels=labels, xlabel="epoch", xlim=(-0.3, len(epochs) - 0.7))
    acc = right.subplots()
    for key, title in accuracies.items():
        xy = series(key)
        if xy:
            acc.plot(*xy, marker="o", label=title)
    acc.set(title="accuracy on the test split", xlabel="epoch", ylabel="top-1", xticks=ticks, xticklabels=labels,
            xlim=(-0.3, len(epochs) - 0.7))
    acc.grid(alpha=0.3)
    if acc.get_lines():
        acc.legend(fontsize="small")
    fig.savefig(path, dpi=100)
    return {"losses": drawn_terms, "accuracies": [line.get_label() for line in acc.get_lines()]}
