"""TokenSelector: shapes, both inference modes, straight-through gradients, export round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from token_reduction import TokenSelector, TrunkConfig
from token_reduction.models.selector import gumbel_keep_mask, gumbel_topk_mask
from token_reduction.selection.random_selection import random_keep_mask

TRUNK = TrunkConfig(width=16, depth=1, heads=2, mlp_ratio=2.0)


def make_selector(dim: int = 12, **kwargs) -> TokenSelector:
    selector = TokenSelector(dim, TRUNK, grid=(4, 4), **kwargs)
    torch.nn.init.normal_(selector.head.weight, std=1.0)  # non-trivial scores
    return selector.eval()


def test_logits_shape_and_padding_is_never_kept() -> None:
    selector = make_selector()
    features = torch.randn(3, 16, 12)
    padding = torch.zeros(3, 16, dtype=torch.bool)
    padding[1, 12:] = True
    logits = selector(features, padding)
    assert logits.shape == (3, 16)
    assert torch.isneginf(logits[1, 12:]).all()
    selection = selector.select(features, keep=0.5, padding_mask=padding)
    assert selection.counts.tolist() == [8, 6, 8]
    assert not selection.keep_mask(16)[1, 12:].any()


def test_budget_mode_keeps_top_scores_in_original_order() -> None:
    selector = make_selector()
    features = torch.randn(2, 16, 12)
    selection = selector.select(features, keep=5)
    probs = selector.keep_probability(features)
    for b in range(2):
        kept = selection.indices[b].tolist()
        assert kept == sorted(kept)
        assert set(kept) == set(probs[b].topk(5).indices.tolist())
        assert torch.equal(selection.tokens[b], features[b, kept])


def test_adaptive_mode_varies_per_image_and_respects_threshold() -> None:
    selector = make_selector()
    features = torch.randn(4, 16, 12) * torch.tensor([0.1, 1.0, 3.0, 10.0])[:, None, None]
    probs = selector.keep_probability(features)
    selection = selector.select(features, threshold=0.6)
    expected = (probs >= 0.6).sum(dim=1).clamp_min(1)
    assert selection.counts.tolist() == expected.tolist()
    assert selection.valid.sum(dim=1).tolist() == expected.tolist()
    assert selection.tokens.shape == (4, int(expected.max()), 12)
    assert not selection.tokens[~selection.valid].any()  # padding slots are zero


def test_gumbel_mask_is_binary_and_gradients_reach_logits() -> None:
    logits = torch.randn(2, 16, requires_grad=True)
    mask = gumbel_keep_mask(logits, tau=0.5)
    assert torch.allclose(mask.detach(), mask.detach().round())
    (mask * torch.arange(16.0)).sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_gumbel_topk_keeps_exact_budget_with_gradients() -> None:
    logits = torch.randn(3, 16, requires_grad=True)
    budgets = torch.tensor([1, 7, 16])
    mask = gumbel_topk_mask(logits, budgets, tau=0.5)
    assert torch.allclose(mask.detach(), mask.detach().round())  # binary up to float rounding
    assert mask.detach().round().sum(dim=1).tolist() == [1.0, 7.0, 16.0]
    (mask * torch.randn(3, 16)).sum().backward()
    assert logits.grad.abs().sum() > 0


def test_random_keep_mask_is_seeded_and_exact() -> None:
    features = torch.zeros(2, 16, 4)
    a = random_keep_mask(features, 0.25, generator=torch.Generator().manual_seed(3))
    b = random_keep_mask(features, 0.25, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.sum(dim=1).tolist() == [4, 4]


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    selector = make_selector(threshold=0.3)
    selector.standardize.set_statistics(torch.randn(12), torch.rand(12) + 0.5)
    selector.save_pretrained(tmp_path / "sel")
    loaded = TokenSelector.from_pretrained(tmp_path / "sel")
    features = torch.randn(2, 16, 12)
    assert torch.allclose(selector(features), loaded(features))
    assert loaded.threshold == 0.3 and loaded.grid == (4, 4)
    assert not any(p.name.endswith((".pt", ".bin", ".pkl")) for p in (tmp_path / "sel").iterdir())


def test_wrong_feature_dim_is_a_clear_error(tmp_path: Path) -> None:
    selector = make_selector()
    with pytest.raises(ValueError, match="12"):
        selector(torch.randn(1, 16, 10))
    with pytest.raises(FileNotFoundError, match="not an exported TokenSelector"):
        TokenSelector.from_pretrained(tmp_path)


def test_redundancy_fills_budgets_with_distinct_tokens_and_round_trips(tmp_path: Path) -> None:
    selector = make_selector(redundancy=1.0)
    features = torch.randn(1, 16, 12)
    features[0, 1:5] = features[0, 0]  # five copies of one token
    with torch.no_grad():
        logits = selector(features)
    logits_order = logits[0].argsort(descending=True)
    kept = selector.select(features, keep=4).indices[0].tolist()
    copies = [i for i in kept if i < 5]
    assert len(copies) <= 1, (kept, logits_order.tolist())  # identical tokens are never kept twice while distinct ones wait
    loaded = TokenSelector.from_pretrained(selector.save_pretrained(tmp_path / "sel"))
    assert loaded.redundancy == 1.0 and loaded.select(features, keep=4).indices.tolist() == [sorted(kept)]


def test_duplicate_similarity_collapses_a_uniform_image_in_adaptive_mode() -> None:
    selector = make_selector(threshold=0.0, duplicate_similarity=0.99)  # threshold 0: every token passes the score test
    uniform = torch.ones(1, 16, 12) * torch.randn(12)
    varied = torch.randn(1, 16, 12)
    assert int(selector.select(uniform).counts[0]) == 1
    assert int(selector.select(varied).counts[0]) == 16
    assert int(make_selector(threshold=0.0).select(uniform).counts[0]) == 16  # off by default (the paper's rule)
