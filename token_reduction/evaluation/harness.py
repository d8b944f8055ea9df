"""One evaluation loop for every selection method, learned or training-free, on cached features.

Each method runs at each budget on the same images, is scored by the same neutral reconstructor
and the same metrics (:mod:`token_reduction.evaluation.metrics`), and the learned selector also
runs in adaptive mode to show how many tokens it keeps per kind of image. Outputs in ``out_dir``:
``results.json``, ``results.md``, ``plot_<metric>.png``, ``adaptivity.png`` and ``tensorboard/``.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from token_reduction.cache.feature_cache import FeatureCache
from token_reduction.cache.manifest import atomic_write_bytes
from token_reduction.encoders.pixels import pixel_patch_of
from token_reduction.evaluation.groups import ALL, GroupedMetrics, image_groups
from token_reduction.evaluation.metrics import (
    METRICS,
    kept_fraction,
    pooled_cosine,
    reconstruction_scores,
    text_recall,
)
from token_reduction.evaluation.neutral import NeutralReconstructor, load_neutral_config, load_or_train_neutral
from token_reduction.evaluation.ocr_judge import OcrJudge
from token_reduction.evaluation.plots import adaptivity_figure, metric_figure, save_figure
from token_reduction.evaluation.report import results_markdown, write_tensorboard
from token_reduction.selection.attention import EXTRA_HINTS, MissingExtraError
from token_reduction.selection.base import Budget, SelectionMethod, resolve_budget
from token_reduction.selection.registry import METHODS, canonical_name, get_method, required_extras

logger = logging.getLogger(__name__)

PLOTTED_METRICS = ("recon_cosine", "recon_cosine_dropped", "pooled_cosine", "text_recall", "ocr_recall", "time_ms")
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
    pixel_patch = pixel_patch_of(cache.manifest.encoder)  # raw pixel tokens: pixel-aware methods need P
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
        elif "pixel_patch" in inspect.signature(METHODS[name]).parameters:
            method = get_method(name, pixel_patch=pixel_patch)
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
    method: SelectionMethod,
    keep: Budget | None,
    features: Tensor,
    extras: dict[str, Tensor],
    grid: tuple[int, int],
    generator: torch.Generator,
    neutral: NeutralReconstructor,
    device: str,
) -> tuple[dict[str, Tensor], Tensor, Tensor]:
    """Run one method at one budget on a batch: per-image metrics, the keep mask, the reconstruction (standardised)."""
    _sync(device)
    start = time.perf_counter()
    selection = method.select(features, keep, extras=extras, grid=grid, generator=generator)
    _sync(device)
    elapsed_ms = (time.perf_counter() - start) * 1000.0
    prediction, target, keep_mask = neutral(features, selection)
    values = dict(reconstruction_scores(prediction, target, keep_mask))
    values["pooled_cosine"] = pooled_cosine(features, selection)
    if "text" in extras:
        values["text_recall"] = text_recall(keep_mask, extras["text"])
    values["kept_fraction"] = kept_fraction(selection, features)
    values["time_ms"] = torch.full((features.shape[0],), elapsed_ms / features.shape[0])
    return values, keep_mask, prediction


def adaptivity_labels(sample: dict[str, Any]) -> list[str]:
    """An image's kind, and its kind's category with its background colour group (e.g. ``pages/dark``)."""
    kind = str(sample.get("kind") or "unknown")
    group = sample.get("group")
    return [kind] + ([f"{'pages' if kind not in ('photo', 'blank') else kind}/{group}"] if group else [])


def adaptivity_report(counts: Sequence[int], labels: Sequence[str | Sequence[str]], num_tokens: int) -> dict[str, Any]:
    """Per image kind (and colour group): how many tokens the selector keeps when it decides."""
    values = torch.tensor(list(counts), dtype=torch.float32)
    bins = min(HISTOGRAM_BINS, num_tokens)
    edges = torch.linspace(0, num_tokens, bins + 1).tolist()
    report: dict[str, Any] = {"num_tokens": num_tokens, "kinds": {}}
    groups = {"all": list(range(len(values)))}
    for i, names in enumerate(labels):
        for kind in [names] if isinstance(names, str) else names:
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
    ocr: str | None = None,
    ocr_keep: Sequence[float] = (0.2, 0.3, 0.5),
    ocr_workers: int = 2,
    ocr_methods: Sequence[str] | None = None,
    ocr_max_pages: int | None = None,
    ocr_decoded: bool = True,
    log: Callable[[str], None] = logger.info,
) -> dict[str, Any]:
    """Evaluate ``methods`` at every ``keep`` budget on ``split``; write the reports to ``out_dir``; return the results.

    Args:
        keep: budgets, each a fraction in (0, 1] or a token count.
        selector: exported selector folder, required by ``learned``.
        neutral: folder of the neutral reconstructor (default ``<cache>/neutral_reconstructor``).
        neutral_config: YAML settings of the neutral reconstructor (default: the repo's).
        neutral_overrides: settings that replace the YAML's (e.g. ``{"steps": 20}``).
        ocr: OCR engine judging pages with ground-truth words (``auto``, ``rapidocr``, ``tesseract``), or
            ``None`` for none; it reads each page at the budgets in ``ocr_keep`` that are also in ``keep``
            (for ``pixels:P`` caches, unless ``ocr_decoded`` is False, the page decoded from the neutral
            reconstruction too, at the largest of them), for every method or only ``ocr_methods``, on all pages or a seeded subset of
            ``ocr_max_pages`` spread over the page groups.
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
    judge = None
    fractions = {keep_fraction_of(budget, m.num_tokens) for budget in budgets}
    if ocr is not None and (unread := [k for k in ocr_keep if k not in fractions]):
        log(f"OCR: budgets {unread} of --ocr-keep are not evaluated (not in --keep {sorted(fractions)}); OCR skips them")
    if ocr is not None:  # fails now, before any training, when no engine is installed
        judge = OcrJudge.for_cache(cache, indices, ocr, ocr_workers, max_pages=ocr_max_pages, seed=seed)
    config = load_neutral_config(neutral_config, **(neutral_overrides or {}))
    model, neutral_info = load_or_train_neutral(cache, train, config, neutral, fallback_folder=out, device=device, log=log)

    runs = [(name, budget) for name in built for budget in ([*budgets, None] if name == "learned" else budgets)]
    metrics = {run: GroupedMetrics() for run in runs}
    generators = {run: torch.Generator().manual_seed(seed) for run in runs}
    ceiling = GroupedMetrics()
    ocr_runs = {
        run for run in runs
        if run[1] is not None and keep_fraction_of(run[1], m.num_tokens) in set(ocr_keep)
        and (ocr_methods is None or run[0] in ocr_methods)
    }
    decoded_keep = max((keep_fraction_of(run[1], m.num_tokens) for run in ocr_runs), default=None) if ocr_decoded else None
    groups = {i: image_groups(cache.samples[i]) for i in indices}
    adaptive_counts: list[int] = []
    names = ["features", *[extra for extra in ("text", "attention") if extra in m.extras]]
    log(f"evaluating {len(built)} method(s) x {len(budgets)} budget(s) on {len(indices)} images of split '{used_split}'")
    with torch.no_grad():
        for start in range(0, len(indices), batch_size):
            batch = indices[start : start + batch_size]
            data = cache.read_many(batch, names)
            features = data.pop("features").float().to(device)
            extras = {name: value.float().to(device) for name, value in data.items()}
            batch_groups = [groups[i] for i in batch]
            for run in runs:
                name, budget = run
                values, keep_mask, prediction = _score_batch(built[name], budget, features, extras, m.grid, generators[run], model, device)
                for metric, value in values.items():
                    metrics[run].update(metric, value, batch_groups)
                if name == "learned" and budget is None:
                    adaptive_counts.extend(int(c) for c in keep_mask.sum(dim=1))
                if judge is not None and run in ocr_runs:
                    decode = keep_fraction_of(budget, m.num_tokens) == decoded_keep
                    judge.add(run, batch, keep_mask, m.grid, model.unstandardize(prediction) if decode else None)
    if judge is not None:
        for (run, metric), per_image in judge.score(log).items():
            for index, value in per_image.items():
                (ceiling if run is None else metrics[run]).update(metric, torch.tensor([value]), [groups[index]])

    rows = []
    for name, budget in runs:
        grouped = metrics[(name, budget)].compute()
        rows.append({
            "method": name,
            "keep": budget,
            "label": keep_label(budget),
            "keep_fraction": None if budget is None else keep_fraction_of(budget, m.num_tokens),
            "metrics": grouped[ALL],
            "groups": grouped,
            "images": metrics[(name, budget)].counts()[ALL],
        })
    samples = cache.samples
    adaptivity = None
    if adaptive_counts:
        labels = [adaptivity_labels(samples[i]) for i in indices]
        adaptivity = adaptivity_report(adaptive_counts, labels, m.num_tokens)
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
        "ocr": None if judge is None else {
            "engine": ocr, "keep": list(ocr_keep), "decoded_keep": decoded_keep, "pages": len(judge.pages), "full_page": ceiling.compute(),
        },
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
