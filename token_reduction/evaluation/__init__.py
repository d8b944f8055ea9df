"""Feature-level evaluation of token selection: neutral reconstructor, metrics, harness, reports.

Entry points: :func:`evaluate` (Python) and ``token-reduction evaluate`` (see
:mod:`token_reduction.cli.evaluate`).
"""

from token_reduction.evaluation.harness import evaluate
from token_reduction.evaluation.metrics import (
    METRICS,
    TEXT_COVERAGE_THRESHOLD,
    MetricAccumulator,
    kept_fraction,
    pooled_cosine,
    reconstruction_scores,
    text_recall,
)
from token_reduction.evaluation.neutral import (
    NeutralConfig,
    NeutralReconstructor,
    load_neutral,
    load_neutral_config,
    load_or_train_neutral,
    train_neutral,
)

__all__ = [
    "METRICS",
    "TEXT_COVERAGE_THRESHOLD",
    "MetricAccumulator",
    "NeutralConfig",
    "NeutralReconstructor",
    "evaluate",
    "kept_fraction",
    "load_neutral",
    "load_neutral_config",
    "load_or_train_neutral",
    "pooled_cosine",
    "reconstruction_scores",
    "text_recall",
    "train_neutral",
]
