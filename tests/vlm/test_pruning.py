"""Pruning the visual context of tiny LLaVA-NeXT / LLaVA-OneVision models."""

from __future__ import annotations

import pytest
import torch
from vlm.builders import KeepFirst

from token_reduction.vlm import prune_visual_tokens
from token_reduction.vlm.llava_onevision import masked_bilinear
from token_reduction.models.backbone import TrunkConfig
from token_reduction.models.selector import TokenSelector
from token_reduction.selection.base import TokenSelection, selection_from_mask

PROMPTS = ["user : <image> what is in the image ?", "user : <image> describe it"]


class FixedCounts:
    """An adaptive method (``keep=None``) keeping the first ``counts[i]`` valid tokens of crop ``i``.

    ``None`` keeps every valid token. Crops are numbered in the order the wrapper stacks them.
    """

    name = "fixed_counts"

    def __init__(self, counts: list[int | None]) -> None:
        self.counts = counts

    def select(self, features, keep=None, *, padding_mask=None, extras=None, grid=None, generator=None) -> TokenSelection:
        assert keep is None, "FixedCounts is adaptive only"
        assert features.shape[0] == len(self.counts), f"expected {len(self.counts)} crops, got {features.shape[0]}"
        valid = torch.ones(features.shape[:2], dtype=torch.bool) if padding_mask is None else ~padding_mask
        limit = torch.tensor([features.shape[1] if c is None else c for c in self.counts])
        return selection_from_mask(features, valid & (valid.long().cumsum(dim=1) <= limit[:, None]))


class MergeAll:
    """A merging method: every crop becomes one token, the mean of its valid tokens, at position 0."""

    name = "merge_all"

    def select(self, features, keep=None, *, padding_mask=None, extras=None, grid=None, generator=None) -> TokenSelection:
        valid = torch.ones(features.shape[:2], dtype=torch.bool) if padding_mask is None else ~padding_mask
        weights = valid[..., None].to(features.dtype)
        mean = (features * weights).sum(dim=1, keepdim=True) / weights.sum(dim=1, keepdim=True)
        first = valid.long().argmax(dim=1, keepdim=True)
        ones = torch.ones_like(first, dtype=torch.bool)
        return TokenSelection(tokens=mean, indices=first, valid=ones, counts=ones.sum(dim=1), merged=True)


def bundle_for(family: str, request: pytest.FixtureRequest):
    return request.getfixturevalue("next_bundle" if family == "next" else "onevision_bundle")


def positions_from_mask(mask: torch.Tensor) -> torch.Tensor:
    return (mask.long().cumsum(dim=1) - 1).masked_fill(mask == 0, 0)


@pytest.mark.parametrize("family", ["next", "onevision"])
def test_keep_all_reproduces_the_unpatched_forward(family, request, images, make_selector):
    bundle = bundle_for(family, request)
    inputs = bundle.inputs(images, PROMPTS)
    inputs["position_ids"] = positions_from_mask(inputs["attention_mask"])
    pruned = prune_visual_tokens(bundle.model, make_selector(), keep=1.0)
    with torch.no_grad():
        expected = bundle.model(**inputs).logits
        actual = pruned(**inputs).logits
    assert pruned.last.tokens_after == pruned.last.tokens_before
    assert torch.equal(pruned.last.input_ids, inputs["input_ids"])
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["next", "onevision"])
def test_keep_all_generates_the_same_ids(family, request, images):
    bundle = bundle_for(family, request)
    inputs = bundle.inputs(images, PROMPTS)
    pruned = prune_visual_tokens(bundle.model, KeepFirst(), keep=1.0)
    expected = bundle.model.generate(**inputs, max_new_tokens=5, do_sample=False)
    actual = pruned.generate(**inputs, max_new_tokens=5, do_sample=False)
    assert torch.equal(actual, expected)


