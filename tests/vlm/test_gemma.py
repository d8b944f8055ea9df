"""Pruning tiny Gemma 3 and Gemma 4 models: pooled tokens, bidirectional image blocks, sequential positions."""

from __future__ import annotations

import pytest
import torch
from vlm.builders import GENERATE, KeepFirst, adaptive_counts, assert_same_as_model
from vlm.simple_models import build_gemma3, build_gemma4, gemma4_inputs, random_image

from token_reduction.vlm import prune_visual_tokens
from token_reduction.selection.base import TokenSelection
from token_reduction.vlm.gemma import PrunedGemma3, PrunedGemma4

FAMILIES = ("gemma3", "gemma4")
WRAPPERS = {"gemma3": PrunedGemma3, "gemma4": PrunedGemma4}
TYPES = {"gemma3": "token_type_ids", "gemma4": "mm_token_type_ids"}


class Recorder(KeepFirst):
    """KeepFirst that records the features and grid of every image it is shown."""

    def __init__(self) -> None:
        self.seen, self.grids = [], []

    def select(self, features, keep=None, **kwargs) -> TokenSelection:
        self.seen.extend(features.unbind(0))
        self.grids.extend([kwargs.get("grid")] * features.shape[0])
        return super().select(features, keep, **kwargs)


class MergeAll:
    """A merging method: each image becomes one token, the mean of its tokens, at position 0."""

    name = "merge_all"

    def select(self, features, keep=None, *, padding_mask=None, extras=None, grid=None, generator=None) -> TokenSelection:
        ones = torch.ones(features.shape[0], 1, dtype=torch.bool)
        first = torch.zeros(features.shape[0], 1, dtype=torch.long)
        return TokenSelection(tokens=features.mean(dim=1, keepdim=True), indices=first, valid=ones, counts=ones.sum(dim=1), merged=True)


@pytest.fixture(scope="module")
def bundles():
    return {"gemma3": build_gemma3(), "gemma4": build_gemma4()}


def prompt(text: str, images: int = 1, token: str = "<start_of_image>") -> str:
    return "user : " + " ".join([token] * images) + " " + text


def inputs_for(family, bundle, images, texts, **kwargs):
    """``images``: one entry per prompt (an image or a list of them); Gemma processors want them nested."""
    token = "<start_of_image>" if family == "gemma3" else "<image_soft_token>"
    nested = [item if isinstance(item, list) else [item] for item in images]
    return bundle.inputs(nested, [prompt(text, count, token) for text, count in texts], **kwargs)


def blocks(type_ids: torch.Tensor) -> list[int]:
    """Contiguous runs of image-typed tokens per row: what the model turns into bidirectional blocks."""
    image = (type_ids > 0).long()
    return [int(((row[1:] == 1) & (row[:-1] == 0)).sum() + row[0]) for row in image]


# ------------------------------------------------------------------------------- keep 1.0 == model
@pytest.mark.parametrize("family", FAMILIES)
def test_keep_all_one_image_is_the_model(family, bundles, make_selector):
    bundle = bundles[family]
    inputs = inputs_for(family, bundle, [random_image(16, 32, seed=1)], [("what is in the image ?", 1)])
    assert_same_as_model(bundle, WRAPPERS[family](bundle.model, make_selector(), keep=1.0), inputs)


@pytest.mark.parametrize("family", FAMILIES)
def test_keep_all_two_image_sizes_in_a_batch_is_the_model(family, bundles):
    bundle = bundles[family]
    images = [random_image(16, 32, seed=2), random_image(16, 16, seed=3)]
    inputs = inputs_for(family, bundle, images, [("what is in it ?", 1), ("describe the cat", 1)])
    pruned = WRAPPERS[family](bundle.model, KeepFirst(), keep=1.0)
    assert_same_as_model(bundle, pruned, inputs)
    if family == "gemma4":  # each image at its own size: different grids and token counts
        assert pruned.selector_grids(**inputs) == [(5, 11), (8, 8)]
        assert pruned.last.tokens_before == [55, 64]


