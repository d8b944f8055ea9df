"""Name -> selection method, so the harness, the CLI and the LLaVA wrappers share one list.

Out of scope on purpose: **FastV** (Chen et al., "An Image is Worth 1/2 Tokens After Layer 2",
ECCV 2024) prunes visual tokens *inside the language model*, ranking them by the attention they
receive from text and generated tokens at layer K. That signal depends on the prompt and does not
exist in cached vision-encoder features, so a feature-level harness cannot run it faithfully; a
stand-in scored on encoder features would be a different method under FastV's name. Compare with
FastV end to end in the LLaVA evaluation instead.
"""

from __future__ import annotations

import inspect
import os
from typing import TYPE_CHECKING, Any, Callable

from token_reduction.selection.attention import AttentionSelection
from token_reduction.selection.base import SelectionMethod
from token_reduction.selection.contrast import ContrastSelection
from token_reduction.selection.diversity import DiversitySelection
from token_reduction.selection.feature_norm import FeatureNormSelection
from token_reduction.selection.grid import GridSelection
from token_reduction.selection.pooling import PoolingSelection
from token_reduction.selection.random_selection import RandomSelection
from token_reduction.selection.tome import ToMeSelection
from token_reduction.selection.visionzip import VisionZipSelection

if TYPE_CHECKING:  # runtime import is lazy: models.selector itself imports token_reduction.selection
    from token_reduction.models.selector import TokenSelector


def load_learned(selector: "str | os.PathLike[str] | TokenSelector | None" = None, map_location: str = "cpu") -> TokenSelector:
    """The trained selector: an exported folder, a Hub repo id (``owner/name``) or a module."""
    from token_reduction.models.selector import TokenSelector

    if selector is None:
        raise ValueError("method 'learned' needs a trained selector: pass selector=<exported folder> (CLI: --selector EXPORTED)")
    if isinstance(selector, TokenSelector):
        return selector.eval()
    return TokenSelector.from_pretrained(selector, map_location=map_location).to(map_location)


METHODS: dict[str, Callable[..., SelectionMethod]] = {
    "learned": load_learned,
    "random": RandomSelection,
    "pooling": PoolingSelection,
    "norm": FeatureNormSelection,
    "attention": AttentionSelection,
    "tome": ToMeSelection,
    "visionzip": VisionZipSelection,
    "contrast": ContrastSelection,
    "grid": GridSelection,
    "diversity": DiversitySelection,
}

OUT_OF_SCOPE: dict[str, str] = {
    "fastv": (
        "FastV prunes inside the language model by text-to-image attention, which cached encoder "
        "features do not contain; it is out of scope for the feature-level harness (see "
        "token_reduction/selection/registry.py)"
    ),
}

REQUIRED_EXTRAS: dict[str, tuple[str, ...]] = {"attention": ("attention",), "visionzip": ("attention",)}


def available_methods() -> list[str]:
    """Registered method names, in registration order."""
    return list(METHODS)


def required_extras(name: str) -> tuple[str, ...]:
    """Cache extras a method cannot run without (checked up front by the harness)."""
    return REQUIRED_EXTRAS.get(canonical_name(name), ())


def canonical_name(name: str) -> str:
    """Normalise and validate a method name, with an error that lists the known ones."""
    key = name.strip().lower()
    if key in OUT_OF_SCOPE:
        raise ValueError(f"method '{name}' is not available: {OUT_OF_SCOPE[key]}")
    if key not in METHODS:
        raise ValueError(f"unknown selection method '{name}'; known methods: {', '.join(METHODS)}")
    return key


def get_method(name: str, **kwargs: Any) -> SelectionMethod:
    """Build the method called ``name`` with constructor ``kwargs`` (e.g. ``selector=``, ``seed=``)."""
    key = canonical_name(name)
    factory = METHODS[key]
    try:
        inspect.signature(factory).bind(**kwargs)
    except TypeError as err:
        accepted = ", ".join(inspect.signature(factory).parameters) or "no arguments"
        raise ValueError(f"method '{key}' got unexpected arguments {sorted(kwargs)} ({err}); it accepts: {accepted}") from err
    return factory(**kwargs)


def register_method(name: str, factory: Callable[..., SelectionMethod], *, requires: tuple[str, ...] = (), overwrite: bool = False) -> None:
    """Add a method (e.g. from a plugin) under ``name``."""
    key = name.strip().lower()
    if key in METHODS and not overwrite:
        raise ValueError(f"method '{key}' is already registered; pass overwrite=True to replace it")
    METHODS[key] = factory
    if requires:
        REQUIRED_EXTRAS[key] = tuple(requires)
