"""``token-reduction export``: write the selector of a training checkpoint to a folder of its own.

The folder (``config.json`` + ``model.safetensors`` + a ``README.md`` model card) loads with
``TokenSelector.from_pretrained``; ``--push-to-hub owner/name`` also uploads it to the Hugging Face Hub.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from token_reduction.cli.reporting import ArgumentParser, reports_errors
from token_reduction.training.export import export_selector, selector_from_checkpoint

PROG = "token-reduction export"


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", required=True, help="Lightning checkpoint of a fit run (e.g. .../checkpoints/last.ckpt)")
    parser.add_argument("--out", required=True, help="folder to write config.json + model.safetensors + README.md into")
    parser.add_argument(
        "--push-to-hub", metavar="REPO_ID", default=None,
        help="also upload the selector to this Hugging Face Hub repo (owner/name; created if missing; log in with `hf auth login` or set HF_TOKEN)",
    )
    parser.add_argument("--private", action="store_true", help="with --push-to-hub: create the repo as private")
    parser.add_argument("--branch", default=None, help="with --push-to-hub: branch to commit to (default: main)")


def push_selector(selector: object, repo_id: str, private: bool = False, branch: str | None = None, source: str = "") -> str:
    """Upload through the mixin's ``push_to_hub``; the card's usage snippet names ``repo_id``. Returns the commit URL."""
    from huggingface_hub.utils import HFValidationError

    from token_reduction.errors import UserError
    from token_reduction.models.hub import HUB_ERRORS, first_line, hub_location

    try:
        return str(
            selector.push_to_hub(  # type: ignore[attr-defined]
                repo_id,
                private=private or None,
                branch=branch,
                commit_message=f"Upload token selector{f' exported from {Path(source).name}' if source else ''}",
                model_card_kwargs={"repo_id": repo_id},
            )
        )
    except HFValidationError as err:
        raise UserError(PROG, "--push-to-hub", f"{repo_id!r} is not a Hub repo id ({first_line(err)}); use owner/name") from err
    except HUB_ERRORS as err:
        raise UserError(
            hub_location(repo_id, branch), "--push-to-hub",
            f"upload failed ({first_line(err)}); log in with `hf auth login` (or set HF_TOKEN) with write access to the repo",
        ) from err


@reports_errors(PROG)
def export_main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog=PROG, description="Export the trained selector alone.")
    add_export_arguments(parser)
    args = parser.parse_args(argv)
    selector = selector_from_checkpoint(args.ckpt)
    path = export_selector(selector, args.out, source=args.ckpt)
    print(f"exported selector to {path}")
    if args.push_to_hub:
        print(f"pushed selector to {push_selector(selector, args.push_to_hub, args.private, args.branch, args.ckpt)}")
    return 0
