"""Charts of runs: training and evaluation curves, confusion matrices, accuracy per modality.

Shared by `mmjax plot`, the TensorBoard log (the confusion matrix as an image) and the tools.
Every function refuses to draw a chart with nothing in it (an MmjaxError naming what is
missing), so no empty PNG is ever written.
"""

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from mmjax.errors import MmjaxError
from mmjax.train.metrics import NOT_CURVES


def curve_names(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The metrics of metrics.jsonl `rows` worth a curve, training ones first, then the
    evaluations ("<split>/<metric>"), in the order they first appear."""
    names = list(dict.fromkeys(k for row in rows for k in row if k not in NOT_CURVES))
    return [k for k in names if "/" not in k] + [k for k in names if "/" in k]


def training_figure(runs: Mapping[str, Sequence[Mapping[str, Any]]]) -> Figure:
    """A panel per metric (loss, accuracy, val/accuracy, ...), each with one line per run:
    {run name: its metrics.jsonl rows}."""
    names = list(dict.fromkeys(n for rows in runs.values() for n in curve_names(rows)))
    if not names:
        raise MmjaxError(f"no logged metrics to plot in {', '.join(runs) or 'no run'}")
    columns = min(3, len(names))
    rows_of_panels = -(-len(names) // columns)
    figure = Figure(figsize=(4.6 * columns, 3.4 * rows_of_panels), layout="constrained")
    axes = figure.subplots(rows_of_panels, columns, squeeze=False).ravel()
    for ax, name in zip(axes, names, strict=False):
        for run, rows in runs.items():
            points = [(r["step"], r[name]) for r in rows if name in r]
            if points:
                ax.plot(*zip(*points), marker="." if len(points) < 30 else None, label=run)
        ax.set(title=name, xlabel="step")
        ax.grid(alpha=0.3)
        if len(runs) > 1:
            ax.legend(fontsize=7)
    for ax in axes[len(names) :]:
        ax.set_visible(False)
    return figure


def confusion_figure(confusion: np.ndarray, class_names: Sequence[str], title: str) -> Figure:
    """The confusion matrix [C, C] (rows: true class, columns: predicted) as a heat map of each
    row's shares, with the counts written in the cells when there are few classes."""
    confusion = np.asarray(confusion)
    if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1] or not confusion.sum():
        raise MmjaxError(f"{title}: no confusion matrix to plot (got shape {confusion.shape})")
    classes = len(confusion)
    shares = confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
    size = min(2.5 + 0.45 * classes, 16)
    figure = Figure(figsize=(size + 1.2, size), layout="constrained")
    ax = figure.subplots()
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=ax, label="share of the true class", shrink=0.8)
    ticks = np.arange(classes)
    labels = [str(n)[:14] for n in class_names] if len(class_names) == classes else ticks
    ax.set_xticks(ticks, labels, rotation=90, fontsize=7)
    ax.set_yticks(ticks, labels, fontsize=7)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    if classes <= 20:
        for i, j in np.ndindex(confusion.shape):
            if confusion[i, j]:
                color = "white" if shares[i, j] > 0.5 else "black"
                ax.text(
                    j, i, str(confusion[i, j]), ha="center", va="center", fontsize=6, color=color
                )
    return figure


def modality_figure(accuracy: Mapping[str, Mapping[str, float]], split: str) -> Figure:
    """Bars of each run's accuracy with all modalities and with each one removed:
    {run: {"all": a, "without image": b, ...}}."""
    if not accuracy or not any(accuracy.values()):
        raise MmjaxError("no per-modality accuracy to plot")
    conditions = list(dict.fromkeys(c for values in accuracy.values() for c in values))
    width = 0.8 / len(accuracy)
    figure = Figure(figsize=(max(4.5, 1.2 * len(conditions) * len(accuracy)), 3.8))
    figure.set_layout_engine("constrained")
    ax = figure.subplots()
    x = np.arange(len(conditions))
    for k, (run, values) in enumerate(accuracy.items()):
        heights = [values.get(c, np.nan) for c in conditions]
        bars = ax.bar(x + (k - (len(accuracy) - 1) / 2) * width, heights, width, label=run)
        ax.bar_label(bars, fmt="%.3f", fontsize=6)
    ax.set_xticks(x, conditions)
    ax.set(ylim=(0, 1.05), ylabel=f"accuracy on {split}", title="accuracy per modality")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7)
    return figure


def save(figure: Figure, path: Path) -> Path:
    """Write `figure` as a PNG at `path`."""
    figure.savefig(path, dpi=110)
    return path


def rgb(figure: Figure) -> np.ndarray:
    """`figure` rendered as an RGB image [H, W, 3] uint8 (for TensorBoard)."""
    from PIL import Image

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80)
    return np.asarray(Image.open(buffer).convert("RGB"))