@pytest.mark.parametrize("family", FAMILIES)
def test_keep_all_left_padded_multi_image_batch_is_the_model(family, bundles):
    bundle = bundles[family]
    images = [[random_image(16, 24, seed=4), random_image(24, 16, seed=5)], [random_image(16, 16, seed=6)]]
    inputs = inputs_for(family, bundle, images, [("what is in the image ?", 2), ("describe it", 1)])
    assert not bool(inputs["attention_mask"][:, 0].all())
    assert_same_as_model(bundle, WRAPPERS[family](bundle.model, KeepFirst(), keep=1.0), inputs)


def test_gemma3_pan_and_scan_crops_are_pruned_as_images():
    bundle = build_gemma3()
    scan = dict(do_pan_and_scan=True, pan_and_scan_min_crop_size=8)
    inputs = inputs_for("gemma3", bundle, [random_image(16, 32, seed=7), random_image(16, 16, seed=8)],
                        [("what is in the image ?", 1), ("describe it", 1)], **scan)  # fmt: skip
    assert inputs["pixel_values"].shape[0] == 4  # the wide image, its two crops, the square image
    assert_same_as_model(bundle, PrunedGemma3(bundle.model, KeepFirst(), keep=1.0), inputs)
    prepared = PrunedGemma3(bundle.model, KeepFirst(), keep=0.5).prepare(**inputs)
    assert prepared.tokens_before == [4, 4, 4, 4] and prepared.tokens_after == [2, 2, 2, 2]
    assert blocks(prepared.extra["token_type_ids"]) == [3, 1]


# --------------------------------------------------------------------------------------- pruning
@pytest.mark.parametrize("family", FAMILIES)
def test_each_row_shrinks_by_its_dropped_tokens_and_image_blocks_stay_whole(family, bundles):
    bundle = bundles[family]
    images = [[random_image(16, 24, seed=4), random_image(24, 16, seed=5)], [random_image(16, 16, seed=6)]]
    inputs = inputs_for(family, bundle, images, [("what is in the image ?", 2), ("describe it", 1)])
    pruned = WRAPPERS[family](bundle.model, KeepFirst(), keep=0.5)
    prepared = pruned.prepare(**inputs)
    before, after = prepared.tokens_before, prepared.tokens_after
    assert all(0 < a < b for a, b in zip(after, before))
    old = inputs["attention_mask"].sum(dim=1)
    assert prepared.lengths == [int(old[0]) - (before[0] - after[0]) - (before[1] - after[1]), int(old[1]) - (before[2] - after[2])]
    image_id = bundle.model.config.image_token_id
    types = prepared.extra[TYPES[family]]
    assert torch.equal(types.bool(), prepared.input_ids == image_id)  # the processor's rule on the pruned ids
    assert blocks(types) == [2, 1]  # each image's kept tokens: one bidirectional block
    out = pruned.generate(**inputs, **GENERATE)
    assert torch.equal(out[:, : prepared.input_ids.shape[1]], prepared.input_ids)


@pytest.mark.parametrize("family", FAMILIES)
def test_compacted_token_types_reach_the_model(family, bundles):
    bundle = bundles[family]
    inputs = inputs_for(family, bundle, [random_image(16, 32, seed=9)], [("what is in the image ?", 1)])
    pruned = WRAPPERS[family](bundle.model, KeepFirst(), keep=0.5)
    with torch.no_grad():
        logits = pruned(**inputs).logits
        kwargs = pruned.last.model_kwargs()
        assert torch.equal(bundle.model(**kwargs).logits, logits)
        causal = bundle.model(**{k: v for k, v in kwargs.items() if k != TYPES[family]}).logits
    assert not torch.allclose(causal, logits)  # image tokens do attend to later image tokens