@pytest.mark.parametrize("family", ["next", "onevision"])
def test_pruned_generation_runs_on_a_shorter_prompt(family, request, images, make_selector):
    bundle = bundle_for(family, request)
    inputs = bundle.inputs(images, PROMPTS)
    pruned = prune_visual_tokens(bundle.model, make_selector(), keep=0.5)
    out = pruned.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    prompt = pruned.last.input_ids
    assert out.shape == (2, prompt.shape[1] + 4)
    assert torch.equal(out[:, : prompt.shape[1]], prompt)
    for before, after in zip(pruned.last.tokens_before, pruned.last.tokens_after):
        assert 0 < after < before
    assert prompt.shape[1] < inputs["input_ids"].shape[1]


def crops_per_image(pruned, inputs) -> list[int]:
    family = {"batch_num_images": inputs["batch_num_images"]} if "batch_num_images" in inputs else {}
    return [layout.num_crops for layout in pruned.layouts(inputs["image_sizes"], **family)]


@pytest.mark.parametrize("family", ["next", "onevision"])
def test_batch_with_different_kept_counts_shrinks_each_row_by_its_dropped_tokens(family, request, images):
    bundle = bundle_for(family, request)
    inputs = bundle.inputs(images, PROMPTS)
    probe = prune_visual_tokens(bundle.model, KeepFirst(), keep=1.0)
    first, second = crops_per_image(probe, inputs)
    # Adaptive: image 0 keeps everything, image 1 keeps 3 base tokens and no tile token.
    pruned = prune_visual_tokens(bundle.model, FixedCounts([None] * first + [3] + [0] * (second - 1)))
    prepared = pruned.prepare(**inputs)
    before, after = prepared.tokens_before, prepared.tokens_after
    assert after == [before[0], 3]

    old_lengths = inputs["attention_mask"].sum(dim=1)
    new_lengths = prepared.attention_mask.sum(dim=1)
    assert new_lengths.tolist() == (old_lengths - torch.tensor(before) + torch.tensor(after)).tolist()
    image_id = bundle.model.config.image_token_id
    assert (prepared.input_ids == image_id).sum(dim=1).tolist() == after
    assert prepared.input_ids.shape[1] == int(new_lengths.max())
    # Left padding (the tokenizer's side) is kept, and the text around the image is untouched.
    assert bool(prepared.attention_mask[:, -1].all())
    for row in range(2):
        old = inputs["input_ids"][row][inputs["attention_mask"][row].bool()]
        new = prepared.input_ids[row][prepared.attention_mask[row].bool()]
        assert torch.equal(old[old != image_id], new[new != image_id])
    assert torch.equal(prepared.position_ids, positions_from_mask(prepared.attention_mask))

    with torch.no_grad():
        logits = pruned(**inputs).logits
    assert logits.shape[:2] == prepared.input_ids.shape
    out = pruned.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert out.shape == (2, prepared.input_ids.shape[1] + 3)


def test_adaptive_threshold_is_set_per_call(next_bundle, images, make_selector):
    inputs = next_bundle.inputs(images[:1], PROMPTS[:1])
    pruned = prune_visual_tokens(next_bundle.model, make_selector(), threshold=0.5)
    with torch.no_grad():
        expected = next_bundle.model(**inputs).logits
        everything = pruned(**inputs, threshold=0.0).logits  # every keep probability is >= 0
    torch.testing.assert_close(everything, expected, rtol=1e-5, atol=1e-5)
    counts = [pruned.prepare(**inputs, threshold=t).tokens_after[0] for t in (0.0, 0.3, 0.6, 1.0)]
    assert counts == sorted(counts, reverse=True) and counts[0] > counts[-1]
    assert pruned.threshold == 0.5  # per-call values do not stick
    assert pruned.prepare(**inputs).tokens_after[0] == pruned.prepare(**inputs, threshold=0.5).tokens_after[0]


