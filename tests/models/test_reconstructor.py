"""The shared mask embedding and the reconstructor."""

from __future__ import annotations

import torch

from token_reduction.models import FeatureReconstructor, MaskedSequence, TrunkConfig


def test_mask_embedding_replaces_dropped_tokens_only() -> None:
    masked = MaskedSequence(8)
    features = torch.randn(2, 6, 8)
    keep = torch.tensor([[1, 0, 1, 0, 1, 1], [0, 0, 0, 0, 0, 1]], dtype=torch.float32)
    out = masked(features, keep)
    assert torch.equal(out[keep.bool()], features[keep.bool()])
    assert torch.allclose(out[~keep.bool()], masked.embedding.expand(int((keep == 0).sum()), 8))


def test_mask_embedding_is_one_shared_vector_that_learns() -> None:
    masked = MaskedSequence(8)
    assert [p.shape for p in masked.parameters()] == [torch.Size([8])]
    out = masked(torch.randn(1, 4, 8), torch.tensor([[1.0, 0.0, 0.0, 1.0]]))
    out.sum().backward()
    assert masked.embedding.grad is not None and masked.embedding.grad.abs().sum() > 0


def test_reconstructor_predicts_every_token() -> None:
    model = FeatureReconstructor(8, TrunkConfig(width=16, depth=1, heads=2))
    assert model(torch.randn(3, 9, 8), grid=(3, 3)).shape == (3, 9, 8)
