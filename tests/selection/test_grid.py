import pytest
import torch

from token_reduction.selection import GridSelection, get_method
from token_reduction.selection.grid import grid_keep_mask, hilbert_order


@pytest.mark.parametrize("rows,cols", [(14, 14), (5, 7), (1, 9), (7, 4), (6, 9)])
def test_curve_is_a_permutation_of_the_grid(rows, cols):
    order = hilbert_order(rows, cols)
    assert sorted(order.tolist()) == list(range(rows * cols))
    steps = [(abs(a // cols - b // cols), abs(a % cols - b % cols)) for a, b in zip(order[:-1].tolist(), order[1:].tolist())]
    assert all(max(step) == 1 for step in steps), "consecutive cells on the curve touch"


@pytest.mark.parametrize("rows,cols", [(14, 14), (5, 7), (1, 9)])
def test_every_budget_is_exact(rows, cols):
    num_tokens = rows * cols
    budgets = torch.arange(1, num_tokens + 1)
    masks = grid_keep_mask(budgets, (rows, cols))
    assert torch.equal(masks.sum(1), budgets)
    features = torch.randn(1, num_tokens, 2, generator=torch.Generator().manual_seed(0))
    for k in (1, num_tokens // 2, num_tokens):
        assert GridSelection().select(features, k, grid=(rows, cols)).counts.tolist() == [k]


def test_spread_over_the_image():
    rows = cols = 14
    mask = grid_keep_mask(torch.tensor([49]), (rows, cols))[0].view(rows, cols)  # 25%
    for quadrant in (mask[:7, :7], mask[:7, 7:], mask[7:, :7], mask[7:, 7:]):
        assert 9 <= int(quadrant.sum()) <= 16
    kept = mask.nonzero().float()
    cells = torch.stack(torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij"), -1).view(-1, 2).float()
    gap = torch.cdist(cells, kept).min(dim=1).values.max()
    assert gap <= 2.3, "every token is close to a kept one"
    assert grid_keep_mask(torch.tensor([1]), (rows, cols))[0].view(rows, cols)[6, 6], "k=1 keeps the centre"
    four = grid_keep_mask(torch.tensor([4]), (rows, cols))[0].view(rows, cols).nonzero().tolist()
    assert four == [[3, 3], [3, 10], [10, 3], [10, 10]], "k=4 keeps the quadrant centres"


def test_without_a_grid_tokens_form_one_row():
    features = torch.zeros(1, 12, 2)
    assert GridSelection().select(features, 3).indices.tolist() == [[1, 5, 9]]
    with pytest.raises(ValueError, match="12 tokens"):
        GridSelection().select(features, 3, grid=(3, 5))


def test_padding_is_never_kept_and_budgets_follow_the_valid_count(features, padding, grid):
    selection = GridSelection().select(features, 0.25, padding_mask=padding, grid=grid)
    assert not (selection.keep_mask(36) & padding).any()
    assert selection.counts.tolist() == [9, 6, 7]  # 36, 26 and 27 valid tokens
    full = GridSelection().select(features, 1.0, padding_mask=padding, grid=grid)
    assert torch.equal(full.keep_mask(36), ~padding)


def test_deterministic_and_feature_blind(features, grid):
    first = GridSelection().select(features, 10, grid=grid).indices
    assert torch.equal(first, GridSelection().select(features.flip(0) * 3, 10, grid=grid).indices)
    assert torch.equal(first[0], first[1])


def test_budget_mode_only(features, grid):
    with pytest.raises(ValueError, match="budget"):
        get_method("grid").select(features, None, grid=grid)
