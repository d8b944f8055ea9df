"""Selector width/depth vs quality, on the demo's data and the demo's held-out measures.

Why: the default selector should cost at most ~5% of the vision tower (the time side is measured
elsewhere: ``benchmarks/selector_overhead.py``) without losing quality against the paper-width
selector (width = feature dim, depth 3, 16 heads, MLP ratio 4: the real-encoder configs).

This script measures the QUALITY side so the choice rests on numbers: every variant is trained exactly as
``token-reduction demo`` trains its selector (``lightning_configs/demo.yaml``, same seed, epochs,
reconstructor and data; only ``model.selector.*`` differs) and is judged with the demo's own code
(:func:`token_reduction.evaluation.harness.evaluate` with the demo's budgets, neutral probe and OCR
pages; :func:`token_reduction.cli.demo_report.summarise` and ``checks``) on the HELD-OUT split:

* text-patch recall at 20/30/50% kept on pages, and its worst page group at 30%;
* adaptive mode: text recall, kept share of photos and documents, largest kept share of a blank;
* OCR word recall (RapidOCR, the demo's 25 held-out pages) at 20/30/50% kept;
* the demo's checks against the training-free baselines (scored once, as the demo scores them);
* the same selector with weights cast to bfloat16 and float16, run through
  :func:`token_reduction.vlm.selector.run_selector` (the path every VLM wrapper uses, which casts
  the features to the selector's dtype): text recall at 20/30/50% and agreement with fp32's keep
  decisions at 30% kept and in adaptive mode.

Also per variant: parameter count, analytic matmul FLOPs per token, training wall time. Runs go
cheapest first and the JSON is rewritten after each, so an interrupted sweep resumes where it
stopped (a variant already in ``--out`` with the same settings is skipped; training and evaluation
folders in ``--work`` are reused as the demo reuses its own).

``python -m benchmarks.selector_quality [--out benchmarks/results/selector_quality.json]
[--work DIR] [--variants paper,w256d3,...] [--seeds 0] [--ocr-pages 25]``
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from benchmarks.report import atomic_write_text, load, table

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_OUT = HERE / "results" / "selector_quality.json"
DEFAULT_WORK = Path("/tmp/token_reduction_selector_quality")
ENCODER = "pixels:16"  # the demo's encoder: 768-dim tokens, 14 x 14 per image
FRACTIONS = (0.2, 0.3, 0.5)  # = demo_report.VERDICT_FRACTIONS (checked in main)
AGREEMENT_FRACTION = 0.3
ADAPTIVE = None  # the budget meaning "the selector decides" (probability >= its threshold)
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}
FLOPS_COUNTED = (
    "2 x multiply-accumulates per token of the selector's matmuls: proj_in (dim x w), per layer the attention "
    "projections q, k, v, out (4 w^2) and the MLP (2 w^2 mlp_ratio), and the head (w x 1). 'attention_mix' is "
    "listed apart: the per-token share of the QK^T and AV products (2 N w per layer, N = tokens per image), "
    "which grows with N. LayerNorms, softmax, GELU, biases and the position codes are not counted."
)


@dataclass(frozen=True)
class Variant:
    """A selector trunk to train and judge (``model.selector.*`` of demo.yaml)."""

    name: str
    width: int
    depth: int
    heads: int
    mlp_ratio: float

    def overrides(self) -> list[str]:
        return [
            "--model.selector.width", str(self.width), "--model.selector.depth", str(self.depth),
            "--model.selector.heads", str(self.heads), "--model.selector.mlp_ratio", str(self.mlp_ratio),
        ]  # fmt: skip

    def slug(self) -> str:
        return f"w{self.width}-d{self.depth}-h{self.heads}-m{self.mlp_ratio:g}"


VARIANTS = {
    v.name: v
    for v in (
        Variant("paper", 768, 3, 16, 4.0),  # paper-faithful: width = the pixels:16 feature dim
        Variant("w512d3", 512, 3, 8, 4.0),
        Variant("w384d3", 384, 3, 8, 4.0),
        Variant("w256d3", 256, 3, 8, 4.0),
        Variant("w256d2", 256, 2, 8, 4.0),
        Variant("w128d2", 128, 2, 4, 4.0),
        Variant("demo", 96, 2, 4, 2.0),  # lightning_configs/demo.yaml
    )
}


def parse_variants(text: str) -> list[Variant]:
    """``paper,w256d3`` (known names) or ``NAME=WIDTH/DEPTH/HEADS/MLP_RATIO`` for any other trunk."""
    chosen = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        if "=" in part:
            name, spec = part.split("=", 1)
            try:
                width, depth, heads, ratio = spec.split("/")
                chosen.append(Variant(name.strip(), int(width), int(depth), int(heads), float(ratio)))
            except ValueError:
                raise argparse.ArgumentTypeError(f"variant {part!r}: expected NAME=WIDTH/DEPTH/HEADS/MLP_RATIO") from None
        elif part in VARIANTS:
            chosen.append(VARIANTS[part])
        else:
            raise argparse.ArgumentTypeError(f"unknown variant {part!r}; known: {', '.join(VARIANTS)} (or NAME=W/D/H/R)")
    if not chosen:
        raise argparse.ArgumentTypeError("no variants given")
    return chosen


# ---------------------------------------------------------------------------------- model size
def parameter_count(variant: Variant, dim: int) -> int:
    """Trainable parameters of the selector (the standardisation statistics are buffers, not counted)."""
    from token_reduction.models.backbone import TrunkConfig
    from token_reduction.models.selector import TokenSelector

    trunk = TrunkConfig(variant.width, variant.depth, variant.heads, variant.mlp_ratio)
    return sum(p.numel() for p in TokenSelector(dim, trunk).parameters())


def flops_per_token(variant: Variant, dim: int, tokens: int) -> dict[str, float]:
    """Analytic matmul FLOPs per token (see :data:`FLOPS_COUNTED`)."""
    w, d = variant.width, variant.depth
    linear = 2 * (dim * w + d * (4 * w * w + 2 * w * w * variant.mlp_ratio) + w)
    mix = 2 * d * 2 * tokens * w
    return {"linear": float(linear), "attention_mix": float(mix), "total": float(linear + mix), "tokens": tokens}


# ------------------------------------------------------------------------------------ data
def prepare_cache(work: Path, num_images: int | None, images: Path | None) -> tuple[Path, Path]:
    """The demo's image set and its ``pixels:16`` cache: the same images, the same extraction call."""
    from token_reduction.cli.demo import check_cache_source, slug
    from token_reduction.extraction.run import extract
    from token_reduction.images.default_set import build_default_set

    if images is None:
        # The demo's build (same spec, seed and size, so the same images) but in the work folder: the
        # demo's own data/default may be a stale build of an older spec, which build_default_set refuses.
        target = work / "images"
        print(f"== default image set in {target}", flush=True)
        images = build_default_set(target, num_images=num_images, progress=False)
    cache = work / slug(ENCODER) / "cache"
    print(f"== extracting {ENCODER} features of {images} into {cache}", flush=True)
    check_cache_source(cache, images)
    extract(ENCODER, images, cache, batch_size=32, progress=False)
    return images, cache


