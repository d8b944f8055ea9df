"""What the demo shows a person: learned vs every training-free method over seeds, the checks, the plots.

The numbers come from :func:`token_reduction.evaluation.harness.evaluate` runs (one per training
seed) on the held-out split, so the demo and ``token-reduction evaluate`` report the same thing. The
verdict lines are computed from exactly the numbers in the printed tables.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from matplotlib.figure import Figure

from token_reduction.evaluation.plots import save_figure

VERDICT_FRACTIONS = (0.2, 0.3, 0.5)
VERDICT_METRICS = ("text_recall", "ocr_recall")
PAGE_GROUPS = ("pages/white", "pages/tinted", "pages/dark", "pages/panels", "pages/photo")
TABLE_GROUPS = ("pages", *PAGE_GROUPS)
LABELS = {"text_recall": "text-patch recall", "ocr_recall": "OCR word recall", "recon_cosine": "neutral recon cosine"}


def _stats(values: Sequence[float]) -> dict[str, float] | None:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return None
    mean = float(np.mean(values))
    return {"mean": round(mean, 4), "std": round(float(np.std(values)), 4), "n": len(values)}


def summarise(runs: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Mean and spread over seeds of every (method, budget, group, metric), plus adaptivity and the OCR ceiling."""
    cells: dict[tuple[str, float, str, str], list[float]] = {}
    adaptive: dict[str, list[float]] = {}
    for results in runs.values():
        for row in results["rows"]:
            key_fraction = -1.0 if row["keep"] is None else round(row["keep_fraction"], 4)
            for group, metrics in row["groups"].items():
                for metric, value in metrics.items():
                    if value is not None:
                        cells.setdefault((row["method"], key_fraction, group, metric), []).append(value)
        for kind, stats in ((results.get("adaptivity") or {}).get("kinds") or {}).items():
            adaptive.setdefault(kind, []).append(stats["mean_fraction"])
            adaptive.setdefault(f"{kind}:max", []).append(stats["max"] / (results["adaptivity"]["num_tokens"] or 1))
    first = next(iter(runs.values()))
    table: dict[str, Any] = {}
    for (method, fraction, group, metric), values in cells.items():
        table.setdefault(method, {}).setdefault(str(fraction), {}).setdefault(group, {})[metric] = _stats(values)
    return {
        "encoder": first["encoder"],
        "split": first["split"],
        "num_images": first["num_images"],
        "seeds": sorted(runs),
        "methods": list(dict.fromkeys(row["method"] for r in runs.values() for row in r["rows"])),
        "fractions": sorted({f for (_, f, _, _) in cells if f > 0}),
        "table": table,
        "ocr": first.get("ocr"),
        "adaptive": {k: _stats(v) for k, v in adaptive.items()},
    }


def value(summary: dict[str, Any], method: str, fraction: float, group: str, metric: str) -> float | None:
    cell = summary["table"].get(method, {}).get(str(round(fraction, 4)), {}).get(group, {}).get(metric)
    return None if cell is None else cell["mean"]


def _fmt(summary: dict[str, Any], method: str, fraction: float, group: str, metric: str) -> str:
    cell = summary["table"].get(method, {}).get(str(round(fraction, 4)), {}).get(group, {}).get(metric)
    if cell is None:
        return "n/a"
    return f"{cell['mean']:.3f} ± {cell['std']:.3f}" if cell["n"] > 1 else f"{cell['mean']:.3f}"


