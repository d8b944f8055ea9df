"""``token-reduction demo``: the whole pipeline, offline, on a 2-core CPU in a few minutes.

Builds the embedded default images, extracts ``pixels:16`` features (and any local CLIP/SigLIP
folder given with ``--encoder``), trains a selector with a config from ``lightning_configs/``,
then measures learned vs random selection on the HELD-OUT split and draws the paper's Figure 1.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from token_reduction.data.manifest import atomic_write_bytes
from token_reduction.demo_report import FRACTIONS, comparison_table, draw_curves, draw_overlay, summarise

REPO = Path(__file__).resolve().parents[1]


def find_config(name: str) -> Path:
    """A config path as given, else relative to the checkout's ``lightning_configs/``."""
    for candidate in (Path(name), REPO / name, REPO / "lightning_configs" / name):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"config {name!r} not found (looked in the working folder and {REPO / 'lightning_configs'})")


def slug(encoder: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", encoder).strip("-").lower() or "encoder"


def check_cache_source(cache: Path, images: Path) -> None:
    """Refuse to extend a demo cache made from another image folder (its samples would mix)."""
    from token_reduction.extraction import read_progress

    if not cache.exists():
        return
    root = read_progress(str(cache)).info.get("images_root")
    if root is not None and Path(root).resolve() != images.resolve():
        raise SystemExit(f"error: {cache} holds features of images in {root}, not {images}; pick another --out")


def train(cache: Path, run_dir: Path, config: Path, overrides: list[str]) -> dict[str, Any]:
    """Fit (resuming an interrupted run in the same folder), then test on the held-out split.

    ``run_dir`` is specific to the config and epoch count, so changing either trains afresh
    instead of resuming a run made with other settings.
    """
    from token_reduction.cli import lightning_main

    last = run_dir / "tensorboard" / "demo" / "checkpoints" / "last.ckpt"
    args = [
        "fit",
        "--config", str(config),
        "--data.cache_dir", str(cache),
        "--trainer.default_root_dir", str(run_dir),
        "--trainer.logger.init_args.save_dir", str(run_dir),
        "--trainer.logger.init_args.version", "demo",
        *overrides,
    ]
    if last.exists():
        print(f"resuming the interrupted or finished run from {last}")
        args += ["--ckpt_path", str(last)]
    cli = lightning_main(args)
    cli.model.set_eval_fractions(FRACTIONS)
    best = getattr(cli.trainer.checkpoint_callback, "best_model_path", "")
    results = cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path="best" if best else "last", verbose=False)[0]
    return {"metrics": results, "log_dir": cli.trainer.log_dir, "module": cli.model, "datamodule": cli.datamodule}


def run_encoder(encoder: str, images: Path, out: Path, figures: Path, args: argparse.Namespace) -> dict[str, Any]:
    from token_reduction.extract import extract

    target = out / slug(encoder)
    print(f"\n== {encoder}: extracting features of {images} into {target / 'cache'}")
    check_cache_source(target / "cache", images)
    extract(encoder, images, target / "cache", batch_size=args.batch_size, progress=True)
    print(f"== {encoder}: training ({args.config})")
    config = find_config(args.config)
    overrides = [] if args.max_epochs is None else ["--trainer.max_epochs", str(args.max_epochs)]
    run_name = config.stem + ("" if args.max_epochs is None else f"-e{args.max_epochs}")
    trained = train(target / "cache", target / "runs" / run_name, config, overrides)
    summary = summarise(trained["metrics"], encoder, trained["datamodule"].evaluated_split)
    summary["selector"] = str(Path(trained["log_dir"]) / "selector")
    summary["tensorboard"] = str(target / "runs")
    summary["curves_png"] = str(draw_curves(summary, figures / "curves.png"))
    overlay = draw_overlay(trained["module"], trained["datamodule"], images, figures / "overlay.png")
    summary["overlay_png"] = str(overlay) if overlay else None
    return summary


def demo_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="token-reduction demo", description=__doc__)
    parser.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    parser.add_argument("--encoder", action="append", default=None,
                        help="pixels:P or a LOCAL CLIP/SigLIP folder; repeat for several (default: pixels:16)")
    parser.add_argument("--config", default="demo.yaml", help="training config under lightning_configs/")
    parser.add_argument("--images", default=None, help="image folder to use instead of the embedded default set")
    parser.add_argument("--num-images", type=int, default=None, help="size of the default set (default: its spec)")
    parser.add_argument("--max-epochs", type=int, default=None, help="override the config's trainer.max_epochs")
    parser.add_argument("--batch-size", type=int, default=32, help="extraction batch size")
    args = parser.parse_args(argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.images:
        images = Path(args.images)
    else:
        from token_reduction.data.default_set import build_default_set, default_set_dir

        target = default_set_dir() if args.num_images is None else out / "images"
        print(f"== building the default image set in {target}")
        images = build_default_set(target, num_images=args.num_images)

    encoders = args.encoder or ["pixels:16"]
    summaries = [
        run_encoder(encoder, images, out, out if len(encoders) == 1 else out / slug(encoder), args) for encoder in encoders
    ]
    for summary in summaries:
        print(f"\n{comparison_table(summary)}")
        verdict = "yes" if summary["learned_beats_random"] else "NO"
        print(f"learned >= random on both metrics at every kept fraction <= 0.5 ({summary['split']} split): {verdict}")
        print(f"curves: {summary['curves_png']}\noverlay: {summary['overlay_png']}\nselector: {summary['selector']}")
        print(f"TensorBoard: tensorboard --logdir {summary['tensorboard']}")
    metrics_path = out / "metrics.json"
    atomic_write_bytes(metrics_path, json.dumps(summaries if len(summaries) > 1 else summaries[0], indent=2).encode())
    print(f"\nmetrics: {metrics_path}")
    return 0
