"""Every registered method honours the protocol: shapes, exact budgets with padding, order, determinism."""

from __future__ import annotations

import pytest
import torch

from token_reduction.models.backbone import TrunkConfig
from token_reduction.models.selector import TokenSelector
from token_reduction.selection import SelectionMethod, available_methods, budgets_per_image, get_method, valid_counts

GRID = (6, 6)


def build(name: str, tmp_path) -> SelectionMethod:
    if name == "learned":
        torch.manual_seed(0)
        selector = TokenSelector(8, TrunkConfig(width=8, depth=1, heads=2), grid=GRID)
        torch.nn.init.normal_(selector.head.weight, std=1.0)  # non-constant scores
        return get_method("learned", selector=selector.save_pretrained(tmp_path / "selector"))
    return get_method(name)


@pytest.mark.parametrize("name", available_methods())
@pytest.mark.parametrize("keep", [1, 7, 36, 100, 0.1, 0.5, 1.0])
def test_budgets_shapes_and_order(name, keep, features, padding, attention, check_contract, tmp_path):
    method = build(name, tmp_path)
    assert isinstance(method, SelectionMethod)
    extras = {"attention": attention}
    for mask in (None, padding):
        selection = method.select(features, keep, padding_mask=mask, extras=extras, grid=GRID, generator=torch.Generator().manual_seed(3))
        expected = budgets_per_image(keep, valid_counts(features, mask))
        check_contract(selection, features, mask, expected)


@pytest.mark.parametrize("name", available_methods())
def test_deterministic_given_a_seed(name, features, padding, attention, tmp_path):
    method = build(name, tmp_path)
    runs = [
        method.select(features, 0.3, padding_mask=padding, extras={"attention": attention}, grid=GRID, generator=torch.Generator().manual_seed(5))
        for _ in range(2)
    ]
    assert torch.equal(runs[0].indices, runs[1].indices)
    assert torch.equal(runs[0].tokens, runs[1].tokens)


def test_fractions_apply_to_each_images_valid_count(features, padding):
    selection = get_method("norm").select(features, 0.5, padding_mask=padding)
    assert selection.counts.tolist() == [18, 13, 14]  # 36, 26 and 27 valid tokens


def test_keep_mask_is_not_overwritten_by_padding_slots():
    features = torch.randn(2, 4, 2)
    keep = torch.tensor([[True, False, False, False], [True, True, True, False]])
    from token_reduction.selection import selection_from_mask

    selection = selection_from_mask(features, keep)  # image 0 has two padding slots with index 0
    assert torch.equal(selection.keep_mask(4), keep)
