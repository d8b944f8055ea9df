"""Human-readable views of an evaluation's results: a markdown report and TensorBoard logs."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
from matplotlib.figure import Figure

COLUMNS = (
    ("kept_fraction", "kept", "{:.3f}"),
    ("recon_cosine", "recon cos", "{:.4f}"),
    ("recon_mse", "recon MSE", "{:.4f}"),
    ("recon_cosine_dropped", "recon cos (dropped)", "{:.4f}"),
    ("recon_mse_dropped", "recon MSE (dropped)", "{:.4f}"),
    ("pooled_cosine", "pooled cos", "{:.4f}"),
    ("text_recall", "text recall", "{:.3f}"),
    ("ocr_recall", "OCR words", "{:.3f}"),
    ("ocr_recall_decoded", "OCR words (decoded)", "{:.3f}"),
    ("time_ms", "ms / image", "{:.3f}"),
)


def _cell(value: float | None, fmt: str) -> str:
    return "n/a" if value is None else fmt.format(value)


def results_markdown(results: Mapping[str, Any]) -> str:
    """A report: settings, one table row per method x budget, and the adaptivity table."""
    neutral = results["neutral"]
    lines = [
        "# Token selection evaluation",
        "",
        f"- cache: `{results['cache']}` ({results['encoder']}, {results['num_tokens']} tokens of dim {results['dim']})",
        f"- split: {results['split']} ({results['num_images']} images), seed {results['seed']}",
        f"- neutral reconstructor: `{neutral['path']}` ({'reused' if neutral['reused'] else 'trained for this run'})",
        "- recon = neutral-reconstructor cosine/MSE on standardised features; pooled cos = mean of kept vs mean of all "
        "tokens; text recall over images with text patches (coverage >= 0.25) only",
        "",
        "| method | keep | " + " | ".join(label for _, label, _ in COLUMNS) + " |",
        "|---|---|" + "---|" * len(COLUMNS),
    ]
    for row in results["rows"]:
        cells = [_cell(row["metrics"].get(key), fmt) for key, _, fmt in COLUMNS]
        lines.append(f"| {row['method']} | {row['label']} | " + " | ".join(cells) + " |")
    lines += group_tables(results)
    adaptivity = results.get("adaptivity")
    if adaptivity:
        lines += [
            "",
            f"## Learned selector, adaptive mode (kept tokens of {adaptivity['num_tokens']})",
            "",
            "| image kind | images | mean | std | min | max | mean fraction |",
            "|---|---|---|---|---|---|---|",
        ]
        for kind, stats in adaptivity["kinds"].items():
            lines.append(
                f"| {kind} | {stats['images']} | {stats['mean']:.1f} | {stats['std']:.1f} | {stats['min']} | "
                f"{stats['max']} | {stats['mean_fraction']:.3f} |"
            )
    return "\n".join(lines) + "\n"


GROUP_METRICS = (("text_recall", "Text-patch recall"), ("ocr_recall", "OCR word recall (dropped patches greyed out)"),
                 ("ocr_recall_decoded", "OCR word recall (page decoded from the neutral reconstruction)"),
                 ("recon_cosine", "Neutral reconstruction cosine"))


def group_tables(results: Mapping[str, Any]) -> list[str]:
    """One table per metric: method x budget rows, one column per image group (pages by background, photos ...)."""
    lines: list[str] = []
    rows = [row for row in results["rows"] if row.get("groups") and row["keep"] is not None]
    ocr = results.get("ocr") or {}
    for metric, title in GROUP_METRICS:
        groups = [g for g in dict.fromkeys(g for row in rows for g, v in row["groups"].items() if v.get(metric) is not None)]
        if not groups:
            continue
        lines += ["", f"## {title}, by image group", "", "| method | keep | " + " | ".join(groups) + " |",
                  "|---|---|" + "---|" * len(groups)]
        if metric.startswith("ocr") and ocr.get("full_page"):
            full = ocr["full_page"]
            lines.append("| full page (ceiling) | 1 | " + " | ".join(_cell(full.get(g, {}).get("ocr_recall"), "{:.3f}") for g in groups) + " |")
        for row in sorted(rows, key=lambda r: (r["keep_fraction"], r["method"])):
            cells = [_cell(row["groups"].get(g, {}).get(metric), "{:.3f}") for g in groups]
            if any(c != "n/a" for c in cells):
                lines.append(f"| {row['method']} | {row['label']} | " + " | ".join(cells) + " |")
    return lines


def write_tensorboard(results: Mapping[str, Any], figures: Mapping[str, Figure], folder: Path) -> None:
    """Scalars ``<metric>/<method>`` at step = keep percentage, the figures, adaptivity histograms and the report.

    TensorBoard steps are integers, so the x axis is the keep fraction in percent (0-100).
    """
    from torch.utils.tensorboard import SummaryWriter  # imported late: it is slow to import

    writer = SummaryWriter(log_dir=str(folder))
    try:
        for row in results["rows"]:
            for metric, value in row["metrics"].items():
                if value is None:
                    continue
                if row["keep"] is None:
                    writer.add_scalar(f"{metric}/{row['method']}_adaptive", value, 0)
                else:
                    writer.add_scalar(f"{metric}/{row['method']}", value, round(100 * row["keep_fraction"]))
        for name, figure in figures.items():
            writer.add_figure(f"plots/{name}", figure, close=False)
        adaptivity = results.get("adaptivity")
        if adaptivity:
            for kind, stats in adaptivity["kinds"].items():
                edges, counts = stats["histogram"]["edges"], stats["histogram"]["counts"]
                centres = torch.tensor([(lo + hi) / 2 for lo, hi in zip(edges[:-1], edges[1:])])
                samples = torch.repeat_interleave(centres, torch.tensor(counts))
                if samples.numel():
                    writer.add_histogram(f"adaptivity/{kind}", samples, 0)
                writer.add_scalar(f"adaptivity_mean_kept/{kind}", stats["mean"], 0)
        writer.add_text("report", results_markdown(results), 0)
    finally:
        writer.close()
