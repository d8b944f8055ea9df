"""The ``token-reduction`` command: LightningCLI for training plus the project's own tools."""

from token_reduction.cli.commands import main

__all__ = ["main"]
