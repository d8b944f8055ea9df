"""What the demo shows a person: a learned-vs-random table, the curves, and the paper's Figure 1."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from token_reduction.evaluation.plots import save_figure
from token_reduction.lit_module import TokenReductionModule, comparison_name
from token_reduction.selection.random_selection import random_keep_mask

FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
METHODS = ("learned", "random")
METRICS = ("cosine", "text_recall")
OVERLAY_FRACTION = 0.4


def summarise(metrics: dict[str, Any], encoder: str, split: str = "test") -> dict[str, Any]:
    """Reshape ``test/...`` scalars into per-method curves and the demo's pass/fail check."""

    def value(metric: str, fraction: float, method: str) -> float | None:
        found = metrics.get(f"test/{comparison_name(metric, fraction, method)}")
        return None if found is None else round(float(found), 4)

    curves = {
        method: {metric: [value(metric, f, method) for f in FRACTIONS] for metric in METRICS} for method in METHODS
    }
    checks = []
    for i, fraction in enumerate(FRACTIONS):
        if fraction > 0.5:
            continue
        for metric in METRICS:
            learned, random = curves["learned"][metric][i], curves["random"][metric][i]
            if learned is not None and random is not None:
                checks.append(learned >= random)
    return {
        "encoder": encoder,
        "split": split,
        "fractions": list(FRACTIONS),
        "curves": curves,
        "adaptive_keep_rate": round(float(metrics.get("test/keep_rate", float("nan"))), 4),
        "test_loss": round(float(metrics.get("test/loss", float("nan"))), 4),
        "learned_beats_random": bool(checks) and all(checks),
    }


def comparison_table(summary: dict[str, Any]) -> str:
    """Markdown table: one row per kept fraction, learned vs random on both metrics."""
    curves = summary["curves"]

    def cell(x: float | None) -> str:
        return "  n/a " if x is None else f"{x:6.3f}"

    lines = [
        f"{summary['encoder']} on the {summary['split']} split (adaptive keep rate {summary['adaptive_keep_rate']:.2f})",
        "| kept | cosine learned | cosine random | text recall learned | text recall random |",
        "|-----:|---------------:|--------------:|--------------------:|-------------------:|",
    ]
    for i, fraction in enumerate(summary["fractions"]):
        row = [cell(curves[m][metric][i]) for metric in METRICS for m in METHODS]
        lines.append(f"| {fraction:4.0%} | {row[0]} | {row[1]} | {row[2]} | {row[3]} |")
    return "\n".join(lines)


def draw_curves(summary: dict[str, Any], path: Path) -> Path:
    """``curves.png``: reconstruction cosine and text-patch recall vs kept fraction."""
    fractions = summary["fractions"]
    fig = Figure(figsize=(10, 4))
    axes = fig.subplots(1, 2)
    split = summary["split"]
    titles = {"cosine": f"reconstruction cosine ({split} split)", "text_recall": f"text-patch recall ({split} split)"}
    for ax, metric in zip(axes, METRICS):
        for method, style in (("learned", "o-"), ("random", "s--")):
            ys = summary["curves"][method][metric]
            points = [(f, y) for f, y in zip(fractions, ys) if y is not None]
            if points:
                ax.plot(*zip(*points), style, label=method)
        all_tokens = summary["curves"]["learned"][metric][-1] if fractions[-1] == 1.0 else None
        if all_tokens is not None:
            ax.axhline(all_tokens, color="grey", linestyle=":", label="all tokens")
        ax.set_xlabel("kept fraction of visual tokens")
        ax.set_title(titles[metric])
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"learned vs random selection — {summary['encoder']}")
    fig.tight_layout()
    return save_figure(fig, path)


def _grey_out(image: torch.Tensor, keep: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Blend dropped patches of ``image`` ``(H, W, 3)`` toward grey."""
    rows, cols = grid
    mask = keep.float().reshape(1, 1, rows, cols)
    mask = torch.nn.functional.interpolate(mask, size=image.shape[:2], mode="nearest")[0, 0, :, :, None]
    return image * mask + (0.25 * image + 0.75 * 0.5) * (1 - mask)


def draw_overlay(module: TokenReductionModule, datamodule: Any, images_root: Path, path: Path, seed: int = 0) -> Path | None:
    """The paper's Figure 1 on a held-out page: original | random 40% kept | learned 40% kept."""
    from PIL import Image

    cache = datamodule.cache
    samples = cache.samples
    split = datamodule.split_indices[datamodule.evaluated_split]
    preference = {"document": 0, "receipt": 1, "chart": 2}
    pages = sorted((preference[kind], i) for i in split if (kind := samples[i].get("kind")) in preference)
    if not pages:
        return None
    index = pages[0][1]
    record = samples[index]
    image_path = Path(images_root) / record["image"]
    if not image_path.exists():
        return None
    features = cache.read(index)["features"].float()[None]
    module.eval()
    with torch.no_grad():
        learned = module.selector.select(features, keep=OVERLAY_FRACTION).keep_mask(features.shape[1])[0]
    random = random_keep_mask(features, OVERLAY_FRACTION, generator=torch.Generator().manual_seed(seed))[0]
    height, width = cache.manifest.image_size or (336, 336)
    picture = torch.from_numpy(
        np.asarray(Image.open(image_path).convert("RGB").resize((width, height)), dtype="float32") / 255.0
    )
    panels = [
        ("original", picture),
        (f"random {OVERLAY_FRACTION:.0%} kept", _grey_out(picture, random, module.grid)),
        (f"learned {OVERLAY_FRACTION:.0%} kept", _grey_out(picture, learned, module.grid)),
    ]
    fig = Figure(figsize=(12, 4.4))
    axes = fig.subplots(1, 3)
    for ax, (title, panel) in zip(axes, panels):
        ax.imshow(panel.clamp(0, 1).numpy())
        ax.set_title(title)
        ax.axis("off")
    fig.suptitle(f"{datamodule.evaluated_split}-split {record.get('kind')} {record['image']}: dropped patches greyed out")
    fig.tight_layout()
    return save_figure(fig, path)
