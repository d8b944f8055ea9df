"""Per-group metrics: a selector that wins on average can still lose on dark pages or on photos.

Every image counts toward ``all`` and toward the groups its cache record names: ``photos``,
``blank``, or ``pages`` plus ``pages/<background group>`` (white, tinted, dark, panels, photo) for
the default set's rendered pages. Caches without ``kind`` records only get ``all``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from token_reduction.evaluation.metrics import METRICS, MetricAccumulator

ALL = "all"
NON_PAGE_KINDS = {"photo": "photos", "blank": "blank"}


def image_groups(sample: Mapping[str, Any]) -> list[str]:
    """The groups one cache record belongs to, besides ``all``."""
    kind = sample.get("kind")
    if not kind:
        return []
    if kind in NON_PAGE_KINDS:
        return [NON_PAGE_KINDS[kind]]
    group = sample.get("group")
    return ["pages", f"pages/{group}"] if group else ["pages"]


class GroupedMetrics:
    """One :class:`MetricAccumulator` per group, fed per-image values."""

    def __init__(self, names: tuple[str, ...] = METRICS) -> None:
        self.names = names
        self.groups: dict[str, MetricAccumulator] = {ALL: MetricAccumulator(names)}

    def update(self, name: str, values: Tensor, groups: Sequence[Sequence[str]], weight: float = 1.0) -> None:
        """Add per-image ``values`` ``(B,)``; ``groups[b]`` lists image ``b``'s groups (``all`` is implied)."""
        values = torch.as_tensor(values, dtype=torch.float32).detach().cpu().flatten()
        self.groups[ALL].update(name, values, weight)
        members: dict[str, list[int]] = {}
        for b, names in enumerate(groups):
            for group in names:
                members.setdefault(group, []).append(b)
        for group, rows in members.items():
            accumulator = self.groups.setdefault(group, MetricAccumulator(self.names))
            accumulator.update(name, values[rows], weight)

    def compute(self) -> dict[str, dict[str, float | None]]:
        return {group: accumulator.compute() for group, accumulator in sorted(self.groups.items(), key=_group_order)}

    def counts(self) -> dict[str, dict[str, int]]:
        return {group: accumulator.counts() for group, accumulator in sorted(self.groups.items(), key=_group_order)}


def _group_order(item: tuple[str, Any]) -> tuple[int, str]:
    name = item[0]
    return (0 if name == ALL else 1 if name == "pages" else 2 if name.startswith("pages/") else 3, name)
