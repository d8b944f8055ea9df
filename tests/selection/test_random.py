import pytest
import torch

from token_reduction.selection import RandomSelection


def test_same_generator_seed_same_mask_and_other_seed_differs(features, padding):
    method = RandomSelection()
    first = method.select(features, 10, padding_mask=padding, generator=torch.Generator().manual_seed(1))
    again = method.select(features, 10, padding_mask=padding, generator=torch.Generator().manual_seed(1))
    other = method.select(features, 10, padding_mask=padding, generator=torch.Generator().manual_seed(2))
    assert torch.equal(first.indices, again.indices)
    assert not torch.equal(first.indices, other.indices)


def test_instance_seed_makes_call_sequences_repeatable(features):
    a, b = RandomSelection(seed=4), RandomSelection(seed=4)
    calls_a = [a.select(features, 0.25).indices for _ in range(3)]
    calls_b = [b.select(features, 0.25).indices for _ in range(3)]
    assert all(torch.equal(x, y) for x, y in zip(calls_a, calls_b))
    assert not torch.equal(calls_a[0], calls_a[1]), "successive calls should draw fresh masks"


def test_every_position_is_equally_likely():
    features = torch.zeros(2000, 10, 1)
    selection = RandomSelection(seed=0).select(features, 3)
    frequency = selection.keep_mask(10).float().mean(0)
    assert torch.allclose(frequency, torch.full((10,), 0.3), atol=0.04)


def test_requires_a_budget(features):
    with pytest.raises(ValueError, match="budget"):
        RandomSelection().select(features, None)