# ------------------------------------------------------------------------------- train & judge
def folders(work: Path, cache: Path, config: Path, variant: Variant, seed: int, max_epochs: int | None,
            train_args: Sequence[str]) -> tuple[Path, Path]:  # fmt: skip
    """The variant's training run and evaluation folders in ``work`` (named by everything that changes them)."""
    extra = "" if not train_args else "-x" + hashlib.sha1(" ".join(train_args).encode()).hexdigest()[:8]
    name = f"{variant.slug()}-e{max_epochs or 'cfg'}{extra}-seed{seed}"
    return work / slug_of(cache) / "runs" / f"{config.stem}-{name}", work / "evaluation" / f"{variant.name}-{name}"


def train_variant(
    cache: Path, run_dir: Path, config: Path, variant: Variant, seed: int, max_epochs: int | None, train_args: Sequence[str]
) -> tuple[Path, dict[str, Any]]:
    """The demo's :func:`~token_reduction.cli.demo.train` with the variant's selector; its wall time is kept beside the run."""
    from token_reduction.cli.demo import train

    overrides = [*variant.overrides(), *([] if max_epochs is None else ["--trainer.max_epochs", str(max_epochs)]), *train_args]
    timing = run_dir / "train_seconds.json"
    finished = (run_dir / "finished").exists()
    resumed = (run_dir / "tensorboard" / "demo" / "checkpoints" / "last.ckpt").exists() and not finished
    started = time.perf_counter()
    selector = train(cache, run_dir, config, seed, overrides)
    if finished and timing.exists():
        return selector, json.loads(timing.read_text())
    info = {"train_s": round(time.perf_counter() - started, 1), "resumed_from_checkpoint": resumed,
            "torch_threads": torch.get_num_threads()}
    atomic_write_text(timing, json.dumps(info) + "\n")
    return selector, info


