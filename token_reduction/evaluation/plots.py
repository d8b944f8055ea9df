"""Figures of an evaluation: each metric against keep fraction, and the learned selector's adaptivity.

Figures are built with the object API on the Agg canvas (no pyplot state, no display needed), so
they can be saved as PNG and logged to TensorBoard from any process.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from token_reduction.cache.manifest import atomic_write_bytes

METRIC_LABELS = {
    "recon_cosine": "reconstruction cosine (all tokens)",
    "recon_mse": "reconstruction MSE (all tokens)",
    "recon_cosine_dropped": "reconstruction cosine (dropped tokens)",
    "recon_mse_dropped": "reconstruction MSE (dropped tokens)",
    "pooled_cosine": "pooled-embedding cosine",
    "text_recall": "text-patch recall",
    "kept_fraction": "kept fraction",
    "time_ms": "selection time per image (ms)",
}


def metric_figure(rows: Sequence[dict[str, Any]], metric: str) -> Figure:
    """One line per method over the nominal keep fraction; adaptive runs are single stars at their mean kept fraction."""
    figure = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    methods = list(dict.fromkeys(row["method"] for row in rows))
    for method in methods:
        points = sorted(
            (row["keep_fraction"], row["metrics"][metric])
            for row in rows
            if row["method"] == method and row["keep"] is not None and row["metrics"].get(metric) is not None
        )
        colour = None
        if points:
            xs, ys = zip(*points)
            colour = axes.plot(xs, ys, marker="o", label=method)[0].get_color()
        for row in rows:
            if row["method"] == method and row["keep"] is None and row["metrics"].get(metric) is not None:
                x, y = row["metrics"]["kept_fraction"], row["metrics"][metric]
                axes.plot([x], [y], marker="*", markersize=12, linestyle="none", color=colour, label=f"{method} (adaptive)")
    axes.set_xlabel("keep fraction")
    axes.set_ylabel(METRIC_LABELS.get(metric, metric))
    axes.grid(alpha=0.3)
    if axes.lines:
        axes.legend(fontsize=8)
    figure.tight_layout()
    return figure


def adaptivity_figure(adaptivity: dict[str, Any]) -> Figure:
    """Histogram of kept-token counts per image kind in adaptive mode (step outlines, means in the legend)."""
    figure = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    for kind, stats in adaptivity["kinds"].items():
        edges, counts = stats["histogram"]["edges"], stats["histogram"]["counts"]
        axes.stairs(counts, edges, label=f"{kind} (n={stats['images']}, mean {stats['mean']:.1f} ± {stats['std']:.1f})")
    axes.set_xlabel(f"kept tokens (of {adaptivity['num_tokens']})")
    axes.set_ylabel("images")
    axes.set_title("learned selector, adaptive mode")
    if adaptivity["kinds"]:
        axes.legend(fontsize=8)
    figure.tight_layout()
    return figure


def save_figure(figure: Figure, path: str | Path) -> Path:
    """Write a PNG atomically (render to memory, then temp file + rename)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    atomic_write_bytes(Path(path), buffer.getvalue())
    return Path(path)