def test_selector_for_another_feature_dim_is_rejected_with_both_dims(next_bundle):
    with pytest.raises(ValueError, match=r"48-dim.*32-dim"):
        prune_visual_tokens(next_bundle.model, TokenSelector(48, TrunkConfig(width=16, depth=1, heads=2)))


def test_baseline_like_method_keeps_the_tokens_it_chose(next_bundle, images):
    inputs = next_bundle.inputs(images[:1], PROMPTS[:1])
    pruned = prune_visual_tokens(next_bundle.model, KeepFirst(), keep=2)
    prepared = pruned.prepare(**inputs)
    with torch.no_grad():
        features = pruned.vision_features(inputs["pixel_values"], crops_per_image(pruned, inputs))
        expected = next_bundle.model.model.multi_modal_projector(features[0, :2])
    torch.testing.assert_close(prepared.images[0].features[:2], expected)
    assert prepared.tokens_after[0] < prepared.tokens_before[0]
    out = pruned.generate(**inputs, max_new_tokens=2, do_sample=False)
    assert out.shape[1] <= prepared.input_ids.shape[1] + 2


def test_merging_method_feeds_merged_tokens(next_bundle, images):
    inputs = next_bundle.inputs(images[:1], PROMPTS[:1])
    pruned = prune_visual_tokens(next_bundle.model, MergeAll(), keep=1)
    prepared = pruned.prepare(**inputs)
    with torch.no_grad():
        features = pruned.vision_features(inputs["pixel_values"], crops_per_image(pruned, inputs))
        expected = next_bundle.model.model.multi_modal_projector(features[0].mean(dim=0))
    torch.testing.assert_close(prepared.images[0].features[0], expected, rtol=1e-4, atol=1e-5)


def test_onevision_downscaling_matches_when_nothing_is_pruned_and_shrinks_otherwise(make_onevision, make_image):
    bundle = make_onevision(vision_aspect_ratio="anyres_max_1")
    image = [make_image(40, 24, seed=3)]
    inputs = bundle.inputs(image, PROMPTS[:1])
    pruned = prune_visual_tokens(bundle.model, KeepFirst(), keep=1.0)
    assert any(layout.resize is not None for layout in pruned.layouts(inputs["image_sizes"]))
    with torch.no_grad():
        expected = bundle.model(**inputs).logits
        actual = pruned(**inputs).logits
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
    prepared = pruned.prepare(**inputs, keep=0.25)
    assert prepared.tokens_after[0] < prepared.tokens_before[0]
    assert pruned.generate(**inputs, keep=0.25, max_new_tokens=2).shape[0] == 1


def test_masked_bilinear_only_averages_kept_cells():
    grid = torch.arange(16.0).view(4, 4, 1).repeat(1, 1, 2)
    mask = torch.ones(4, 4, dtype=torch.bool)
    mask[:2, :2] = False  # the whole top-left quadrant is dropped
    out, kept = masked_bilinear((2, 2))(torch.where(mask[..., None], grid, torch.full_like(grid, 1e6)), mask)
    full, _ = masked_bilinear((2, 2))(grid, torch.ones_like(mask))
    assert kept.tolist() == [[False, True], [True, True]]
    assert torch.equal(out[1, 1], full[1, 1])  # untouched by the dropped quadrant
    assert float(out[kept].max()) < 16


def test_onevision_multi_image_sample_prunes_each_base_crop(onevision_bundle, make_image):
    images = [make_image(16, 16, seed=4), make_image(24, 16, seed=5)]
    inputs = onevision_bundle.inputs([images], ["user : <image> <image> what is in the image ?"])
    assert inputs["batch_num_images"].tolist() == [2]
    pruned = prune_visual_tokens(onevision_bundle.model, KeepFirst(), keep=1.0)
    with torch.no_grad():
        torch.testing.assert_close(pruned(**inputs).logits, onevision_bundle.model(**inputs).logits, rtol=1e-5, atol=1e-5)
    prepared = pruned.prepare(**inputs, keep=0.5)
    assert prepared.tokens_before == [17, 17] and prepared.tokens_after == [9, 9]  # 16 tokens + newline each


