import torch

from token_reduction.selection import FeatureNormSelection


def test_keeps_the_largest_norms_in_original_order():
    scale = torch.tensor([1.0, 5.0, 2.0, 9.0, 3.0, 7.0])
    features = torch.ones(1, 6, 4) * scale[None, :, None]
    selection = FeatureNormSelection().select(features, 3)
    assert selection.indices[0].tolist() == [1, 3, 5]
    assert torch.equal(selection.tokens[0], features[0, [1, 3, 5]])


def test_smallest_when_asked():
    features = torch.arange(1.0, 7.0)[None, :, None].expand(1, 6, 2)
    assert FeatureNormSelection(largest=False).select(features, 2).indices[0].tolist() == [0, 1]


def test_padding_is_never_kept_even_with_the_largest_norm():
    features = torch.ones(1, 5, 2)
    features[0, 4] = 100.0
    padding = torch.tensor([[False, False, False, False, True]])
    selection = FeatureNormSelection().select(features, 1.0, padding_mask=padding)
    assert selection.indices[0].tolist() == [0, 1, 2, 3]