def slug_of(cache: Path) -> str:
    return cache.parent.name


def judge(
    cache: Path, out: Path, seed: int, methods: Sequence[str], ocr_methods: Sequence[str], selector: Path | None,
    ocr: str | None, ocr_pages: int, neutral_steps: int,
) -> dict[str, Any]:
    """The demo's evaluation (:func:`~token_reduction.cli.demo.evaluate_seed`'s call), reused when already done."""
    from token_reduction.cli.demo import NEUTRAL_DEMO
    from token_reduction.cli.demo_report import VERDICT_FRACTIONS
    from token_reduction.evaluation.harness import evaluate

    done = out / "results.json"
    run_ocr = ocr if ocr_pages > 0 and ocr_methods else None
    wanted = {"selector": None if selector is None else str(selector), "methods": list(methods),
              "ocr_engine": run_ocr, "ocr_pages": ocr_pages if run_ocr else None}  # fmt: skip
    if done.exists():
        results = json.loads(done.read_text())
        ocr_info = results.get("ocr") or {}
        found = {"selector": results.get("selector"), "methods": results.get("methods"),
                 "ocr_engine": ocr_info.get("engine"), "ocr_pages": ocr_info.get("requested_pages")}  # fmt: skip
        if found == wanted:
            return results
    results = evaluate(
        cache, list(methods), [0.1, *VERDICT_FRACTIONS, 0.75], selector=selector, split="test", out_dir=out, seed=seed,
        neutral=cache / "neutral_reconstructor_demo", neutral_overrides={**NEUTRAL_DEMO, "steps": neutral_steps},
        ocr=run_ocr, ocr_keep=VERDICT_FRACTIONS, ocr_methods=list(ocr_methods), ocr_max_pages=ocr_pages,
        ocr_decoded=False, log=lambda m: print(m, file=sys.stderr, flush=True),
    )  # fmt: skip
    if results.get("ocr") is not None:  # remember what was asked for, so a rerun can tell whether it may reuse this
        results["ocr"]["requested_pages"] = ocr_pages
        from token_reduction.cache.manifest import atomic_write_bytes

        atomic_write_bytes(done, json.dumps(results, indent=2).encode())
    return results


# ------------------------------------------------------------------------------------ metrics
def headline(summary: dict[str, Any], method: str) -> dict[str, Any]:
    """The demo's figures for one method from a :func:`summarise` output (means over seeds)."""
    from token_reduction.cli.demo_report import PAGE_GROUPS, value

    def at(metric: str, group: str = "pages") -> dict[str, float | None]:
        return {f"{f:g}": value(summary, method, f, group, metric) for f in FRACTIONS}

    groups = {g: value(summary, method, AGREEMENT_FRACTION, g, "text_recall") for g in PAGE_GROUPS}
    known = {g: v for g, v in groups.items() if v is not None}
    worst = min(known, key=known.get) if known else None
    ocr_groups = {g: value(summary, method, AGREEMENT_FRACTION, g, "ocr_recall") for g in PAGE_GROUPS}
    ocr_known = {g: v for g, v in ocr_groups.items() if v is not None}
    ocr_worst = min(ocr_known, key=ocr_known.get) if ocr_known else None
    return {
        "text_recall": at("text_recall"),
        "text_recall_30_by_page_group": groups,
        "worst_page_group_30": {"group": worst, "text_recall": known.get(worst) if worst else None},
        "ocr_recall": at("ocr_recall"),
        "ocr_worst_page_group_30": {"group": ocr_worst, "ocr_recall": ocr_known.get(ocr_worst) if ocr_worst else None},
        "recon_cosine_photos_50": value(summary, method, 0.5, "photos", "recon_cosine"),
    }


