"""Turn a training checkpoint (or a finished fit) into a stand-alone selector folder.

The folder holds ``config.json`` + ``model.safetensors`` + a ``README.md`` model card. What the card
says about the training data and held-out metrics is recorded here, from what is known at export
time: the datamodule and ``trainer.callback_metrics`` after a fit, the datamodule hyperparameters
and the ModelCheckpoint state inside a checkpoint.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

from token_reduction.errors import CheckpointError
from token_reduction.models import TokenSelector, TrunkConfig
from token_reduction.training.checkpoints import read_checkpoint

HELD_OUT = ("val/", "test/")  # metric prefixes logged on data the selector was not trained on


def selector_from_checkpoint(path: str | Path) -> TokenSelector:
    """Rebuild the trained :class:`TokenSelector` from a ``TokenReductionModule`` checkpoint.

    The selector carries ``training_hparams`` and ``provenance`` (training data, held-out metrics)
    for :func:`export_selector`.
    """
    checkpoint = read_checkpoint(path)
    hparams = checkpoint.get("hyper_parameters")
    if not hparams or "dim" not in hparams:
        raise CheckpointError(path, "hyper_parameters.dim", "missing; not a checkpoint written by `token-reduction fit`")
    selector = TokenSelector(
        int(hparams["dim"]),
        TrunkConfig(**hparams["selector"]),
        grid=tuple(hparams["grid"]),
        threshold=float(hparams.get("threshold", 0.5)),
        redundancy=float(hparams.get("redundancy", 0.0)),
        duplicate_similarity=hparams.get("duplicate_similarity"),
    )
    prefix = "selector."
    state = {k[len(prefix) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
    selector.load_state_dict(state)
    selector.training_hparams = dict(hparams)
    selector.provenance = checkpoint_provenance(checkpoint, path)
    return selector.eval()


def export_selector(
    selector: TokenSelector,
    out: str | Path,
    source: str = "",
    hparams: Mapping[str, Any] | None = None,
    *,
    data: Mapping[str, Any] | None = None,
    metrics: Mapping[str, float] | None = None,
    metrics_note: str | None = None,
) -> Path:
    """Save ``selector`` with provenance (where it came from, what it was trained on, how it scored).

    ``data`` (``cache_dir``, ``samples`` per split) and ``metrics`` (held-out values) default to
    what :func:`selector_from_checkpoint` found; both end up in ``config.json`` and on the card.
    """
    info: dict[str, Any] = {"source": str(source)}
    hparams = hparams if hparams is not None else getattr(selector, "training_hparams", None)
    if hparams:
        info["feature_source"] = hparams.get("feature_source")  # encoder@layer the selector was trained on
        info["training"] = {k: v for k, v in hparams.items() if isinstance(v, (int, float, str, list, dict, type(None)))}
    found = getattr(selector, "provenance", {})
    data = data if data is not None else found.get("data")
    metrics = metrics if metrics is not None else found.get("metrics")
    if data:
        info["data"] = dict(data)
    if metrics:
        info["metrics"] = {name: float(value) for name, value in metrics.items()}
        info["metrics_note"] = metrics_note or found.get("metrics_note") or "Logged on held-out data before export."
    return selector.save_pretrained(out, extra=info)


def held_out_metrics(logged: Mapping[str, Any]) -> dict[str, float]:
    """The finite scalar ``val/...`` and ``test/...`` values of e.g. ``trainer.callback_metrics``."""
    metrics = {}
    for name, value in logged.items():
        if not str(name).startswith(HELD_OUT):
            continue
        try:
            number = float(value)
        except (TypeError, ValueError, RuntimeError):  # a non-scalar tensor raises RuntimeError
            continue
        if math.isfinite(number):
            metrics[str(name)] = number
    return metrics


def datamodule_record(datamodule: Any) -> dict[str, Any]:
    """Cache folder and samples per split of a fit's datamodule (duck-typed: any missing piece is left out)."""
    hparams = getattr(datamodule, "hparams", None) or {}
    record: dict[str, Any] = {}
    if hparams.get("cache_dir"):
        record["cache_dir"] = str(hparams["cache_dir"])
    splits = getattr(datamodule, "split_indices", None)
    if isinstance(splits, Mapping):
        record["samples"] = {name: len(indices) for name, indices in splits.items() if len(indices)}
    return record


def checkpoint_provenance(checkpoint: Mapping[str, Any], path: str | Path) -> dict[str, Any]:
    """Training data and held-out score recorded inside a Lightning checkpoint.

    The data is the datamodule's hyperparameters (its cache folder; the sample count when that
    cache is still readable here); the score is what ModelCheckpoint monitored when it wrote the file.
    """
    provenance: dict[str, Any] = {}
    data_hparams = checkpoint.get("datamodule_hyper_parameters") or {}
    if data_hparams.get("cache_dir"):
        data: dict[str, Any] = {"cache_dir": str(data_hparams["cache_dir"])}
        try:
            from token_reduction.cache.manifest import read_manifest

            data["samples"] = {"cached": read_manifest(data_hparams["cache_dir"]).num_samples}
        except (OSError, ValueError):  # the cache lives elsewhere: its size stays unknown
            pass
        provenance["data"] = data
    for key, state in (checkpoint.get("callbacks") or {}).items():
        if not str(key).startswith("ModelCheckpoint") or not isinstance(state, Mapping):
            continue
        monitor, score = state.get("monitor"), state.get("current_score")
        metrics = held_out_metrics({monitor: score}) if monitor and score is not None else {}
        if metrics:
            provenance["metrics"] = metrics
            provenance["metrics_note"] = f"Monitored by ModelCheckpoint when {Path(path).name} was written."
            break
    return provenance