def comparison_tables(summary: dict[str, Any]) -> str:
    """Markdown: per metric, method x kept fraction rows, one column per page group (mean ± std over seeds)."""
    lines = [f"{summary['encoder']} on the {summary['split']} split ({summary['num_images']} images), "
             f"learned selector trained with seeds {summary['seeds']} (mean ± std over seeds)"]
    ceiling = ((summary.get("ocr") or {}).get("full_page")) or {}
    for metric in (*VERDICT_METRICS, "recon_cosine"):
        groups = TABLE_GROUPS if metric != "recon_cosine" else ("all", "photos", "pages")
        lines += ["", f"{LABELS[metric]}", "", "| method | kept | " + " | ".join(groups) + " |", "|---|---:|" + "---:|" * len(groups)]
        if metric == "ocr_recall" and ceiling:
            lines.append("| full page | 100% | " + " | ".join(f"{(ceiling.get(g) or {}).get('ocr_recall') or float('nan'):.3f}" for g in groups) + " |")
        for fraction in summary["fractions"]:
            for method in summary["methods"]:
                cells = [_fmt(summary, method, fraction, g, metric) for g in groups]
                if any(c != "n/a" for c in cells):
                    lines.append(f"| {method} | {fraction:.0%} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def checks(summary: dict[str, Any]) -> list[tuple[str, bool, str]]:
    """The demo's claims, each ``(claim, holds, the numbers behind it)``."""
    baselines = [m for m in summary["methods"] if m != "learned"]
    results = []
    losses = []
    for fraction in VERDICT_FRACTIONS:
        for metric in VERDICT_METRICS:
            for group in TABLE_GROUPS:
                mine = value(summary, "learned", fraction, group, metric)
                for other in baselines:
                    theirs = value(summary, other, fraction, group, metric)
                    if mine is not None and theirs is not None and mine < theirs:
                        losses.append(f"{metric}@{fraction:.0%} {group}: {mine:.3f} < {other} {theirs:.3f}")
    results.append(("learned >= every training-free method on text-patch recall and OCR word recall at 20/30/50% kept, "
                    "overall and per page group", not losses, f"{len(losses)} loss(es)" + (": " + "; ".join(losses[:6]) if losses else "")))
    ceiling = (((summary.get("ocr") or {}).get("full_page") or {}).get("pages") or {}).get("ocr_recall")
    ocr50 = value(summary, "learned", 0.5, "pages", "ocr_recall")
    if ceiling and ocr50 is not None:
        results.append(("OCR word recall of the learned selection at 50% kept >= 85% of the full page", ocr50 >= 0.85 * ceiling,
                        f"{ocr50:.3f} vs 0.85 x {ceiling:.3f} = {0.85 * ceiling:.3f}"))
    adaptive = summary["adaptive"]
    blank = adaptive.get("blank:max")
    if blank:
        results.append(("adaptive: uniform images of any colour keep <= 5% of tokens", blank["mean"] <= 0.05,
                        f"largest kept share of a blank image {blank['mean']:.3f} (mean {adaptive['blank']['mean']:.3f})"))
    text = value(summary, "learned", -1.0, "pages", "text_recall")
    if text is not None:
        results.append(("adaptive: text pages keep >= 90% of their text patches", text >= 0.9, f"{text:.3f}"))
    photo, document = adaptive.get("photo"), adaptive.get("document")
    if photo and document:
        results.append(("adaptive: photos keep fewer tokens than dense text pages", photo["mean"] < document["mean"],
                        f"photos {photo['mean']:.3f} vs documents {document['mean']:.3f}"))
    mine, theirs = value(summary, "learned", 0.5, "photos", "recon_cosine"), value(summary, "random", 0.5, "photos", "recon_cosine")
    if mine is not None and theirs is not None:
        results.append(("photos, neutral reconstruction at 50% kept: learned >= random", mine >= theirs, f"{mine:.4f} vs {theirs:.4f}"))
    return results


def draw_curves(summary: dict[str, Any], path: Path) -> Path:
    """``curves.png``: text-patch and OCR word recall on held-out pages vs kept fraction, every method."""
    fig = Figure(figsize=(11, 4.2))
    axes = fig.subplots(1, 2)
    fractions = summary["fractions"]
    for ax, metric in zip(axes, VERDICT_METRICS):
        for method in summary["methods"]:
            cells = [summary["table"].get(method, {}).get(str(round(f, 4)), {}).get("pages", {}).get(metric) for f in fractions]
            points = [(f, c["mean"], c["std"]) for f, c in zip(fractions, cells) if c]
            if not points:
                continue
            xs, ys, spread = (np.array(v) for v in zip(*points))
            style = {"linewidth": 2.5, "color": "black", "marker": "o"} if method == "learned" else {"linewidth": 1, "marker": "."}
            ax.plot(xs, ys, label=method, **style)
            if method == "learned":
                ax.fill_between(xs, ys - spread, ys + spread, color="black", alpha=0.15)
        ceiling = (((summary.get("ocr") or {}).get("full_page") or {}).get("pages") or {}).get(metric)
        if ceiling:
            ax.axhline(ceiling, color="grey", linestyle=":", label="full page")
        ax.set_xlabel("kept fraction of visual tokens")
        ax.set_title(f"{LABELS[metric]}, held-out pages")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"learned (mean ± std over seeds {summary['seeds']}) vs training-free selection — {summary['encoder']}")
    fig.tight_layout()
    return save_figure(fig, path)


def draw_overlay(pictures: Sequence[tuple[str, np.ndarray]], title: str, path: Path) -> Path:
    """The paper's Figure 1: the page and, per method, the page with dropped patches greyed out."""
    fig = Figure(figsize=(3.2 * len(pictures), 3.6))
    axes = fig.subplots(1, len(pictures))
    for ax, (name, picture) in zip(np.atleast_1d(axes), pictures):
        ax.imshow(picture)
        ax.set_title(name, fontsize=10)
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)