def adaptive_figures(summary: dict[str, Any]) -> dict[str, float | None]:
    """Adaptive mode as the demo reports it (``summary['adaptive']`` and the ``-1.0`` row)."""
    from token_reduction.cli.demo_report import value

    adaptive = summary.get("adaptive") or {}

    def mean(key: str) -> float | None:
        return (adaptive.get(key) or {}).get("mean")

    return {
        "text_recall_pages": value(summary, "learned", -1.0, "pages", "text_recall"),
        "kept_fraction_pages": value(summary, "learned", -1.0, "pages", "kept_fraction"),
        "kept_fraction_photo": mean("photo"),
        "kept_fraction_document": mean("document"),
        "kept_fraction_all": mean("all"),
        "blank_max_kept_fraction": mean("blank:max"),
    }


def variant_quality(runs: dict[int, dict[str, Any]], baselines: dict[str, Any] | None) -> dict[str, Any]:
    """Headline figures, adaptive figures and the demo's checks (against the baselines scored once)."""
    from token_reduction.cli.demo_report import checks, summarise

    own = summarise(runs)
    figures = {**headline(own, "learned"), "adaptive": adaptive_figures(own), "ocr_full_page": full_page_ocr(own)}
    if baselines is not None:
        first = min(runs)
        combined = {seed: {**r, "rows": r["rows"] + (baselines["rows"] if seed == first else [])} for seed, r in runs.items()}
        verdicts = checks(summarise(combined))
        figures["demo_checks"] = [{"claim": c, "holds": ok, "numbers": n} for c, ok, n in verdicts]
    return figures


def full_page_ocr(summary: dict[str, Any]) -> float | None:
    return (((summary.get("ocr") or {}).get("full_page") or {}).get("pages") or {}).get("ocr_recall")


