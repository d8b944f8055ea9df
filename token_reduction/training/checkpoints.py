"""Reading a Lightning checkpoint safely, with errors that name the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from token_reduction.errors import CheckpointError

# ``--ckpt_path`` values Lightning resolves itself rather than reading a file.
SPECIAL_CHECKPOINTS = ("last", "best", "hpc", "registry")


def read_checkpoint(path: str | Path, mmap: bool = False) -> dict[str, Any]:
    """Load ``path`` without executing code (``weights_only``); a missing or damaged file is a :class:`CheckpointError`.

    ``mmap=True`` maps the tensors instead of reading them, so checking a large checkpoint is cheap.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "ckpt_path", "no such file; give the path of a .ckpt written by `token-reduction fit`")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # torch raises several types for truncated or foreign files
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            path, "ckpt_path", f"not a readable checkpoint ({reason}); it may be truncated: use another one, e.g. last.ckpt"
        ) from err
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(path, "state_dict", "missing; not a Lightning checkpoint of this project")
    return checkpoint


def check_checkpoint_path(ckpt_path: str | Path | None) -> None:
    """Fail before training starts if ``--ckpt_path`` names a file that cannot be read."""
    if ckpt_path is None or str(ckpt_path) in SPECIAL_CHECKPOINTS:
        return
    read_checkpoint(ckpt_path, mmap=True)
