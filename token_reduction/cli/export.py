"""``token-reduction export``: write the selector of a training checkpoint to a folder of its own."""

from __future__ import annotations

import argparse

from token_reduction.training.export import export_selector, selector_from_checkpoint


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", required=True, help="Lightning checkpoint of a fit run (e.g. .../checkpoints/last.ckpt)")
    parser.add_argument("--out", required=True, help="folder to write config.json + model.safetensors into")


def export_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="token-reduction export", description="Export the trained selector alone.")
    add_export_arguments(parser)
    args = parser.parse_args(argv)
    path = export_selector(selector_from_checkpoint(args.ckpt), args.out, source=args.ckpt)
    print(f"exported selector to {path}")
    return 0