def test_right_padded_batches_stay_right_padded(images, make_next):
    bundle = make_next(padding_side="right")
    inputs = bundle.inputs(images, PROMPTS)
    assert not bool(inputs["attention_mask"][:, -1].all())
    pruned = prune_visual_tokens(bundle.model, FixedCounts([None] * 5 + [1] + [0] * 2))
    prepared = pruned.prepare(**inputs)
    assert bool(prepared.attention_mask[:, 0].all()) and not bool(prepared.attention_mask[:, -1].all())


def test_labels_and_given_positions_follow_the_pruning(next_bundle, images):
    inputs = next_bundle.inputs(images[:1], PROMPTS[:1])
    labels = inputs["input_ids"].clone()
    positions = torch.arange(labels.shape[1])[None] + 7
    pruned = prune_visual_tokens(next_bundle.model, KeepFirst(), keep=3)
    prepared = pruned.prepare(**inputs, labels=labels, position_ids=positions)
    assert torch.equal(prepared.labels, prepared.input_ids)
    assert torch.equal(prepared.position_ids, torch.arange(prepared.input_ids.shape[1])[None] + 7)
    loss = pruned(**inputs, labels=labels).loss
    assert torch.isfinite(loss)


def test_clear_errors(next_bundle, images):
    inputs = next_bundle.inputs(images[:1], PROMPTS[:1])
    with pytest.raises(ValueError, match="keep fraction"):
        prune_visual_tokens(next_bundle.model, KeepFirst(), keep=1.5)
    pruned = prune_visual_tokens(next_bundle.model, KeepFirst(), keep=0.5)
    with pytest.raises(ValueError, match="has no threshold"):
        pruned.prepare(**inputs, threshold=0.3)
    short = dict(inputs, input_ids=inputs["input_ids"][:, :10], attention_mask=inputs["attention_mask"][:, :10])
    with pytest.raises(ValueError, match="placeholders"):
        pruned.prepare(**short)
    with pytest.raises(ValueError, match="model type"):
        prune_visual_tokens(torch.nn.Linear(2, 2), KeepFirst())


def test_text_only_calls_pass_through(next_bundle):
    ids = next_bundle.processor.tokenizer(["user : describe a cat"], return_tensors="pt")
    pruned = prune_visual_tokens(next_bundle.model, KeepFirst(), keep=0.5)
    with torch.no_grad():
        torch.testing.assert_close(pruned(**ids).logits, next_bundle.model(**ids).logits)


class Recorder(KeepFirst):
    """KeepFirst that remembers what it was shown."""

    def __init__(self):
        self.calls = []

    def select(self, features, keep=None, **kwargs) -> TokenSelection:
        self.calls.append((features.clone(), kwargs.get("padding_mask"), kwargs.get("grid")))
        return super().select(features, keep, **kwargs)


@pytest.mark.parametrize("family", ["next", "onevision"])
def test_selector_features_are_exactly_what_the_selector_is_shown(family, request, images):
    bundle = bundle_for(family, request)
    inputs = bundle.inputs(images, PROMPTS)
    recorder = Recorder()
    pruned = prune_visual_tokens(bundle.model, recorder, keep=0.5)
    pruned.prepare(**inputs, vision_feature_layer=-2)
    (shown, padding, grid), = recorder.calls
    with torch.no_grad():
        features = pruned.selector_features(**inputs, vision_feature_layer=-2)
    assert len(features) == shown.shape[0] == sum(crops_per_image(pruned, inputs))  # one per crop
    assert all(torch.equal(mine, theirs) for mine, theirs in zip(features, shown))
    valid = pruned.selector_valid(**inputs)
    assert torch.equal(torch.stack(valid), ~padding) and not bool(padding[0].any())  # base crops: all valid
    assert pruned.selector_grids(**inputs) == [grid] * len(features) and grid == (4, 4)
