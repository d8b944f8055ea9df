"""Turn a training checkpoint into a stand-alone selector folder (safetensors + config.json)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch

from token_reduction.models import TokenSelector, TrunkConfig


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a Lightning checkpoint without executing code (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for corrupt or foreign files
        raise ValueError(f"checkpoint {path} could not be read as a weights-only checkpoint: {err}") from err


def selector_from_checkpoint(path: str | Path) -> TokenSelector:
    """Rebuild the trained :class:`TokenSelector` from a ``TokenReductionModule`` checkpoint."""
    checkpoint = load_checkpoint(path)
    hparams = checkpoint.get("hyper_parameters")
    if not hparams or "dim" not in hparams:
        raise ValueError(f"checkpoint {path}: field 'hyper_parameters.dim' missing; not a token_reduction checkpoint")
    selector = TokenSelector(
        int(hparams["dim"]),
        TrunkConfig(**hparams["selector"]),
        grid=tuple(hparams["grid"]),
        threshold=float(hparams.get("threshold", 0.5)),
    )
    prefix = "selector."
    state = {k[len(prefix) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
    selector.load_state_dict(state)
    selector.training_hparams = dict(hparams)
    return selector.eval()


def export_selector(selector: TokenSelector, out: str | Path, source: str = "", hparams: Mapping[str, Any] | None = None) -> Path:
    """Save ``selector`` with provenance (where it came from, what it was trained with)."""
    info: dict[str, Any] = {"source": str(source)}
    hparams = hparams if hparams is not None else getattr(selector, "training_hparams", None)
    if hparams:
        info["feature_source"] = hparams.get("feature_source")  # encoder@layer the selector was trained on
        info["training"] = {k: v for k, v in hparams.items() if isinstance(v, (int, float, str, list, dict, type(None)))}
    return selector.save_pretrained(out, extra=info)
