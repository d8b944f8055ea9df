"""Shared inputs and the contract every selection method must satisfy."""

from __future__ import annotations

from typing import Callable

import pytest
import torch

from token_reduction.selection.base import TokenSelection

GRID = (6, 6)


@pytest.fixture
def grid() -> tuple[int, int]:
    return GRID


@pytest.fixture
def features() -> torch.Tensor:
    """``(3, 36, 8)`` seeded features on a 6x6 grid."""
    return torch.randn(3, 36, 8, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def padding() -> torch.Tensor:
    """Image 0 unpadded, image 1 padded at the end, image 2 padded in scattered places."""
    mask = torch.zeros(3, 36, dtype=torch.bool)
    mask[1, 26:] = True
    mask[2, ::4] = True
    return mask


@pytest.fixture
def attention() -> torch.Tensor:
    return torch.rand(3, 36, generator=torch.Generator().manual_seed(1))


@pytest.fixture
def check_contract() -> Callable[..., None]:
    """Assert the :class:`TokenSelection` invariants for ``selection`` of ``features``."""

    def check(selection: TokenSelection, features: torch.Tensor, padding_mask: torch.Tensor | None, expected: torch.Tensor) -> None:
        batch, num_tokens, dim = features.shape
        width = selection.tokens.shape[1]
        assert selection.tokens.shape == (batch, width, dim)
        assert selection.indices.shape == selection.valid.shape == (batch, width)
        assert selection.indices.dtype == torch.long
        assert torch.equal(selection.counts, expected)
        assert width == max(int(expected.max()), 1)
        assert torch.equal(selection.valid.sum(1), expected)
        keep = selection.keep_mask(num_tokens)
        assert torch.equal(keep.sum(1), expected), "representative positions must be distinct"
        if padding_mask is not None:
            assert not (keep & padding_mask).any(), "padding was kept"
        for b in range(batch):
            k = int(expected[b])
            assert selection.valid[b, :k].all() and not selection.valid[b, k:].any()
            idx = selection.indices[b, :k]
            assert (idx[1:] > idx[:-1]).all(), "indices must ascend"
            if not selection.merged:
                assert torch.equal(selection.tokens[b, :k], features[b, idx])

    return check
