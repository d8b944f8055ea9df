"""``token-reduction``: LightningCLI for fit/validate/test/predict, plus the project's own tools.

Training is configured entirely in YAML (``lightning_configs/``); the other sub-commands
(extract, demo, evaluate, export, chat) are plain argument parsers imported on demand so that a
training run never pays for their imports.
"""

from __future__ import annotations

import sys
from importlib import import_module
from typing import Callable

from token_reduction.cli.reporting import ANTICIPATED, report
from token_reduction.errors import wants_traceback
from token_reduction.resources import config_names

TOOLS: dict[str, tuple[str, str, str]] = {
    "extract": ("token_reduction.cli.extract", "extract_main", "cache encoder features of a folder of images"),
    "demo": ("token_reduction.cli.demo", "demo_main", "offline end-to-end run on the embedded default data"),
    "evaluate": ("token_reduction.cli.evaluate", "evaluate_main", "compare learned and training-free selection"),
    "export": ("token_reduction.cli.export", "export_main", "write the trained selector of a checkpoint to a folder"),
    "chat": ("token_reduction.cli.chat", "chat_main", "ask a LLaVA model about images or a video with a pruned visual context"),
}


def _tool(name: str) -> Callable[[list[str]], int]:
    module, function, _ = TOOLS[name]
    return getattr(import_module(module), function)


def main(argv: list[str] | None = None) -> int:
    """``token-reduction ...``: 0 on success; anticipated errors print one ``error:`` line and return 2."""
    show_traceback, argv = wants_traceback(list(sys.argv[1:] if argv is None else argv))
    if argv and argv[0] in TOOLS:
        return int(_tool(argv[0])(argv[1:] + ["--traceback"] * show_traceback) or 0)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: token-reduction {fit,validate,test,predict} --config NAME_OR_YAML ... [--traceback]")
        print("       token-reduction {" + ",".join(TOOLS) + "} ... [--traceback]\n")
        for name, (_, _, summary) in TOOLS.items():
            print(f"  {name:<9} {summary}")
        print("  fit, validate, test, predict: LightningCLI (see `token-reduction fit --help`)")
        print(f"\nshipped configs (--config NAME): {', '.join(config_names())}")
        return 0
    from token_reduction.cli.train import lightning_main

    try:
        lightning_main(argv)
    except ANTICIPATED as err:
        if show_traceback:
            raise
        return report(err, f"token-reduction {argv[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
