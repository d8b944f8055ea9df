"""Token selection methods behind one interface (:class:`SelectionMethod`), learned and training-free.

Use :func:`get_method` to build one by name: ``learned`` (needs ``selector=``), ``random``,
``pooling``, ``norm``, ``attention``, ``tome``, ``visionzip``, ``contrast``, ``grid``,
``diversity``. FastV is deliberately absent; see :mod:`token_reduction.selection.registry` for why.
"""

from token_reduction.selection.attention import AttentionSelection, MissingExtraError
from token_reduction.selection.base import (
    Budget,
    SelectionMethod,
    TokenSelection,
    budgets_per_image,
    resolve_budget,
    selection_from_mask,
    selection_from_scores,
    valid_counts,
)
from token_reduction.selection.contrast import ContrastSelection
from token_reduction.selection.diversity import DiversitySelection, diverse_top_k_mask, duplicate_suppression_mask
from token_reduction.selection.feature_norm import FeatureNormSelection
from token_reduction.selection.grid import GridSelection
from token_reduction.selection.merging import MergedSelection, selection_from_assignment
from token_reduction.selection.pooling import PoolingSelection
from token_reduction.selection.random_selection import RandomSelection
from token_reduction.selection.registry import (
    METHODS,
    OUT_OF_SCOPE,
    available_methods,
    get_method,
    register_method,
    required_extras,
)
from token_reduction.selection.tome import ToMeSelection
from token_reduction.selection.visionzip import VisionZipSelection

__all__ = [
    "METHODS",
    "OUT_OF_SCOPE",
    "AttentionSelection",
    "Budget",
    "ContrastSelection",
    "DiversitySelection",
    "FeatureNormSelection",
    "GridSelection",
    "MergedSelection",
    "MissingExtraError",
    "PoolingSelection",
    "RandomSelection",
    "SelectionMethod",
    "TokenSelection",
    "ToMeSelection",
    "VisionZipSelection",
    "available_methods",
    "budgets_per_image",
    "diverse_top_k_mask",
    "duplicate_suppression_mask",
    "get_method",
    "register_method",
    "required_extras",
    "resolve_budget",
    "selection_from_assignment",
    "selection_from_mask",
    "selection_from_scores",
    "valid_counts",
]
