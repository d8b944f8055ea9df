"""One evaluation loop for every selection method, learned or training-free, on cached features.

Each method runs at each budget on the same images, is scored by the same neutral reconstructor
and the same metrics (:mod:`token_reduction.evaluation.metrics`), and the learned selector also
runs in adaptive mode to show how many tokens it keeps per kind of image. Outputs in ``out_dir``:
``results.json``, ``results.md``, ``plot_<metric>.png``, ``adaptivity.png`` and ``tensorboard/``.
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from token_reduction.data.cache import FeatureCache
from token_reduction.data.manifest import atomic_write_bytes
from token_reduction.evaluation.metrics import (
    METRICS,
    MetricAccumulator,
    kept_fraction,
    pooled_cosine,
    reconstruction_scores,
    text_recall,
)
from token_reduction.evaluation.neutral import NeutralReconstructor, load_neutral_config, load_or_train_neutral
from token_reduction.evaluation.plots import adaptivity_figure, metric_figure, save_figure
from token_reduction.evaluation.report import results_markdown, write_tensorboard
from token_reduction.selection.attention import EXTRA_HINTS, MissingExtraError
from token_reduction.selection.base import Budget, SelectionMethod, resolve_budget
from token_reduction.selection.registry import canonical_name, get_method, required_extras

logger = logging.getLogger(__name__)

PLOTTED_METRICS = ("recon_cosine", "recon_cosine_dropped", "pooled_cosine", "text_recall", "time_ms")
HISTOGRAM_BINS = 20


def split_indices(cache: FeatureCache, split: str) -> tuple[list[int], str]:
    """Indices of the samples in ``split``, or of all samples (with a warning) when the split is empty."""
    chosen = [i for i, sample in enumerate(cache.samples) if sample.get("split") == split]
    if chosen:
        return chosen, split
    warnings.warn(f"feature cache {cache.root} has no samples in split '{split}'; evaluating on all {len(cache)} samples")
    return list(range(len(cache))), "all"


def build_methods(
    names: Sequence[str], cache: FeatureCache, selector: str | os.PathLike | None, seed: int, device: str
) -> dict[str, SelectionMethod]:
    """Validate everything up front (names, extras, selector) so no error comes after minutes of work."""
    methods: dict[str, SelectionMethod] = {}
    for raw in names:
        name = canonical_name(raw)
        missing = [extra for extra in required_extras(name) if extra not in cache.manifest.extras]
        if missing:
            hint = "; ".join(EXTRA_HINTS.get(extra, f"re-extract with the '{extra}' extra") for extra in missing)
            raise MissingExtraError(f"method '{name}' needs the {missing} extra(s), which {cache.root} does not hold; {hint}")
        if name == "learned":
            if selector is None:
                raise ValueError("method 'learned' needs a trained selector: pass --selector EXPORTED (a folder from `token-reduction export`)")
            method = get_method("learned", selector=selector, map_location=device)
            if method.dim != cache.manifest.dim:
                raise ValueError(
                    f"selector {selector} expects features of dim {method.dim} but the cache {cache.root} "
                    f"holds dim {cache.manifest.dim} ({cache.manifest.encoder}); use a selector trained on this encoder"
                )
        elif name == "random":
            method = get_method("random", seed=seed)
        else:
            method = get_method(name)
        methods[name] = method
    if not methods:
        raise ValueError("no methods to evaluate")
    return methods


def keep_fraction_of(keep: Budget, num_tokens: int) -> float:
    return float(keep) if isinstance(keep, float) else resolve_budget(keep, num_tokens) / num_tokens


def keep_label(keep: Budget | None) -> str:
    return "adaptive" if keep is None else (f"{keep:g}" if isinstance(keep, float) else str(keep))


def _sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def _score_batch(
    accumulator: MetricAccumulator,
    method: SelectionMethod,
    keep: Budget | None,
    features: Tensor,
    extras: dict[str, Tensor],
    grid: tuple[int, int],
    generator: torch.Generator,
    neutral: NeutralReconstructor,
    device: str,
) -> Tensor:
    """Run one method at one budget on a batch, add its metrics, return the kept counts."""
    _sync(device)
    start = time.perf_counter()
    selection = method.select(features, keep, extras=extras, grid=grid, generator=generator)
    _sync(device)
    elapsed_ms = (time.perf_counter() - start) * 1000.0
    prediction, target, keep_mask = neutral(features, selection)
    for name, values in reconstruction_scores(prediction, target, keep_mask).items():
        accumulator.update(name, values)
    accumulator.update("pooled_cosine", pooled_cosine(features, selection))
    if "text" in extras:
        accumulator.update("text_recall", text_recall(keep_mask, extras["text"]))
    accumulator.update("kept_fraction", kept_fraction(selection, features))
    accumulator.update("time_ms", torch.tensor([elapsed_ms / features.shape[0]]), weight=float(features.shape[0]))
    return selection.counts.cpu()


def adaptivity_report(counts: Sequence[int], kinds: Sequence[str], num_tokens: int) -> dict[str, Any]:
    """Per image kind: how many tokens the selector keeps when it decides (histogram, mean, std)."""
    values = torch.tensor(list(counts), dtype=torch.float32)
    bins = min(HISTOGRAM_BINS, num_tokens)
    edges = torch.linspace(0, num_tokens, bins + 1).tolist()
    report: dict[str, Any] = {"num_tokens": num_tokens, "kinds": {}}
    groups = {"all": list(range(len(values)))}
    for i, kind in enumerate(kinds):
        groups.setdefault(kind, []).append(i)
    for kind, members in groups.items():
        kept = values[members]
        report["kinds"][kind] = {
            "images": len(members),
            "mean": float(kept.mean()),
            "std": float(kept.std(unbiased=False)),
            "min": int(kept.min()),
            "max": int(kept.max()),
            "mean_fraction": float(kept.mean()) / num_tokens,
            "histogram": {"edges": edges, "counts": torch.histc(kept, bins=bins, min=0, max=num_tokens).long().tolist()},
        }
    return report


def evaluate(
    cache_dir: str | os.PathLike,
    methods: Sequence[str],
    keep: Sequence[Budget],
    selector: str | os.PathLike | None = None,
    split: str = "test",
    out_dir: str | os.PathLike = "evaluation",
    seed: int = 0,
    max_samples: int | None = None,
    batch_size: int = 16,
    neutral: str | os.PathLike | None = None,
    neutral_config: str | os.PathLike | None = None,
    neutral_overrides: dict[str, Any] | None = None,
    device: str = "cpu",
    log: Callable[[str], None] = logger.info,
) -> dict[str, Any]:
    """Evaluate ``methods`` at every ``keep`` budget on ``split``; write the reports to ``out_dir``; return the results.

    Args:
        keep: budgets, each a fraction in (0, 1] or a token count.
        selector: exported selector folder, required by ``learned``.
        neutral: folder of the neutral reconstructor (default ``<cache>/neutral_reconstructor``).
        neutral_config: YAML settings of the neutral reconstructor (default: the repo's).
        neutral_overrides: settings that replace the YAML's (e.g. ``{"steps": 20}``).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    cache = FeatureCache(cache_dir)
    m = cache.manifest
    budgets = list(keep)
    if not budgets:
        raise ValueError("no budgets: pass at least one keep fraction or count")
    for budget in budgets:
        resolve_budget(budget, m.num_tokens)  # fail now on a nonsensical budget
    built = build_methods(methods, cache, selector, seed, device)
    indices, used_split = split_indices(cache, split)
    if max_samples is not None and len(indices) > max_samples:
        pick = torch.randperm(len(indices), generator=torch.Generator().manual_seed(seed))[:max_samples]
        indices = sorted(indices[i] for i in pick.tolist())
    train = [i for i, sample in enumerate(cache.samples) if sample.get("split") == "train"]
    if not train:
        log(f"{cache.root} has no 'train' samples: the neutral reconstructor (if trained now) sees all {len(cache)} samples")
        train = list(range(len(cache)))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = load_neutral_config(neutral_config, **(neutral_overrides or {}))
    model, neutral_info = load_or_train_neutral(cache, train, config, neutral, fallback_folder=out, device=device, log=log)

    runs = [(name, budget) for name in built for budget in ([*budgets, None] if name == "learned" else budgets)]
    accumulators = {run: MetricAccumulator() for run in runs}
    generators = {run: torch.Generator().manual_seed(seed) for run in runs}
    adaptive_counts: list[int] = []
    names = ["features", *[extra for extra in ("text", "attention") if extra in m.extras]]
    log(f"evaluating {len(built)} method(s) x {len(budgets)} budget(s) on {len(indices)} images of split '{used_split}'")
    with torch.no_grad():
        for start in range(0, len(indices), batch_size):
            data = cache.read_many(indices[start : start + batch_size], names)
            features = data.pop("features").float().to(device)
            extras = {name: value.float().to(device) for name, value in data.items()}
            for run in runs:
                name, budget = run
                counts = _score_batch(accumulators[run], built[name], budget, features, extras, m.grid, generators[run], model, device)
                if name == "learned" and budget is None:
                    adaptive_counts.extend(int(c) for c in counts)

    rows = [
        {
            "method": name,
            "keep": budget,
            "label": keep_label(budget),
            "keep_fraction": None if budget is None else keep_fraction_of(budget, m.num_tokens),
            "metrics": accumulators[(name, budget)].compute(),
            "images": accumulators[(name, budget)].counts(),
        }
        for name, budget in runs
    ]
    samples = cache.samples
    adaptivity = None
    if adaptive_counts:
        kinds = [str(samples[i].get("kind") or "unknown") for i in indices]
        adaptivity = adaptivity_report(adaptive_counts, kinds, m.num_tokens)
    results = {
        "cache": str(cache.root),
        "encoder": m.encoder,
        "dim": m.dim,
        "grid": list(m.grid),
        "num_tokens": m.num_tokens,
        "split": used_split,
        "requested_split": split,
        "num_images": len(indices),
        "seed": seed,
        "selector": None if selector is None else str(selector),
        "methods": list(built),
        "keep": budgets,
        "metrics": list(METRICS),
        "neutral": neutral_info,
        "rows": rows,
        "adaptivity": adaptivity,
    }
    write_reports(results, out)
    log(f"wrote results to {out}")
    return results


def write_reports(results: dict[str, Any], out: Path) -> None:
    """``results.json``, ``results.md``, PNG plots (all atomic) and TensorBoard scalars/figures."""
    atomic_write_bytes(out / "results.json", json.dumps(results, indent=2).encode())
    atomic_write_bytes(out / "results.md", results_markdown(results).encode())
    figures = {f"plot_{metric}": metric_figure(results["rows"], metric) for metric in PLOTTED_METRICS}
    if results["adaptivity"] is not None:
        figures["adaptivity"] = adaptivity_figure(results["adaptivity"])
    for name, figure in figures.items():
        save_figure(figure, out / f"{name}.png")
    write_tensorboard(results, figures, out / "tensorboard")
