"""``token-reduction demo``: the whole pipeline, offline, on a 2-core CPU in about ten minutes.

Builds the embedded default images, extracts ``pixels:16`` features (and any local CLIP/SigLIP
folder given with ``--encoder``), trains a selector per seed with a config from
``lightning_configs/``, then judges it on the HELD-OUT split (fonts, layouts and colour schemes
never used in training) against every training-free method, with a real OCR engine, and prints the
checks it makes with the numbers behind them. Every stage resumes when run again.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from token_reduction.cache.manifest import atomic_write_bytes
from token_reduction.cli.reporting import ArgumentParser, reports_errors
from token_reduction.errors import UserError
from token_reduction.resources import find_config
from token_reduction.cli.demo_report import VERDICT_FRACTIONS, checks, comparison_tables, draw_curves, draw_overlay, summarise

PROG = "token-reduction demo"
DEMO_BASELINES = ("random", "grid", "pooling", "norm", "contrast", "tome", "diversity")
OCR_METHODS = ("learned", "random", "contrast", "diversity")  # OCR is slow: the strongest baselines; `evaluate` reads all
OCR_PAGES = 25  # held-out pages read by OCR in the demo (5 per page group); `evaluate` reads every page
NEUTRAL_DEMO = {"width": 128, "depth": 2, "heads": 4, "steps": 250}  # a lighter neutral probe, so the demo fits ~10 min
OVERLAY_FRACTION = 0.3


def slug(encoder: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", encoder).strip("-").lower() or "encoder"


def check_cache_source(cache: Path, images: Path) -> None:
    """Refuse to extend a demo cache made from another image folder (its samples would mix)."""
    from token_reduction.extraction import read_progress

    if not cache.exists():
        return
    root = read_progress(str(cache)).info.get("images_root")
    if root is not None and Path(root).resolve() != images.resolve():
        raise UserError(cache, "images_root", f"holds features of images in {root}, not {images}; pick another --out")


def train(cache: Path, run_dir: Path, config: Path, seed: int, overrides: list[str]) -> Path:
    """Fit one seed (resuming an interrupted run in the same folder); return the exported selector."""
    from token_reduction.cli.train import lightning_main

    log_dir = run_dir / "tensorboard" / "demo"
    selector = log_dir / "selector"
    if (selector / "config.json").exists() and (run_dir / "finished").exists():
        print(f"seed {seed}: reusing the finished run in {run_dir}")
        return selector
    last = log_dir / "checkpoints" / "last.ckpt"
    args = [
        "fit",
        "--config", str(config),
        "--seed_everything", str(seed),
        "--data.cache_dir", str(cache),
        "--trainer.default_root_dir", str(run_dir),
        "--trainer.logger.init_args.save_dir", str(run_dir),
        "--trainer.logger.init_args.version", "demo",
        *overrides,
    ]
    if last.exists():
        print(f"seed {seed}: resuming the interrupted run from {last}")
        args += ["--ckpt_path", str(last)]
    with warnings.catch_warnings():  # the demo passes LightningCLI its own args on purpose
        warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter.*")
        lightning_main(args)
    atomic_write_bytes(run_dir / "finished", b"")
    return selector


def evaluate_seed(
    cache: Path, selector: Path, out: Path, seed: int, methods: list[str], ocr: str | None, ocr_methods: list[str], neutral_steps: int
) -> dict[str, Any]:
    from token_reduction.evaluation.harness import evaluate

    done = out / "results.json"
    if done.exists():
        results = json.loads(done.read_text())
        if results.get("selector") == str(selector) and results.get("methods") == methods:
            return results
    return evaluate(
        cache, methods, [0.1, *VERDICT_FRACTIONS, 0.75], selector=selector, split="test", out_dir=out, seed=seed,
        neutral=cache / "neutral_reconstructor_demo",  # its own folder: `evaluate`'s default probe is larger
        neutral_overrides={**NEUTRAL_DEMO, "steps": neutral_steps}, ocr=ocr, ocr_keep=VERDICT_FRACTIONS,
        ocr_methods=ocr_methods, ocr_max_pages=OCR_PAGES, ocr_decoded=len(ocr_methods) > 1, log=lambda m: print(m, file=sys.stderr),
    )


def ocr_engine_or_none(name: str) -> str | None:
    """The OCR judge when one is installed; otherwise say how to get it and go on without."""
    if name == "none":
        return None
    from token_reduction.evaluation.ocr import OcrUnavailableError, load_ocr_engine

    try:
        load_ocr_engine(name)
    except OcrUnavailableError as err:
        print(f"warning: no OCR judge ({err}); OCR word recall is left out", file=sys.stderr)
        return None
    return name


def overlay(cache_dir: Path, selector: Path, figure: Path) -> Path | None:
    """Figure 1 on a held-out page: original, then random / contrast / learned at 30% kept."""
    import torch
    from PIL import Image

    from token_reduction.cache.feature_cache import FeatureCache
    from token_reduction.encoders.pixels import pixel_patch_of
    from token_reduction.evaluation.ocr import grey_out
    from token_reduction.selection.registry import get_method

    cache = FeatureCache(cache_dir)
    root = cache.manifest.info.get("images_root")
    pages = [i for i, s in enumerate(cache.samples) if s.get("split") == "test" and s.get("group") in ("dark", "photo", "panels")]
    if root is None or not pages:
        return None
    index = pages[len(pages) // 2]
    features = cache.read(index)["features"].float()[None]
    methods = {"random": get_method("random", seed=0), "contrast": get_method("contrast", pixel_patch=pixel_patch_of(cache.manifest.encoder)),
               "learned": get_method("learned", selector=selector)}
    picture = np.asarray(Image.open(Path(root) / cache.samples[index]["image"]).convert("RGB"))
    panels = [("original", picture)]
    with torch.no_grad():
        for name, method in methods.items():
            mask = method.select(features, OVERLAY_FRACTION, grid=cache.manifest.grid).keep_mask(features.shape[1])[0]
            panels.append((f"{name}, {OVERLAY_FRACTION:.0%} kept", grey_out(picture, mask.reshape(cache.manifest.grid))))
    title = f"held-out {cache.samples[index].get('kind')} ({cache.samples[index].get('group')}): dropped patches greyed out"
    return draw_overlay(panels, title, figure)


def run_encoder(encoder: str, images: Path, out: Path, figures: Path, args: argparse.Namespace) -> dict[str, Any]:
    from token_reduction.extraction.run import extract

    target = out / slug(encoder)
    cache = target / "cache"
    print(f"\n== {encoder}: extracting features of {images} into {cache}")
    check_cache_source(cache, images)
    extract(encoder, images, cache, batch_size=args.batch_size, progress=True)
    config = find_config(args.config)
    overrides = [] if args.max_epochs is None else ["--trainer.max_epochs", str(args.max_epochs)]
    run_name = config.stem + ("" if args.max_epochs is None else f"-e{args.max_epochs}")
    ocr = ocr_engine_or_none(args.ocr)
    runs: dict[int, dict[str, Any]] = {}
    selectors = {}
    for number, seed in enumerate(args.seeds):
        print(f"\n== {encoder}: training seed {seed} ({config.name})")
        selectors[seed] = train(cache, target / "runs" / f"{run_name}-seed{seed}", config, seed, overrides)
        # The baselines do not depend on the selector's seed: score them once, random with every seed; OCR
        # (slow) reads every seed's learned selection but the baselines' only once.
        methods = ["learned", *(DEMO_BASELINES if number == 0 else ("random",))]
        ocr_methods = list(OCR_METHODS if number == 0 else ("learned",))
        print(f"== {encoder}: evaluating seed {seed} on the held-out split ({', '.join(methods)})")
        runs[seed] = evaluate_seed(
            cache, selectors[seed], target / "evaluation" / f"seed{seed}", seed, methods, ocr, ocr_methods, args.neutral_steps
        )
    summary = summarise(runs)
    summary["selectors"] = {str(seed): str(path) for seed, path in selectors.items()}
    summary["tensorboard"] = str(target / "runs")
    summary["curves_png"] = str(draw_curves(summary, figures / "curves.png"))
    picture = overlay(cache, selectors[args.seeds[0]], figures / "overlay.png")
    summary["overlay_png"] = str(picture) if picture else None
    summary["checks"] = [{"claim": c, "holds": ok, "numbers": n} for c, ok, n in checks(summary)]
    return summary


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds {text!r}: expected comma-separated integers such as 0,1,2") from None
    if not seeds:
        raise argparse.ArgumentTypeError("--seeds is empty")
    return seeds


@reports_errors(PROG)
def demo_main(argv: list[str] | None = None) -> int:
    """Entry point of ``token-reduction demo``."""
    parser = ArgumentParser(prog=PROG, description=__doc__)
    parser.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    parser.add_argument("--encoder", action="append", default=None,
                        help="pixels:P or a LOCAL CLIP/SigLIP folder; repeat for several (default: pixels:16)")
    parser.add_argument("--config", default="demo", help="training config: a shipped name (demo, tiny_cpu, ...) or a YAML path (default demo)")
    parser.add_argument("--images", default=None, help="image folder to use instead of the embedded default set")
    parser.add_argument("--num-images", type=int, default=None, help="size of the default set (default: its spec)")
    parser.add_argument("--max-epochs", type=int, default=None, help="override the config's trainer.max_epochs")
    parser.add_argument("--seeds", type=parse_seeds, default=parse_seeds("0,1,2"), help="training seeds (default 0,1,2)")
    parser.add_argument("--ocr", default="auto", help="OCR judge: auto, rapidocr, tesseract or none (default auto)")
    parser.add_argument("--neutral-steps", type=int, default=NEUTRAL_DEMO["steps"],
                        help=f"training steps of the neutral reconstructor that scores every method (default {NEUTRAL_DEMO['steps']})")
    parser.add_argument("--batch-size", type=int, default=32, help="extraction batch size")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.images:
        images = Path(args.images)
    else:
        from token_reduction.images.default_set import build_default_set, default_set_dir

        target = default_set_dir() if args.num_images is None else out / "images"
        print(f"== building the default image set in {target}")
        images = build_default_set(target, num_images=args.num_images)

    encoders = args.encoder or ["pixels:16"]
    summaries = [
        run_encoder(encoder, images, out, out if len(encoders) == 1 else out / slug(encoder), args) for encoder in encoders
    ]
    elapsed = time.perf_counter() - started
    for summary in summaries:
        print(f"\n{comparison_tables(summary)}\n")
        for check in summary["checks"]:
            print(f"{'yes' if check['holds'] else 'NO '}  {check['claim']}  [{check['numbers']}]")
        print(f"curves: {summary['curves_png']}\noverlay: {summary['overlay_png']}")
        print(f"selectors: {', '.join(summary['selectors'].values())}")
        print(f"TensorBoard: tensorboard --logdir {summary['tensorboard']}")
    for summary in summaries:
        summary["elapsed_s"] = round(elapsed, 1)
    metrics_path = out / "metrics.json"
    atomic_write_bytes(metrics_path, json.dumps(summaries if len(summaries) > 1 else summaries[0], indent=2).encode())
    print(f"\nmetrics: {metrics_path}\ndemo finished in {elapsed / 60:.1f} min")
    return 0
