"""Which wrapper prunes which VLM: a registry keyed by ``config.model_type``.

Each family registers a *loader* (a zero-argument callable returning its wrapper class) rather
than the class itself, so importing this module, or wrapping one family, never imports another
family's modelling code (some pull in optional dependencies or are slow to import).

Adding a family is one line in :data:`FAMILIES` (model_type -> "module:Class"), or a call to
:func:`register_family` from code outside this package.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

from token_reduction.errors import UserError

FAMILIES: dict[str, str] = {
    "llava_next": "token_reduction.vlm.llava_next:PrunedLlavaNext",
    "llava_onevision": "token_reduction.vlm.llava_onevision:PrunedLlavaOnevision",
    "llava": "token_reduction.vlm.llava15:PrunedLlava15",  # a Pixtral tower dispatches to PrunedLlavaPixtral
    "mistral3": "token_reduction.vlm.mistral3:PrunedMistral3",
    "gemma3": "token_reduction.vlm.gemma:PrunedGemma3",
    "gemma4": "token_reduction.vlm.gemma:PrunedGemma4",
    "internvl": "token_reduction.vlm.internvl:PrunedInternVL",
    "idefics3": "token_reduction.vlm.idefics3:PrunedIdefics3",
    "smolvlm": "token_reduction.vlm.idefics3:PrunedSmolVLM",
    "qwen2_vl": "token_reduction.vlm.qwen_vl:PrunedQwenVL",
    "qwen2_5_vl": "token_reduction.vlm.qwen_vl:PrunedQwenVL",
    "qwen3_vl": "token_reduction.vlm.qwen_vl:PrunedQwenVL",
    "qwen3_5": "token_reduction.vlm.qwen_vl:PrunedQwenVL",
}
"""Built-in families, one line each: ``model_type`` -> ``"module.path:WrapperClass"`` (imported on first use)."""

_loaders: dict[str, Callable[[], type]] = {}


def _import(target: str) -> Callable[[], type]:
    module, _, name = target.partition(":")
    return lambda: getattr(importlib.import_module(module), name)


def register_family(model_type: str, loader: Callable[[], type]) -> None:
    """Make ``prune_visual_tokens`` wrap models whose ``config.model_type`` is ``model_type``.

    ``loader`` is called (once per lookup) only when such a model is wrapped, so it may import
    heavy modules inside. A later registration replaces an earlier one for the same type.
    """
    if not isinstance(model_type, str) or not model_type:
        raise ValueError(f"model_type must be a non-empty string, got {model_type!r}")
    if not callable(loader):
        raise TypeError(f"loader for {model_type!r} must be a callable returning the wrapper class")
    _loaders[model_type] = loader


def supported() -> tuple[str, ...]:
    """Every registered ``model_type``, sorted."""
    return tuple(sorted(set(FAMILIES) | set(_loaders)))


def model_type_of(model: Any) -> str | None:
    """``model.config.model_type`` (or of a config passed directly), ``None`` when there is none."""
    config = getattr(model, "config", model)
    return getattr(config, "model_type", None)


def is_supported(model_or_type: Any) -> bool:
    """Whether a model, a config, or a ``model_type`` string has a registered wrapper."""
    name = model_or_type if isinstance(model_or_type, str) else model_type_of(model_or_type)
    return name in _loaders or name in FAMILIES


def wrapper_for(model: Any, where: str = "prune_visual_tokens") -> type:
    """The wrapper class for ``model`` (a model, its config or a ``model_type`` string).

    Raises :class:`~token_reduction.errors.UserError` (``where`` first: a function or a checkpoint)
    naming the model's class and the supported types.
    """
    name = model if isinstance(model, str) else model_type_of(model)
    loader = _loaders.get(name) if name is not None else None
    if loader is None and name in FAMILIES:
        loader = _import(FAMILIES[name])
    if loader is None:
        what = model if isinstance(model, str) else type(model).__name__
        raise UserError(
            where,
            f"model {what} (model_type={name!r})",
            f"visual token pruning is not implemented for it; supported model types: {', '.join(supported())}",
        )
    return loader()


__all__ = ["FAMILIES", "is_supported", "model_type_of", "register_family", "supported", "wrapper_for"]
