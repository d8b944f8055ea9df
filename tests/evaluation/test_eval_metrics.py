import math

import torch

from token_reduction.evaluation.metrics import (
    MetricAccumulator,
    pooled_cosine,
    reconstruction_scores,
    text_recall,
)
from token_reduction.selection import RandomSelection, ToMeSelection, selection_from_mask


def test_keeping_everything_is_perfect_and_has_no_dropped_tokens():
    features = torch.randn(2, 9, 4)
    selection = selection_from_mask(features, torch.ones(2, 9, dtype=torch.bool))
    assert torch.allclose(pooled_cosine(features, selection), torch.ones(2))
    coverage = torch.zeros(2, 9)
    coverage[:, 3] = 0.5
    assert text_recall(selection.keep_mask(9), coverage).tolist() == [1.0, 1.0]
    scores = reconstruction_scores(features, features, selection.keep_mask(9))
    assert torch.allclose(scores["recon_cosine"], torch.ones(2)) and scores["recon_mse"].abs().max() < 1e-7
    assert torch.isnan(scores["recon_cosine_dropped"]).all() and torch.isnan(scores["recon_mse_dropped"]).all()


def test_reconstruction_scores_split_all_and_dropped_tokens():
    target = torch.ones(1, 4, 2)
    prediction = torch.tensor([[[1.0, 1.0], [1.0, 1.0], [-1.0, -1.0], [3.0, 3.0]]])
    keep = torch.tensor([[True, True, False, False]])
    scores = reconstruction_scores(prediction, target, keep)
    assert scores["recon_mse"].item() == 2.0  # (0 + 0 + 4 + 4) / 4
    assert scores["recon_mse_dropped"].item() == 4.0
    assert math.isclose(scores["recon_cosine"].item(), 0.5, abs_tol=1e-6)  # (1 + 1 - 1 + 1) / 4
    assert math.isclose(scores["recon_cosine_dropped"].item(), 0.0, abs_tol=1e-6)
    padding = torch.tensor([[False, False, False, True]])
    assert scores["recon_mse"].item() != reconstruction_scores(prediction, target, keep, padding)["recon_mse"].item()


def test_text_recall_counts_only_patches_above_the_threshold():
    coverage = torch.tensor([[0.3, 0.1, 1.0, 0.25], [0.0, 0.2, 0.0, 0.0]])
    keep = torch.tensor([[True, True, False, False], [True, True, True, True]])
    recall = text_recall(keep, coverage)
    assert math.isclose(recall[0].item(), 1 / 3, rel_tol=1e-6)
    assert torch.isnan(recall[1]), "images without text patches are undefined, not perfect"


def test_random_selection_recalls_about_its_keep_fraction():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(400, 64, 4, generator=generator)
    coverage = (torch.rand(400, 64, generator=generator) < 0.2).float()
    for fraction in (0.25, 0.5):
        selection = RandomSelection(seed=1).select(features, fraction)
        accumulator = MetricAccumulator(("text_recall",))
        accumulator.update("text_recall", text_recall(selection.keep_mask(64), coverage))
        assert abs(accumulator.compute()["text_recall"] - fraction) < 0.02


def test_size_weighted_pooled_cosine_of_tome_is_one():
    features = torch.randn(3, 16, 8, generator=torch.Generator().manual_seed(2)) + 1.0
    for keep in (2, 0.25, 0.5):
        assert torch.allclose(pooled_cosine(features, ToMeSelection().select(features, keep)), torch.ones(3), atol=1e-5)


def test_pooled_cosine_ignores_padding():
    features = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [100.0, -100.0]]])
    padding = torch.tensor([[False, False, True]])
    selection = selection_from_mask(features, torch.tensor([[True, False, False]]))
    assert math.isclose(pooled_cosine(features, selection, padding).item(), 2**-0.5, rel_tol=1e-6)


def test_keep_mask_is_not_overwritten_by_padding_slots():
    features = torch.randn(2, 4, 2)
    keep = torch.tensor([[True, False, False, False], [True, True, True, False]])
    assert torch.equal(selection_from_mask(features, keep).keep_mask(4), keep)


def test_accumulator_skips_undefined_values_and_weights_batches():
    accumulator = MetricAccumulator(("text_recall", "time_ms"))
    accumulator.update("text_recall", torch.tensor([1.0, float("nan"), 0.0]))
    accumulator.update("time_ms", torch.tensor([2.0]), weight=3.0)
    accumulator.update("time_ms", torch.tensor([6.0]), weight=1.0)
    assert accumulator.compute() == {"text_recall": 0.5, "time_ms": 3.0}
    assert accumulator.counts() == {"text_recall": 2, "time_ms": 4}
    assert MetricAccumulator(("text_recall",)).compute() == {"text_recall": None}