def reduced_precision(cache_dir: Path, selector: Path, batch_size: int = 16) -> dict[str, Any]:
    """fp32 vs bf16/fp16 weights through :func:`run_selector` on the held-out split: text recall and agreement."""
    from token_reduction.cache.feature_cache import FeatureCache
    from token_reduction.evaluation.groups import GroupedMetrics, image_groups
    from token_reduction.evaluation.harness import split_indices
    from token_reduction.evaluation.metrics import text_recall
    from token_reduction.models.selector import TokenSelector
    from token_reduction.vlm.selector import run_selector

    cache = FeatureCache(cache_dir)
    grid = tuple(cache.manifest.grid)
    indices, _ = split_indices(cache, "test")
    reference = TokenSelector.from_pretrained(selector).eval()
    selectors: dict[str, Any] = {"float32": reference}
    errors: dict[str, str] = {}
    for name, dtype in DTYPES.items():
        selectors[name] = copy.deepcopy(reference).to(dtype)
    budgets: list[float | None] = [*FRACTIONS, ADAPTIVE]
    metrics = {name: {b: GroupedMetrics() for b in budgets} for name in selectors}
    agree = {name: {"same_30": 0, "kept_30": 0, "ref_kept_30": 0, "same_adaptive": 0, "tokens": 0} for name in DTYPES}
    with torch.no_grad():
        for start in range(0, len(indices), batch_size):
            batch = indices[start : start + batch_size]
            data = cache.read_many(batch, ["features", "text"])
            features, text = data["features"].float(), data["text"].float()
            valid = torch.ones(features.shape[:2], dtype=torch.bool)
            groups = [image_groups(cache.samples[i]) for i in batch]
            masks: dict[str, dict[float | None, torch.Tensor]] = {}
            for name, module in selectors.items():
                if name in errors:
                    continue
                try:
                    masks[name] = {b: run_selector(module, features, valid, b, grid=grid)[0] for b in budgets}
                except Exception as err:  # noqa: BLE001 - a dtype the CPU cannot run is a finding, not a crash
                    errors[name] = f"{type(err).__name__}: {err}"
                    continue
                for b in budgets:
                    metrics[name][b].update("text_recall", text_recall(masks[name][b], text), groups)
            for name in DTYPES:
                if name in errors:
                    continue
                ref30, mine30 = masks["float32"][AGREEMENT_FRACTION], masks[name][AGREEMENT_FRACTION]
                counts = agree[name]
                counts["same_30"] += int((ref30 == mine30).sum())
                counts["kept_30"] += int((ref30 & mine30).sum())
                counts["ref_kept_30"] += int(ref30.sum())
                counts["same_adaptive"] += int((masks["float32"][ADAPTIVE] == masks[name][ADAPTIVE]).sum())
                counts["tokens"] += ref30.numel()
    report: dict[str, Any] = {}
    for name in selectors:
        if name in errors:
            report[name] = {"error": errors[name]}
            continue
        recall = {("adaptive" if b is None else f"{b:g}"): metrics[name][b].compute().get("pages", {}).get("text_recall") for b in budgets}
        entry: dict[str, Any] = {"text_recall": recall}
        if name in agree:
            c = agree[name]
            entry |= {
                "decisions_identical_30": c["same_30"] / c["tokens"],
                "kept_overlap_30": c["kept_30"] / max(c["ref_kept_30"], 1),
                "decisions_identical_adaptive": c["same_adaptive"] / c["tokens"],
            }
        report[name] = entry
    return report


