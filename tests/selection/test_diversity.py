import pytest
import torch

from token_reduction.selection import DiversitySelection, diverse_top_k_mask, duplicate_suppression_mask, get_method
from token_reduction.selection.base import top_k_mask
from token_reduction.selection.contrast import contrast_scores
from token_reduction.selection.diversity import rank_importance


def duplicated_tokens() -> tuple[torch.Tensor, torch.Tensor]:
    """4 distinct directions; token 0 appears 4 times and carries the highest scores."""
    distinct = torch.eye(6)[:4] + 0.1
    features = torch.stack([distinct[0]] * 4 + [distinct[1], distinct[2], distinct[3]])[None]
    scores = torch.tensor([[9.0, 8.0, 7.0, 6.0, 1.0, 2.0, 3.0]])
    return features, scores


def test_rank_importance_is_positive_scale_free_and_tie_aware():
    scores = torch.tensor([[5.0, 100.0, 5.0, -3.0]])
    weight = rank_importance(scores)
    assert torch.allclose(weight, torch.tensor([[0.75, 1.0, 0.75, 0.25]]))
    assert torch.equal(rank_importance(scores * 1000 + 7), weight)
    padding = torch.tensor([[False, True, False, False]])
    assert torch.allclose(rank_importance(scores, padding), torch.tensor([[1.0, 0.0, 1.0, 1 / 3]]))


def test_never_keeps_two_identical_tokens_while_a_distinct_one_is_left_out():
    features, scores = duplicated_tokens()
    for budget in range(1, 8):
        mask = diverse_top_k_mask(features, scores, torch.tensor([budget]))[0]
        assert int(mask.sum()) == budget
        copies = int(mask[:4].sum())
        distinct_left = int((~mask[4:]).sum())
        assert copies <= 1 or distinct_left == 0
    assert diverse_top_k_mask(features, scores, torch.tensor([4]))[0].tolist() == [True, False, False, False, True, True, True]


def test_redundancy_zero_is_plain_top_k():
    features = torch.randn(3, 20, 5, generator=torch.Generator().manual_seed(0))
    scores = torch.randn(3, 20, generator=torch.Generator().manual_seed(1))
    budgets = torch.tensor([1, 6, 20])
    assert torch.equal(diverse_top_k_mask(features, scores, budgets, redundancy=0.0), top_k_mask(scores, budgets))


def test_uniform_image_keeps_exactly_the_budget(grid):
    features = torch.ones(2, 36, 8)
    for keep in (1, 5, 17, 36):
        selection = DiversitySelection().select(features, keep, grid=grid)
        assert selection.counts.tolist() == [keep, keep]


def test_per_image_budgets_and_padding(features, padding):
    scores = padding.float() * 10  # padding has the best scores
    budgets = torch.tensor([3, 26, 5])
    mask = diverse_top_k_mask(features, scores, budgets, padding)
    assert mask.sum(1).tolist() == [3, 26, 5] and not (mask & padding).any()
    capped = diverse_top_k_mask(features, scores, torch.tensor([40, 40, 40]), padding)
    assert torch.equal(capped, ~padding), "budgets are capped at the valid count"


def test_duplicate_suppression_collapses_a_uniform_image_to_one_token():
    features = torch.randn(1, 1, 8, generator=torch.Generator().manual_seed(0)).expand(2, 16, 8) * torch.tensor([1.0, 3.0])[:, None, None]
    keep = torch.ones(2, 16, dtype=torch.bool)
    keep[1, :5] = False
    scores = torch.rand(2, 16, generator=torch.Generator().manual_seed(1))
    out = duplicate_suppression_mask(features, keep, scores, similarity=0.95)
    assert out.sum(1).tolist() == [1, 1]
    assert int(out[1].nonzero()) == int(scores[1].masked_fill(~keep[1], -1).argmax()), "the best kept token survives"


def test_duplicate_suppression_leaves_distinct_tokens_alone():
    features, scores = duplicated_tokens()
    keep = torch.ones(1, 7, dtype=torch.bool)
    out = duplicate_suppression_mask(features, keep, scores, similarity=0.99)
    assert out[0].tolist() == [True, False, False, False, True, True, True]
    orthogonal = torch.eye(5)[None]
    assert torch.equal(duplicate_suppression_mask(orthogonal, keep[:, :5], torch.zeros(1, 5), similarity=0.5), keep[:, :5])
    partial = torch.tensor([[False, True, False, True, True, False, True]])
    assert duplicate_suppression_mask(features, partial, scores, 1.0)[0].tolist() == [False, True, False, False, True, False, True]
    with pytest.raises(ValueError, match="similarity"):
        duplicate_suppression_mask(features, keep, scores, 1.5)


def test_diversity_selection_uses_contrast_importance_and_covers_distinct_content():
    P = 2
    flat = torch.zeros(12)
    textured = torch.tensor([1.0, -1.0, -1.0, 1.0] * 3)
    other = torch.tensor([2.0, 0.0, 0.0, -2.0, 1.0, 1.0, -1.0, -1.0, 0.5, -0.5, 0.5, -0.5])
    tokens = torch.stack([textured, textured, textured, flat + 1.0, other])[None]  # the best token three times
    scores = contrast_scores(tokens, pixel_patch=P)
    assert torch.equal(top_k_mask(scores, torch.tensor([2]))[0, :3], torch.tensor([True, True, False]))
    selection = DiversitySelection(pixel_patch=P).select(tokens, 2)
    assert selection.indices.tolist() == [[0, 4]]


def test_budget_mode_only_and_argument_checks(features, grid):
    with pytest.raises(ValueError, match="budget"):
        DiversitySelection().select(features, None, grid=grid)
    with pytest.raises(ValueError, match="redundancy"):
        DiversitySelection(redundancy=-1.0)
    with pytest.raises(ValueError, match="grid"):
        DiversitySelection().select(features, 4)
    method = get_method("diversity", pixel_patch=2, redundancy=2.0)
    assert (method.pixel_patch, method.redundancy) == (2, 2.0)
