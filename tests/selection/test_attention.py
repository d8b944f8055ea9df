import pytest
import torch

from token_reduction.selection import AttentionSelection, MissingExtraError


def test_keeps_the_most_attended_tokens(features):
    attention = torch.zeros(3, 36)
    attention[:, [30, 2, 17]] = torch.tensor([3.0, 2.0, 1.0])
    selection = AttentionSelection().select(features, 2, extras={"attention": attention})
    assert selection.indices.tolist() == [[2, 30]] * 3


def test_padding_with_high_attention_is_not_kept(features, padding):
    attention = padding.float() * 10  # padding is the most "attended"
    selection = AttentionSelection().select(features, 5, padding_mask=padding, extras={"attention": attention})
    assert not (selection.keep_mask(36) & padding).any()


@pytest.mark.parametrize("extras", [None, {}, {"text": torch.zeros(3, 36)}])
def test_clear_error_without_the_attention_extra(features, extras):
    with pytest.raises(MissingExtraError, match="--store-attention"):
        AttentionSelection().select(features, 4, extras=extras)


def test_wrong_shape_of_the_extra_is_an_error(features):
    with pytest.raises(ValueError, match="shape"):
        AttentionSelection().select(features, 4, extras={"attention": torch.zeros(3, 35)})