@pytest.mark.parametrize("family", FAMILIES)
def test_generate_at_half_and_adaptive_with_a_token_selector(family, bundles, make_selector):
    bundle = bundles[family]
    images = [random_image(16, 32, seed=10), random_image(16, 16, seed=11)]
    inputs = inputs_for(family, bundle, images, [("what is in it ?", 1), ("describe it", 1)])
    pruned = WRAPPERS[family](bundle.model, make_selector(), keep=0.5)
    counts = adaptive_counts(pruned, inputs, GENERATE)
    assert counts[0] == sum(pruned.last.tokens_before) >= counts[1] >= counts[2] == 2


@pytest.mark.parametrize("family", FAMILIES)
def test_selector_sees_the_pooled_tokens_the_llm_reads(family, bundles):
    bundle = bundles[family]
    images = [random_image(16, 32, seed=12), random_image(16, 16, seed=13)]
    inputs = inputs_for(family, bundle, images, [("a", 1), ("b", 1)])
    selector = Recorder()
    pruned = WRAPPERS[family](bundle.model, selector, keep=0.5)
    prepared = pruned.prepare(**inputs)
    features = pruned.selector_features(**inputs)
    grids = pruned.selector_grids(**inputs)
    assert [tuple(f.shape) for f in features] == [(r * c, 32) for r, c in grids]
    order = sorted(range(2), key=lambda i: grids.index(grids[i]))  # grouped by grid, as the selector saw them
    assert all(torch.equal(selector.seen[k], features[i]) for k, i in enumerate(order))
    assert [selector.grids[k] for k in range(2)] == [grids[i] for i in order]
    with torch.no_grad():  # what the LLM reads: the model's own image features at the kept positions
        own = bundle.model.model.get_image_features(**{k: v for k, v in inputs.items() if k in ("pixel_values", "image_position_ids")})
    own = own.pooler_output if family == "gemma4" else list(own.pooler_output)
    for image, full in zip(prepared.images, own):
        assert torch.equal(image.features, full[: image.after])  # KeepFirst keeps the first half


@pytest.mark.parametrize("family", FAMILIES)
def test_merging_methods_feed_the_projection_of_their_merged_tokens(family, bundles):
    bundle = bundles[family]
    inputs = inputs_for(family, bundle, [random_image(16, 32, seed=16)], [("describe it", 1)])
    pruned = WRAPPERS[family](bundle.model, MergeAll(), keep=1)
    prepared = pruned.prepare(**inputs)
    mean = pruned.selector_features(**inputs)[0].mean(dim=0)
    with torch.no_grad():
        if family == "gemma3":
            projector = bundle.model.model.multi_modal_projector
            expected = projector.mm_soft_emb_norm(mean) @ projector.mm_input_projection_weight
        else:
            expected = bundle.model.model.embed_vision(inputs_embeds=mean[None])[0]
    assert prepared.tokens_after == [1]
    torch.testing.assert_close(prepared.images[0].features[0], expected)
    assert pruned.generate(**inputs, **GENERATE).shape[1] == prepared.input_ids.shape[1] + 4


def test_gemma4_generation_continues_from_the_shortened_positions(bundles):
    """Sequential 1-D positions: cached generation equals recomputing the whole pruned prompt each step."""
    bundle = bundles["gemma4"]
    images = [random_image(16, 32, seed=14), random_image(16, 16, seed=15)]
    inputs = inputs_for("gemma4", bundle, images, [("what is in the image ?", 1), ("describe it", 1)])
    pruned = PrunedGemma4(bundle.model, KeepFirst(), keep=0.25)
    out = pruned.generate(**inputs, **GENERATE)
    kwargs = pruned.last.model_kwargs()
    ids, mask, types = kwargs["input_ids"], kwargs["attention_mask"], kwargs["mm_token_type_ids"]
    with torch.no_grad():
        for _ in range(4):
            positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
            step = dict(kwargs, input_ids=ids, attention_mask=mask, mm_token_type_ids=types, position_ids=positions)
            next_ids = bundle.model(**step).logits[:, -1].argmax(dim=-1, keepdim=True)
            ids, mask = torch.cat([ids, next_ids], dim=1), torch.cat([mask, torch.ones_like(next_ids)], dim=1)
            types = torch.cat([types, torch.zeros_like(next_ids)], dim=1)
    assert torch.equal(out, ids)


