import pytest
import torch

from token_reduction.selection import PoolingSelection
from token_reduction.selection.pooling import ceil_grid, exact_grid, pooling_plan


def test_grid_choice():
    assert exact_grid(144, 24, 24) == (12, 12)
    assert exact_grid(72, 24, 24) in {(8, 9), (9, 8)}
    assert exact_grid(23, 24, 24) is None  # only 1x23 would do: too elongated
    assert exact_grid(6, 1, 10) == (1, 6)
    assert exact_grid(3, 1, 10) is None and ceil_grid(3, 1, 10) == (1, 3)  # a strip stays a strip
    r, c = ceil_grid(23, 24, 24)
    assert r * c >= 23 and r <= 24 and c <= 24 and abs(r - c) <= 1


@pytest.mark.parametrize("rows,cols", [(6, 6), (5, 7), (1, 9), (4, 3)])
def test_every_budget_is_exact_and_cells_partition_the_grid(rows, cols):
    for budget in range(1, rows * cols + 1):
        slots, reps = pooling_plan(budget, rows, cols)
        assert reps.numel() == budget and (reps[1:] > reps[:-1]).all()
        assert torch.equal(slots[reps], torch.arange(budget)), "each centre belongs to its own cell"
        used = slots[slots >= 0]
        assert set(used.tolist()) == set(range(budget))


def test_average_pooling_of_a_known_grid():
    values = torch.arange(16.0).reshape(1, 16, 1)  # 4x4 raster
    selection = PoolingSelection().select(values, 4, grid=(4, 4))
    assert selection.merged
    assert selection.tokens[0, :, 0].tolist() == [2.5, 4.5, 10.5, 12.5]
    assert selection.indices[0].tolist() == [0, 2, 8, 10]  # (lower-middle) centre of each 2x2 cell
    assert selection.sizes[0].tolist() == [4.0, 4.0, 4.0, 4.0]


def test_exact_grid_preserves_the_size_weighted_mean(features, grid):
    selection = PoolingSelection().select(features, 9, grid=grid)
    pooled = (selection.tokens * selection.sizes[..., None]).sum(1) / selection.sizes.sum(1, keepdim=True)
    assert torch.allclose(pooled, features.mean(1), atol=1e-6)


def test_ceil_grid_drops_whole_cells_and_keeps_the_budget(features, grid):
    selection = PoolingSelection().select(features, 7, grid=grid)  # 7 is prime: no 2-D exact grid
    assert selection.counts.tolist() == [7, 7, 7]
    assert (selection.assignment == -1).any()
    kept_sizes = selection.sizes.sum(1)
    assert torch.equal(kept_sizes, (selection.assignment >= 0).sum(1).float())


def test_subsample_mode_keeps_cell_centres_unchanged(features, grid):
    average = PoolingSelection().select(features, 4, grid=grid)
    subsample = PoolingSelection(mode="subsample").select(features, 4, grid=grid)
    assert not subsample.merged
    assert torch.equal(subsample.indices, average.indices)
    assert torch.equal(subsample.tokens, features[torch.arange(3)[:, None], subsample.indices])


def test_padded_images_pool_their_valid_tokens_as_a_sequence(features, padding, grid):
    selection = PoolingSelection().select(features, 5, padding_mask=padding, grid=grid)
    assert selection.counts.tolist() == [5, 5, 5]
    assert not (selection.keep_mask(36) & padding).any()
    used = selection.assignment[1:] >= 0  # images 1 and 2 do not fill the 6x6 grid
    assert torch.equal(used, ~padding[1:]), "1-D pooling of n tokens to k cells uses every token"


def test_bad_arguments():
    with pytest.raises(ValueError, match="mode"):
        PoolingSelection(mode="max")
    with pytest.raises(ValueError, match="budget"):
        PoolingSelection().select(torch.zeros(1, 4, 2), None)
