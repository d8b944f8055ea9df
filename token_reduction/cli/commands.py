"""``token-reduction``: LightningCLI for fit/validate/test/predict, plus the project's own tools.

Training is configured entirely in YAML (``lightning_configs/``); the other sub-commands
(extract, demo, evaluate, export, chat) are plain argument parsers imported on demand so that a
training run never pays for their imports.
"""

from __future__ import annotations

import sys
from importlib import import_module
from typing import Callable


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
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in TOOLS:
        return int(_tool(argv[0])(argv[1:]) or 0)
    if argv and argv[0] in ("-h", "--help"):
        print("usage: token-reduction {fit,validate,test,predict} --config lightning_configs/<x>.yaml ...")
        print("       token-reduction {" + ",".join(TOOLS) + "} ...\n")
        for name, (_, _, summary) in TOOLS.items():
            print(f"  {name:<9} {summary}")
        print("  fit, validate, test, predict: LightningCLI (see `token-reduction fit --help`)")
        return 0
    from token_reduction.cli.train import lightning_main

    lightning_main(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