@pytest.mark.parametrize("family", FAMILIES)
def test_prune_visual_tokens_picks_the_family_and_text_only_calls_pass_through(family, bundles):
    bundle = bundles[family]
    pruned = prune_visual_tokens(bundle.model, KeepFirst(), keep=0.5)
    assert type(pruned) is WRAPPERS[family]
    ids = bundle.processor.tokenizer(["user : describe a cat"], return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(pruned(**ids).logits, bundle.model(**ids).logits)
    assert torch.equal(pruned.generate(**ids, **GENERATE), bundle.model.generate(**ids, **GENERATE))


# ------------------------------------------------------------------------------------ Gemma 4 videos
def video_inputs(bundle):
    """Two left-padded rows: a 3-frame video; an image and a 2-frame video of another size."""
    videos = [[random_image(16, 16, seed=s) for s in range(3)], [random_image(16, 24, seed=10 + s) for s in range(2)]]
    prompts = ["user : <|video|> describe it", "user : <image_soft_token> and <|video|> what is in the image ?"]
    return gemma4_inputs(bundle, prompts, images=[random_image(16, 32, seed=20)], videos=videos)


def test_gemma4_keep_all_videos_and_images_are_the_model(bundles):
    bundle = bundles["gemma4"]
    inputs = video_inputs(bundle)
    pruned = PrunedGemma4(bundle.model, KeepFirst(), keep=1.0)
    assert_same_as_model(bundle, pruned, inputs)
    assert pruned.last.video_tokens_after == pruned.last.video_tokens_before == [3 * 64, 2 * 60]


@pytest.mark.parametrize("temporal", [False, True])
def test_gemma4_video_frames_keep_their_own_runs(temporal, bundles, make_selector):
    bundle = bundles["gemma4"]
    inputs = video_inputs(bundle)
    pruned = PrunedGemma4(bundle.model, make_selector(), keep=0.5, temporal=temporal)
    prepared = pruned.prepare(**inputs)
    videos = prepared.videos
    assert [v.frames_before for v in videos] == [[64, 64, 64], [60, 60]]
    assert [sum(v.frames_after) for v in videos] == [96, 60]  # half of each video's tokens
    if not temporal:
        assert [v.frames_after for v in videos] == [[32, 32, 32], [30, 30]]  # per-frame budgets
    types = prepared.extra["mm_token_type_ids"]
    assert blocks(types) == [3, 3]  # one bidirectional block per frame (and per image)
    assert (types == 2).sum(dim=1).tolist() == [96, 60]
    video_id = bundle.model.config.video_token_id
    for row, video in enumerate(videos):  # every frame's run keeps exactly its own kept count
        runs = torch.diff((prepared.input_ids[row] == video_id).long(), prepend=torch.zeros(1, dtype=torch.long))
        starts = (runs == 1).nonzero().squeeze(1).tolist()
        ends = (runs == -1).nonzero().squeeze(1).tolist()
        assert [e - s for s, e in zip(starts, ends)] == video.frames_after
    old = inputs["attention_mask"].sum(dim=1)
    dropped = [192 - 96, (55 - prepared.tokens_after[0]) + 120 - 60]
    assert prepared.lengths == [int(old[0]) - dropped[0], int(old[1]) - dropped[1]]
    out = pruned.generate(**inputs, **GENERATE)
    assert torch.equal(out[:, : prepared.input_ids.shape[1]], prepared.input_ids)