def mean_over_seeds(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean of every number over seeds (same nesting); an error string of any seed wins."""
    first = per_seed[0]
    merged: dict[str, Any] = {}
    for key, item in first.items():
        values = [entry.get(key) for entry in per_seed]
        if isinstance(item, dict):
            merged[key] = first[key] if "error" in item else mean_over_seeds([v or {} for v in values])
        elif all(isinstance(v, (int, float)) for v in values):
            merged[key] = sum(values) / len(values)
        else:
            merged[key] = next((v for v in values if isinstance(v, str)), item)
    return merged


# ------------------------------------------------------------------------------------- report
def _f(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def markdown(results: dict[str, Any]) -> str:
    """Three tables: quality per variant, reduced precision per variant, the baselines."""
    variants = sorted(results["variants"].values(), key=lambda v: v["flops_per_token"]["total"])
    seeds = results["settings"]["seeds"]
    lines = [
        f"Selector variants on the demo's held-out split ({results['settings']['encoder']}, demo.yaml, seeds {seeds}; "
        f"{results['settings']['test_images']} test images, OCR on {results['settings']['ocr_pages']} pages). "
        "TR = text-patch recall on pages, OCR = OCR word recall, at the kept share shown; worst = lowest page group at 30%.",
        "",
    ]
    rows = []
    for v in variants:
        m = v["metrics"]
        a = m["adaptive"]
        worst = m["worst_page_group_30"]
        rows.append([
            v["name"], f"{v['width']}/{v['depth']}/{v['heads']}/{v['mlp_ratio']:g}", f"{v['params'] / 1e6:.2f}M",
            f"{v['flops_per_token']['linear'] / 1e6:.2f}", f"{v['train_s']:.0f}",
            *(_f(m["text_recall"][k]) for k in ("0.2", "0.3", "0.5")),
            f"{_f(worst['text_recall'])} ({(worst['group'] or 'n/a').replace('pages/', '')})",
            *(_f(m["ocr_recall"][k]) for k in ("0.2", "0.3", "0.5")),
            _f(a["text_recall_pages"]), f"{_f(a['kept_fraction_photo'], 2)} / {_f(a['kept_fraction_document'], 2)}",
            f"{sum(c['holds'] for c in m.get('demo_checks', []))}/{len(m.get('demo_checks', []))}",
        ])  # fmt: skip
    lines += table(
        ["variant", "w/d/heads/mlp", "params", "MFLOPs/token", "train s", "TR 20%", "TR 30%", "TR 50%", "worst @30%",
         "OCR 20%", "OCR 30%", "OCR 50%", "adaptive TR", "adaptive kept photo / doc", "demo checks"],
        rows,
    )  # fmt: skip
    lines += ["", "Reduced-precision selector weights (run_selector casts the features likewise): TR on pages at 20/30/50% "
              "and the share of keep/drop decisions identical to fp32 at 30% kept (overlap = share of fp32's kept tokens also kept).", ""]
    rows = []
    for v in variants:
        p = v["reduced_precision"]
        row = [v["name"], "/".join(_f(p["float32"]["text_recall"].get(k)) for k in ("0.2", "0.3", "0.5"))]
        for name in DTYPES:
            entry = p.get(name, {})
            if "error" in entry:
                row += [f"error: {entry['error'][:60]}", "n/a"]
            else:
                row += ["/".join(_f(entry["text_recall"].get(k)) for k in ("0.2", "0.3", "0.5")),
                        f"{entry['decisions_identical_30']:.4f} (overlap {entry['kept_overlap_30']:.4f})"]
        rows.append(row)
    lines += table(["variant", "fp32 TR 20/30/50", "bf16 TR 20/30/50", "bf16 agreement @30%", "fp16 TR 20/30/50",
                    "fp16 agreement @30%"], rows)  # fmt: skip
    baselines = results.get("baselines")
    if baselines:
        lines += ["", f"Training-free baselines on the same split (seed {baselines['seed']}; full-page OCR ceiling "
                  f"{_f(baselines.get('ocr_full_page'))})", ""]
        rows = [
            [name, *(_f(m["text_recall"][k]) for k in ("0.2", "0.3", "0.5")),
             f"{_f(m['worst_page_group_30']['text_recall'])} ({(m['worst_page_group_30']['group'] or 'n/a').replace('pages/', '')})",
             *(_f(m["ocr_recall"][k]) for k in ("0.2", "0.3", "0.5"))]
            for name, m in baselines["methods"].items()
        ]  # fmt: skip
        lines += table(["method", "TR 20%", "TR 30%", "TR 50%", "worst @30%", "OCR 20%", "OCR 30%", "OCR 50%"], rows)
    lines += ["", f"FLOPs: {FLOPS_COUNTED}"]
    return "\n".join(lines) + "\n"


def git_head() -> dict[str, Any]:
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True, check=True).stdout
        return {"head": head, "dirty": bool(dirty.strip())}
    except (OSError, subprocess.CalledProcessError):
        return {"head": None, "dirty": None}


# --------------------------------------------------------------------------------------- main
def settings_of(args: argparse.Namespace, config: Path, cache: Path, ocr: str | None) -> dict[str, Any]:
    """Everything a variant's figures depend on besides its trunk: a stored variant is reused only when these match."""
    from token_reduction.cache.feature_cache import FeatureCache
    from token_reduction.evaluation.harness import split_indices

    data = FeatureCache(cache)
    return {
        "encoder": ENCODER,
        "config": config.name,
        "config_sha256": hashlib.sha256(config.read_bytes()).hexdigest(),
        "max_epochs": args.max_epochs,
        "seeds": list(args.seeds),
        "num_images": len(data),
        "test_images": len(split_indices(data, "test")[0]),
        "ocr": ocr,
        "ocr_pages": args.ocr_pages if ocr else 0,
        "neutral_steps": args.neutral_steps,
        "train_args": shlex.split(args.train_args),
    }


def parser() -> argparse.ArgumentParser:
    from token_reduction.cli.demo import NEUTRAL_DEMO, OCR_PAGES, parse_seeds

    p = argparse.ArgumentParser(prog="python -m benchmarks.selector_quality", description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(DEFAULT_OUT), help="results JSON (default benchmarks/results/selector_quality.json)")
    p.add_argument("--work", default=str(DEFAULT_WORK), help=f"images (if not the demo's), cache, runs, evaluations (default {DEFAULT_WORK})")
    p.add_argument("--variants", type=parse_variants, default=list(VARIANTS.values()),
                   help=f"comma-separated: {', '.join(VARIANTS)}, or NAME=WIDTH/DEPTH/HEADS/MLP_RATIO (default all)")
    p.add_argument("--seeds", type=parse_seeds, default=[0], help="training seeds, comma-separated (default 0)")
    p.add_argument("--ocr-pages", type=int, default=OCR_PAGES, help=f"held-out pages read by OCR; 0 for none (default {OCR_PAGES}, the demo's)")
    p.add_argument("--ocr", default="auto", help="OCR engine: auto, rapidocr, tesseract or none (default auto, as the demo)")
    p.add_argument("--config", default="demo", help="training config (default demo)")
    p.add_argument("--max-epochs", type=int, default=None, help="override trainer.max_epochs (default: the config's)")
    p.add_argument("--num-images", type=int, default=None, help="size of the default set (default: the spec's, as the demo)")
    p.add_argument("--images", default=None, help="an image folder instead of the default set")
    p.add_argument("--neutral-steps", type=int, default=NEUTRAL_DEMO["steps"], help="neutral probe steps (default: the demo's)")
    p.add_argument("--train-args", default="",
                   help="more LightningCLI arguments for every variant, e.g. '--model.optim.lr 5e-4' (default none: demo.yaml as is)")
    p.add_argument("--force", action="store_true", help="measure the given variants again (their run and evaluation folders are deleted)")
    p.add_argument("--baselines", default="demo", help="'demo' (the demo's baselines), 'none', or a comma-separated list")
    return p


def main(argv: list[str] | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    from token_reduction.cli.demo import DEMO_BASELINES, OCR_METHODS, ocr_engine_or_none
    from token_reduction.cli.demo_report import VERDICT_FRACTIONS
    from token_reduction.resources import find_config

    assert tuple(VERDICT_FRACTIONS) == FRACTIONS, "the demo's verdict budgets changed: update FRACTIONS"
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser().parse_args(argv)
    started = time.perf_counter()
    out, work = Path(args.out), Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    images, cache = prepare_cache(work, args.num_images, Path(args.images) if args.images else None)
    config = find_config(args.config)
    ocr = ocr_engine_or_none(args.ocr) if args.ocr_pages > 0 else None
    settings = settings_of(args, config, cache, ocr)
    train_args = settings["train_args"]
    from token_reduction.cache.feature_cache import FeatureCache

    manifest = FeatureCache(cache).manifest
    dim, tokens = manifest.dim, manifest.num_tokens

    previous = load(out) or {}
    same = {"train_args": [], **(previous.get("settings") or {})} == settings  # files from before --train-args: none
    results: dict[str, Any] = {
        "benchmark": "selector_quality",
        "why": " ".join(__doc__.split("\n\n")[1].split()),
        "command": "python -m benchmarks.selector_quality " + " ".join(shlex.quote(a) for a in argv),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "git": git_head(),
        "machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                    "python": platform.python_version(), "platform": platform.platform()},
        "settings": settings,
        "paths": {"images": str(images), "cache": str(cache), "work": str(work)},
        "flops_counted": FLOPS_COUNTED,
        "baselines": previous.get("baselines") if same else None,
        "variants": dict(previous.get("variants", {})) if same else {},
        "invocations": earlier_invocations(previous) if same else [],
    }  # fmt: skip
    this_run = {"command": results["command"], "date": results["date"], "measured": [], "wall_s": None}
    results["invocations"].append(this_run)
    first = args.seeds[0]
    baseline_names = [] if args.baselines == "none" else list(DEMO_BASELINES) if args.baselines == "demo" else [
        b.strip() for b in args.baselines.split(",") if b.strip()]  # fmt: skip
    baseline_results = None
    if baseline_names:
        log(f"== baselines ({', '.join(baseline_names)}) on the held-out split")
        ocr_methods = [m for m in OCR_METHODS if m in baseline_names]
        baseline_results = judge(cache, work / "evaluation" / f"baselines-seed{first}", first, baseline_names, ocr_methods,
                                 None, ocr, args.ocr_pages, args.neutral_steps)  # fmt: skip
        from token_reduction.cli.demo_report import summarise

        summary = summarise({first: baseline_results})
        results["baselines"] = {"seed": first, "ocr_full_page": full_page_ocr(summary),
                                "methods": {m: headline(summary, m) for m in baseline_names}}  # fmt: skip
        write(results, out)

    for variant in sorted(args.variants, key=lambda v: flops_per_token(v, dim, tokens)["total"]):
        trunk = {"width": variant.width, "depth": variant.depth, "heads": variant.heads, "mlp_ratio": variant.mlp_ratio}
        stored = results["variants"].get(variant.name)
        if stored and all(stored.get(k) == v for k, v in trunk.items()) and not args.force:
            log(f"== {variant.name}: already in {out} with these settings, skipped")
            continue
        runs, training, precision = {}, {}, []
        for seed in args.seeds:
            run_dir, eval_dir = folders(work, cache, config, variant, seed, args.max_epochs, train_args)
            if args.force:  # measure again from scratch: training time included
                for folder in (run_dir, eval_dir):
                    shutil.rmtree(folder, ignore_errors=True)
            log(f"== {variant.name} ({variant.slug()}): training seed {seed}")
            selector, training[seed] = train_variant(cache, run_dir, config, variant, seed, args.max_epochs, train_args)
            log(f"== {variant.name}: seed {seed} trained in {training[seed]['train_s']:.0f} s; judging on the held-out split")
            ocr_methods = ["learned"] if ocr else []
            runs[seed] = judge(cache, eval_dir, seed, ["learned"], ocr_methods, selector, ocr, args.ocr_pages, args.neutral_steps)
            log(f"== {variant.name}: seed {seed} in bfloat16 / float16")
            precision.append(reduced_precision(cache, selector))
        this_run["measured"].append(variant.name)
        results["variants"][variant.name] = {
            "name": variant.name,
            "measured": {"command": results["command"], "date": datetime.now(timezone.utc).isoformat(timespec="seconds")},
            **trunk,
            "params": parameter_count(variant, dim),
            "flops_per_token": flops_per_token(variant, dim, tokens),
            "train_s": sum(t["train_s"] for t in training.values()) / len(training),
            "training": {str(s): t for s, t in training.items()},
            "selectors": {str(s): str(r["selector"]) for s, r in runs.items()},
            "metrics": variant_quality(runs, baseline_results),
            "reduced_precision": mean_over_seeds(precision),
        }
        write(results, out)
        log(f"== {variant.name}: done ({time.perf_counter() - started:.0f} s since start)")
    results["wall_s_this_invocation"] = this_run["wall_s"] = round(time.perf_counter() - started, 1)
    write(results, out)
    print(results["markdown"])
    log(f"wrote {out}")
    return results


def earlier_invocations(previous: dict[str, Any]) -> list[dict[str, Any]]:
    """The runs that filled ``previous`` (a resumed sweep is several invocations of this script)."""
    if previous.get("invocations"):
        return list(previous["invocations"])
    if previous.get("command"):  # written before invocations were recorded
        return [{"command": previous["command"], "date": previous.get("date"), "measured": sorted(previous.get("variants", {})),
                 "wall_s": previous.get("wall_s_this_invocation")}]  # fmt: skip
    return []


def write(results: dict[str, Any], out: Path) -> None:
    """Markdown refreshed, then the JSON written atomically (after every variant: an interrupted sweep keeps its work)."""
    results["markdown"] = markdown(results)
    atomic_write_text(out, json.dumps(results, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
