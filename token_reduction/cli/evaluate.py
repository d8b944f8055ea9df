"""``token-reduction evaluate``: compare selection methods on a feature cache from the command line.

Example::

    token-reduction evaluate --cache CACHE --selector EXPORTED \\
        --methods learned,random,pooling,norm,tome,visionzip --keep 0.1,0.25,0.5,0.75 --out OUT
"""

from __future__ import annotations

import argparse
import logging
import sys

from token_reduction.cli.reporting import ArgumentParser, reports_errors
from token_reduction.errors import UserError
from token_reduction.selection.base import Budget
from token_reduction.selection.registry import OUT_OF_SCOPE, available_methods

DEFAULT_KEEP = "0.1,0.2,0.3,0.5,0.75"
BASELINES = ("random", "grid", "pooling", "norm", "contrast", "tome", "diversity")
ATTENTION_METHODS = ("attention", "visionzip")

PROG = "token-reduction evaluate"


def parse_methods(text: str) -> list[str]:
    """``"learned, random"`` -> ``["learned", "random"]`` (names are validated by the harness)."""
    names = [part.strip().lower() for part in text.split(",") if part.strip()]
    if not names:
        raise argparse.ArgumentTypeError("--methods is empty; known methods: " + ", ".join(available_methods()))
    return names


def parse_keep(text: str) -> list[Budget]:
    """``"0.1,0.25,64"`` -> fractions (with a decimal point) and token counts (whole numbers)."""
    budgets: list[Budget] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            value: Budget = float(part) if any(ch in part for ch in ".eE") else int(part)
        except ValueError:
            raise argparse.ArgumentTypeError(f"--keep value {part!r} is neither a fraction like 0.25 nor a token count like 64") from None
        if isinstance(value, float) and not 0.0 < value <= 1.0:
            raise argparse.ArgumentTypeError(f"--keep fraction {part} must be in (0, 1]")
        if isinstance(value, int) and value < 1:
            raise argparse.ArgumentTypeError(f"--keep count {part} must be >= 1")
        budgets.append(value)
    if not budgets:
        raise argparse.ArgumentTypeError("--keep is empty")
    return budgets


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``evaluate`` options to ``parser`` (a subcommand parser or a standalone one)."""
    known = ", ".join(available_methods())
    parser.add_argument("--cache", required=True, help="feature cache folder (from `token-reduction extract`)")
    parser.add_argument("--selector", default=None, help="exported TokenSelector folder; required by the 'learned' method")
    parser.add_argument(
        "--methods",
        type=parse_methods,
        default=None,
        help=f"comma-separated methods from: {known}. Default: learned (when --selector is given), "
        f"{', '.join(BASELINES)}, plus {', '.join(ATTENTION_METHODS)} when the cache stores attention. "
        f"Not available: {', '.join(OUT_OF_SCOPE)} (needs the LLM's text attention)",
    )
    parser.add_argument(
        "--keep",
        type=parse_keep,
        default=parse_keep(DEFAULT_KEEP),
        help=f"comma-separated budgets: fractions in (0, 1] or token counts (default {DEFAULT_KEEP})",
    )
    parser.add_argument("--out", required=True, help="output folder for results.json/.md, plots and tensorboard/")
    parser.add_argument("--split", default="test", help="cache split to evaluate (default test; all samples if it is empty)")
    parser.add_argument("--neutral", default=None, help="neutral reconstructor folder to reuse or create (default <cache>/neutral_reconstructor)")
    parser.add_argument(
        "--neutral-config",
        default=None,
        help="YAML settings of the neutral reconstructor (default lightning_configs/evaluate/neutral_reconstructor.yaml)",
    )
    parser.add_argument("--neutral-steps", type=int, default=None, help="override the YAML's training steps of the neutral reconstructor")
    parser.add_argument("--seed", type=int, default=0, help="seed of random selection and of the --max-samples subset (the neutral one is in its YAML)")
    parser.add_argument("--max-samples", type=int, default=None, help="evaluate a seeded random subset of at most this many images")
    parser.add_argument("--batch-size", type=int, default=16, help="images per batch")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument(
        "--ocr",
        default="auto",
        help="OCR engine judging pages that have ground-truth words: auto (rapidocr if installed, else tesseract), "
        "rapidocr, tesseract, or none (default auto; needs `pip install \".[ocr]\"` or Debian's tesseract-ocr)",
    )
    parser.add_argument("--ocr-keep", type=parse_keep, default=parse_keep("0.2,0.3,0.5"),
                        help="budgets (fractions, also in --keep) at which OCR reads each page (default 0.2,0.3,0.5)")
    parser.add_argument("--ocr-workers", type=int, default=2, help="OCR reads run in parallel in this many threads")
    return parser


def default_methods(selector: str | None, cache_extras: dict[str, list[int]]) -> list[str]:
    methods = ["learned"] if selector else []
    methods += list(BASELINES)
    if "attention" in cache_extras:
        methods += list(ATTENTION_METHODS)
    return methods


def run_evaluate(args: argparse.Namespace) -> int:
    """Run an evaluation from parsed arguments; returns a process exit code (2 on a user error)."""
    from token_reduction.cache.manifest import read_manifest
    from token_reduction.evaluation.harness import evaluate
    from token_reduction.evaluation.ocr import OcrUnavailableError

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        methods = args.methods or default_methods(args.selector, read_manifest(args.cache).extras)
        results = evaluate(
            args.cache,
            methods,
            args.keep,
            selector=args.selector,
            split=args.split,
            out_dir=args.out,
            seed=args.seed,
            max_samples=args.max_samples,
            batch_size=args.batch_size,
            neutral=args.neutral,
            neutral_config=args.neutral_config,
            neutral_overrides={"steps": args.neutral_steps},
            device=args.device,
            ocr=None if args.ocr.lower() == "none" else args.ocr,
            ocr_keep=[float(k) for k in args.ocr_keep],
            ocr_workers=args.ocr_workers,
            log=lambda message: print(message, file=sys.stderr),
        )
    except OcrUnavailableError as err:
        raise UserError(PROG, "--ocr", str(err)) from err
    print(f"evaluated {len(results['rows'])} method x budget runs on {results['num_images']} images; see {args.out}/results.md")
    return 0


@reports_errors(PROG)
def evaluate_main(argv: list[str] | None = None) -> int:
    """Entry point of ``token-reduction evaluate`` (also ``python -m token_reduction.cli.evaluate ...``)."""
    parser = add_evaluate_arguments(ArgumentParser(prog=PROG, description=__doc__.splitlines()[0]))
    return run_evaluate(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(evaluate_main())
