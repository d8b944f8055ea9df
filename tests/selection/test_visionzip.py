import pytest
import torch

from token_reduction.selection import MissingExtraError, VisionZipSelection
from token_reduction.selection.visionzip import visionzip_groups


def test_dominant_tokens_pass_unchanged_and_context_is_merged(features, attention):
    method = VisionZipSelection(dominant_ratio=0.75)
    selection = method.select(features, 8, extras={"attention": attention})
    assert selection.merged and selection.counts.tolist() == [8, 8, 8]
    for b in range(3):
        dominant = torch.argsort(attention[b], descending=True)[:6]
        for position in dominant.tolist():
            slot = int((selection.indices[b] == position).nonzero())
            assert selection.sizes[b, slot] == 1
            assert torch.equal(selection.tokens[b, slot], features[b, position])
        assert selection.sizes[b].sum() == 36, "all other tokens are merged into 2 contextual tokens"
        assert int((selection.sizes[b] > 1).sum()) <= 2


def test_contextual_tokens_join_their_most_similar_target():
    tokens = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1], [0.1, 0.9], [5.0, 5.0]])
    attention = torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0])
    assignment, reps = visionzip_groups(tokens, attention, 3, dominant_ratio=0.34)
    assert reps.tolist() == [4, 0, 3]  # dominant first, then evenly spaced targets among the rest
    assert assignment.tolist() == [1, 2, 1, 2, 0]


def test_whole_budget_dominant_discards_the_rest(features, attention):
    selection = VisionZipSelection().select(features, 1, extras={"attention": attention})
    assert selection.indices[:, 0].tolist() == attention.argmax(1).tolist()
    assert (selection.assignment >= 0).sum(1).tolist() == [1, 1, 1]


def test_clear_error_without_attention(features):
    with pytest.raises(MissingExtraError, match="--store-attention"):
        VisionZipSelection().select(features, 4, extras={"text": torch.zeros(3, 36)})


def test_bad_ratio():
    with pytest.raises(ValueError, match="dominant_ratio"):
        VisionZipSelection(dominant_ratio=0.0)
