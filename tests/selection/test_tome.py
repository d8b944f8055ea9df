import torch

from token_reduction.selection import ToMeSelection
from token_reduction.selection.tome import bipartite_merge_groups


def weighted_mean(selection):
    return (selection.tokens * selection.sizes[..., None]).sum(1) / selection.sizes.sum(1, keepdim=True)


def test_merging_preserves_the_size_weighted_mean_at_every_budget(features, padding):
    for keep in (1, 2, 5, 17, 0.1, 0.5):
        selection = ToMeSelection().select(features, keep, padding_mask=padding)
        real = (~padding).float()
        mean = (features * real[..., None]).sum(1) / real.sum(1, keepdim=True)
        assert torch.allclose(weighted_mean(selection), mean, atol=1e-5)
        assert torch.equal(selection.sizes.sum(1), real.sum(1)), "every real token is merged somewhere"


def test_reduces_to_the_budget_and_each_token_is_its_groups_mean(features):
    selection = ToMeSelection().select(features, 6)
    assert selection.merged and selection.counts.tolist() == [6, 6, 6]
    for b in range(3):
        for slot in range(6):
            members = selection.assignment[b] == slot
            assert torch.allclose(selection.tokens[b, slot], features[b, members].mean(0), atol=1e-6)
            assert members[selection.indices[b, slot]], "the representative is a member of its group"


def test_identical_neighbours_merge_first():
    base = torch.randn(4, 8, generator=torch.Generator().manual_seed(0))
    tokens = base.repeat_interleave(2, dim=0)  # pairs (0,1), (2,3), ... are identical: A/B partners
    assignment, reps = bipartite_merge_groups(tokens, 4)
    assert assignment.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert reps.tolist() == [1, 3, 5, 7]  # the B (destination) token represents its group


def test_full_budget_is_the_identity(features):
    selection = ToMeSelection().select(features, 1.0)
    assert torch.allclose(selection.tokens, features)
    assert selection.indices[0].tolist() == list(range(36))
