"""Temporal-redundancy selection across the frames of a clip."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from token_reduction.models.backbone import TrunkConfig
from token_reduction.models.selector import TokenSelector
from token_reduction.selection import budgets_per_image, get_method, valid_counts
from token_reduction.selection.temporal import (
    TemporalSelection,
    allocate,
    hold_reconstruction,
    novelty,
    novelty_mass,
    percentile_rank,
)

GRID = (4, 4)
BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "temporal.py"


def clip(frames: int = 6, seed: int = 0, static_from: int | None = None) -> torch.Tensor:
    """``(T, 16, 8)`` random frames; from ``static_from`` on, each frame repeats the previous one."""
    x = torch.randn(frames, 16, 8, generator=torch.Generator().manual_seed(seed))
    if static_from is not None:
        x[static_from:] = x[static_from - 1]
    return x


def test_novelty_is_zero_for_repeats_one_for_unseen_and_bounded():
    a = torch.randn(5, 8, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(novelty(a, a), torch.zeros(5), atol=1e-6)
    assert torch.equal(novelty(a, -a), torch.ones(5))  # opposite is as novel as unseen, not more
    seen = torch.tensor([True, False, True, False, True])
    assert novelty(a, a, seen)[~seen].eq(1).all()
    assert novelty_mass(torch.stack([a, a, -a])).tolist() == pytest.approx([5.0, 0.0, 5.0], abs=1e-5)


@pytest.mark.parametrize("total", [0, 3, 10, 25, 40])
def test_allocate_is_exact_bounded_and_follows_the_weights(total):
    capacity = torch.tensor([10, 10, 10, 10])
    budgets = allocate(total, torch.tensor([8.0, 0.0, 1.0, 1.0]), capacity, minimum=1)
    assert int(budgets.sum()) == total
    assert bool((budgets <= capacity).all()) and bool((budgets >= 0).all())
    if total >= 4:
        assert bool((budgets >= 1).all())  # floors when the total allows them
    assert int(budgets[0]) >= int(budgets[2]) >= int(budgets[1])
    with pytest.raises(ValueError, match="cannot place"):
        allocate(41, torch.ones(4), capacity)


def test_percentile_rank_ignores_padding():
    scores = torch.tensor([[0.1, 0.9, 0.5, 7.0]])
    valid = torch.tensor([[True, True, True, False]])
    assert percentile_rank(scores, valid).tolist() == [[pytest.approx(1 / 3), 1.0, pytest.approx(2 / 3), 0.0]]


@pytest.mark.parametrize("keep", [1, 3, 16, 0.1, 0.25, 0.5, 1.0])
def test_total_budget_equals_what_per_frame_selection_keeps(keep):
    features = clip()
    per_frame = int(budgets_per_image(keep, valid_counts(features, None)).sum())
    selection = TemporalSelection(get_method("norm")).select(features, keep, grid=GRID)
    assert int(selection.counts.sum()) == per_frame
    assert selection.tokens.shape[0] == features.shape[0] and not selection.merged
    if keep == 16 or (isinstance(keep, float) and keep == 1.0):
        assert bool(selection.keep_mask(16).all())


def test_static_frames_get_the_minimum_and_frame_zero_keeps_the_base_choice():
    features = clip(frames=5, static_from=1)  # frames 1..4 repeat frame 0
    base = get_method("norm")
    method = TemporalSelection(base)
    selection = method.select(features, 0.25, grid=GRID)  # 4 tokens per frame, 20 in all
    counts = selection.counts.tolist()
    assert sum(counts) == 20 and counts[0] == 16 and counts[1:] == [1, 1, 1, 1]
    assert method.last_budgets.tolist() == counts
    # Frame 0 is the base method's own selection at its budget.
    expected = base.select(features[:1], counts[0], grid=GRID).keep_mask(16)[0]
    assert torch.equal(selection.keep_mask(16)[0], expected)


def test_tokens_that_repeat_the_last_kept_token_go_first():
    features = clip(frames=2)
    features[1, :8] = features[0, :8]  # first half of frame 1 repeats frame 0
    method = TemporalSelection(get_method("random"), min_per_frame=0)
    mask = method.select(features, 1.0, grid=GRID).keep_mask(16)
    assert bool(mask.all())
    method.uniform_share = 1.0  # same per-frame budgets as per-frame selection: 8 + 8
    out = method.select(features, 0.5, grid=GRID, generator=torch.Generator().manual_seed(0)).keep_mask(16)
    # Positions frame 0 kept and frame 1 repeats are not kept again; frame 1 picks among the rest.
    repeated = out[0, :8]
    assert not bool((out[1, :8] & repeated).any())


@pytest.mark.parametrize("fusion", ["product", "rank", "novelty"])
def test_fusions_and_padding(fusion):
    features = clip(frames=3)
    padding = torch.zeros(3, 16, dtype=torch.bool)
    padding[:, -4:] = True
    selection = TemporalSelection(get_method("norm"), fusion=fusion).select(features, 0.5, padding_mask=padding, grid=GRID)
    mask = selection.keep_mask(16)
    assert not bool((mask & padding).any()) and int(selection.counts.sum()) == 3 * 6


def test_learned_base_adaptive_mode_and_threshold():
    torch.manual_seed(0)
    selector = TokenSelector(8, TrunkConfig(width=8, depth=1, heads=2)).eval()
    torch.nn.init.normal_(selector.head.weight, std=1.0)
    features = clip(frames=4)
    adaptive = selector.select(features, None, threshold=0.6)
    temporal = TemporalSelection(selector).select(features, None, grid=GRID, threshold=0.6)
    assert int(temporal.counts.sum()) == int(adaptive.counts.sum())
    with pytest.raises(ValueError, match="no adaptive mode"):
        TemporalSelection(get_method("norm")).select(features, None)


def test_deterministic_with_a_seeded_random_base():
    features = clip(frames=4, seed=3)
    method = TemporalSelection(get_method("random"))
    runs = [method.select(features, 0.3, grid=GRID, generator=torch.Generator().manual_seed(7)).indices for _ in range(2)]
    assert torch.equal(runs[0], runs[1])


def test_bad_arguments():
    with pytest.raises(ValueError, match="fusion"):
        TemporalSelection(get_method("norm"), fusion="sum")
    with pytest.raises(ValueError, match="uniform_share"):
        TemporalSelection(get_method("norm"), uniform_share=2.0)
    with pytest.raises(TypeError, match="SelectionMethod"):
        TemporalSelection(object())
    with pytest.raises(ValueError, match="one clip"):
        TemporalSelection(get_method("norm")).select(torch.randn(2, 3, 4, 5), 0.5)


def test_hold_reconstruction_reuses_the_last_kept_token_else_the_frame_mean():
    frames = torch.arange(3 * 4 * 2, dtype=torch.float32).view(3, 4, 2)
    keep = torch.tensor([[True, False, False, False], [False, True, False, False], [False, False, False, False]])
    out = hold_reconstruction(frames, keep)
    assert torch.equal(out[0, 0], frames[0, 0]) and torch.equal(out[0, 2], frames[0, 0])  # frame mean = its one kept token
    assert torch.equal(out[1, 0], frames[0, 0]) and torch.equal(out[1, 1], frames[1, 1])
    assert torch.equal(out[1, 3], frames[1, 1])  # never kept at position 3: frame 1's mean kept token
    assert torch.equal(out[2, 1], frames[1, 1]) and torch.equal(out[2, 3], torch.zeros(2))  # nothing kept in frame 2


def load_benchmark():
    spec = importlib.util.spec_from_file_location("temporal_benchmark", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_benchmark_quick_run_writes_json(tmp_path):
    bench = load_benchmark()
    out = tmp_path / "temporal.json"
    results = bench.run(quick=True, output=out)
    assert json.loads(out.read_text())["rows"] == results["rows"]
    budgets = {row["keep"] for row in results["rows"]}
    assert budgets == {0.1, 0.25, 0.5}
    for row in results["rows"]:
        assert row["kept_per_frame"] == row["kept_temporal"]  # the same total budget
        assert -1.0 <= row["cosine_per_frame"] <= 1.0 and -1.0 <= row["cosine_temporal"] <= 1.0
    assert "| keep |" in bench.markdown(results)
