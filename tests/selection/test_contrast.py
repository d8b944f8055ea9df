import pytest
import torch

from token_reduction.selection import ContrastSelection, get_method
from token_reduction.selection.contrast import contrast_scores, neighbour_distance, pixel_contrast

P = 4


def uniform_patch(rgb: tuple[float, float, float]) -> torch.Tensor:
    return torch.tensor(rgb)[:, None, None].expand(3, P, P).reshape(-1)


def pixel_tokens() -> torch.Tensor:
    """Dark, white, saturated red and mid-grey flat patches, then one textured (checkerboard) patch."""
    flats = [(-1.8, -1.8, -1.5), (1.9, 2.1, 2.1), (1.9, -1.8, -1.5), (0.0, 0.0, 0.0)]
    checker = (torch.arange(P)[:, None] + torch.arange(P)[None, :]) % 2 * 0.4 - 0.2
    textured = (torch.tensor([0.1, 0.2, 0.3])[:, None, None] + checker).reshape(-1)
    return torch.stack([uniform_patch(rgb) for rgb in flats] + [textured])[None]


def test_pixel_contrast_ranks_texture_above_flat_patches_of_any_colour():
    tokens = pixel_tokens()
    scores = pixel_contrast(tokens, P)
    assert torch.allclose(scores[0, :4], torch.zeros(4), atol=1e-6)
    assert scores[0, 4] > 0.1
    selection = ContrastSelection(pixel_patch=P).select(tokens, 1)
    assert selection.indices.tolist() == [[4]]


def test_pixel_contrast_is_the_mean_of_per_channel_stds():
    tokens = torch.randn(2, 3, 3 * P * P, generator=torch.Generator().manual_seed(0))
    expected = tokens.view(2, 3, 3, P * P).std(dim=-1, correction=0).mean(-1)
    assert torch.allclose(pixel_contrast(tokens, P), expected, atol=1e-6)
    with pytest.raises(ValueError, match="3\\*P\\*P"):
        pixel_contrast(tokens, P + 1)


def test_neighbour_mode_ranks_the_odd_one_out_above_a_uniform_field():
    base = torch.randn(8, generator=torch.Generator().manual_seed(0))
    features = base.expand(1, 25, 8).clone()  # 5x5 uniform field
    features[0, 12] = torch.randn(8, generator=torch.Generator().manual_seed(1))  # centre differs
    scores = neighbour_distance(features, (5, 5))
    assert int(scores.argmax()) == 12
    far = [0, 1, 2, 3, 4, 5, 9, 10, 14, 15, 19, 20, 21, 22, 23, 24]  # not touching the centre
    assert torch.allclose(scores[0, far], torch.zeros(len(far)), atol=1e-6)
    assert ContrastSelection().select(features, 1, grid=(5, 5)).indices.tolist() == [[12]]


def test_neighbour_mode_uses_only_existing_and_non_padding_neighbours():
    features = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]]])  # 2x2 grid
    scores = neighbour_distance(features, (2, 2))
    assert torch.allclose(scores[0], torch.tensor([1 / 3, 1.0, 1 / 3, 1 / 3]))
    padding = torch.tensor([[False, True, False, False]])
    assert torch.allclose(neighbour_distance(features, (2, 2), padding)[0, [0, 2, 3]], torch.zeros(3))


def test_grid_is_required_and_checked_in_neighbour_mode(features):
    with pytest.raises(ValueError, match="grid"):
        contrast_scores(features)
    with pytest.raises(ValueError, match="36 tokens"):
        ContrastSelection().select(features, 4, grid=(5, 7))


def test_padding_is_never_kept_even_with_the_highest_contrast():
    tokens = pixel_tokens().expand(2, -1, -1)
    padding = torch.tensor([[False, False, False, False, True], [True, False, False, False, False]])
    selection = ContrastSelection(pixel_patch=P).select(tokens, 2, padding_mask=padding)
    assert not (selection.keep_mask(5) & padding).any() and selection.counts.tolist() == [2, 2]


def test_budget_mode_only_and_argument_checks(features, grid):
    with pytest.raises(ValueError, match="budget"):
        ContrastSelection().select(features, None, grid=grid)
    with pytest.raises(ValueError, match="pixel_patch"):
        ContrastSelection(pixel_patch=0)
    assert get_method("contrast", pixel_patch=P).pixel_patch == P
