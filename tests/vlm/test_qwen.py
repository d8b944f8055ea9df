"""Pruning the merged visual tokens of tiny Qwen2-VL / Qwen2.5-VL / Qwen3-VL / Qwen3.5 models.

Everything runs through the real model classes and processors (tiny random weights, see
``qwen_models.py``). Logits and generated ids at ``keep=1.0`` are compared with ``torch.equal``:
nothing is dropped, so the wrapper hands the model the caller's tensors and the tower's own tokens.
The drop-in calls (masked placeholders, ``inputs_embeds``...) are in ``test_qwen_dropin.py``.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import pytest
import torch

from vlm.qwen_models import FAMILIES, IMAGE, NEW, bundle_cache, generate, random_image, scenario, video_inputs
from token_reduction.selection.base import TokenSelection
from token_reduction.vlm.qwen_vl import PrunedQwenVL


@pytest.fixture(scope="module")
def bundles() -> Any:
    return bundle_cache()


@contextlib.contextmanager
def llm_positions(model: Any) -> Iterator[list[torch.Tensor]]:
    """Record the ``position_ids`` the language model receives at every call."""
    seen: list[torch.Tensor] = []

    def hook(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        seen.append(kwargs["position_ids"].clone())

    handle = model.model.language_model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield seen
    finally:
        handle.remove()


class MergeAll:
    """A merging method: every crop becomes one token, the mean of its tokens, at position 0."""

    name = "merge_all"

    def select(self, features, keep=None, *, padding_mask=None, extras=None, grid=None, generator=None) -> TokenSelection:
        ones = torch.ones(features.shape[0], 1, dtype=torch.bool)
        indices = torch.zeros(features.shape[0], 1, dtype=torch.long)
        return TokenSelection(features.mean(dim=1, keepdim=True), indices, ones, ones.sum(dim=1), merged=True)


# --------------------------------------------------------------------------------- keep = 1.0
@pytest.mark.parametrize("name", ["one", "batch", "multi"])
@pytest.mark.parametrize("family", FAMILIES)
def test_keep_all_matches_the_unpatched_model(family, name, bundles, make_selector):
    bundle = bundles(family)
    inputs = scenario(bundle, name)
    if name != "one":
        assert bool((inputs["attention_mask"][:, 0] == 0).any()), "the batch must be left-padded"
    pruned = PrunedQwenVL(bundle.model, make_selector(), keep=1.0)
    with torch.no_grad():
        expected, actual = bundle.model(**inputs).logits, pruned(**inputs).logits
    assert torch.equal(actual, expected)
    assert torch.equal(pruned.last.input_ids, inputs["input_ids"])
    assert torch.equal(generate(pruned, inputs), generate(bundle.model, inputs))


@pytest.mark.parametrize("family", FAMILIES)
def test_keep_all_matches_the_unpatched_model_on_videos(family, bundles, make_selector):
    bundle = bundles(family)
    images = [random_image(16, 24, 3), random_image(24, 16, 4)]
    inputs = video_inputs(bundle, [(2, 4, 4), (2, 4, 6)], [f"user : <video> {IMAGE} what", f"{IMAGE} <video> describe it"], images)
    pruned = PrunedQwenVL(bundle.model, make_selector(), keep=1.0)
    with torch.no_grad():
        assert torch.equal(pruned(**inputs).logits, bundle.model(**inputs).logits)
    assert torch.equal(generate(pruned, inputs), generate(bundle.model, inputs))


# ----------------------------------------------------------------------------- pruned prompts
@pytest.mark.parametrize("family", FAMILIES)
def test_llm_input_shrinks_by_the_dropped_tokens_of_each_row(family, bundles, make_selector):
    bundle = bundles(family)
    inputs = scenario(bundle, "multi")
    pruned = PrunedQwenVL(bundle.model, make_selector(), keep=0.5)
    out = generate(pruned, inputs)
    last = pruned.last
    assert last.tokens_before == [6, 16, 15]
    assert last.tokens_after == [3, 8, 8]  # ceil(half) of each image's merged tokens
    dropped = [b - a for b, a in zip(last.tokens_before, last.tokens_after)]
    before = inputs["attention_mask"].sum(dim=1).tolist()
    assert last.lengths == [before[0] - dropped[0] - dropped[1], before[1] - dropped[2]]
    assert out.shape == (2, last.input_ids.shape[1] + NEW)
    assert torch.equal(out[:, : last.input_ids.shape[1]], last.input_ids)


@pytest.mark.parametrize("family", FAMILIES)
def test_kept_tokens_keep_their_unpruned_positions(family, bundles, make_selector):
    bundle = bundles(family)
    inputs = scenario(bundle, "batch")
    full, deltas = bundle.model.model.get_rope_index(
        inputs["input_ids"], inputs["mm_token_type_ids"], inputs["image_grid_thw"], attention_mask=inputs["attention_mask"]
    )
    pruned = PrunedQwenVL(bundle.model, make_selector(), keep=0.5)
    with llm_positions(bundle.model) as seen, torch.no_grad():
        pruned(**inputs)
    last = pruned.last
    assert torch.equal(seen[0], last.position_ids)  # what the LLM read
    real = last.attention_mask.bool()
    for row in range(2):
        assert torch.equal(last.position_ids[:, row, real[row]], full[:, row, last.kept[row]])
        # the image's kept tokens sit at their own (t, h, w); the text after it is not renumbered
        image = full[:, row, inputs["input_ids"][row] == bundle.model.config.image_token_id]
        is_image = last.input_ids[row] == bundle.model.config.image_token_id
        assert torch.equal(last.position_ids[:, row, is_image], image[:, last.images[row].mask])
        assert torch.equal(last.position_ids[:, row, -1], full[:, row, -1])
    dropped = torch.tensor([image.before - image.after for image in last.images])
    assert torch.equal(bundle.model.model.rope_deltas[:, 0], deltas[:, 0] + dropped)


@pytest.mark.parametrize("family", FAMILIES)
def test_generation_continues_from_the_unpruned_offsets(family, bundles, make_selector):
    bundle = bundles(family)
    inputs = scenario(bundle, "batch")
    with llm_positions(bundle.model) as unpruned:
        generate(bundle.model, inputs)
    with llm_positions(bundle.model) as pruned_steps:
        generate(PrunedQwenVL(bundle.model, make_selector(), keep=0.5), inputs)
    decode = [positions for positions in pruned_steps[1:]]
    assert len(decode) == NEW - 1
    for step, (expected, actual) in enumerate(zip(unpruned[1:], decode)):
        assert actual.shape[-1] == 1
        # row 0 is the text position generate uses for the causal mask; rows 1-3 are (t, h, w)
        assert torch.equal(actual[1:], expected[1:]), f"decode step {step}"


@pytest.mark.parametrize("family", FAMILIES)
def test_forward_agrees_with_generate_on_a_pruned_prompt(family, bundles, make_selector):
    """The cached decoding steps see the positions a full forward of prompt + answer computes."""
    bundle = bundles(family)
    inputs = scenario(bundle, "batch")
    pruned = PrunedQwenVL(bundle.model, make_selector(), keep=0.5)
    out = generate(pruned, inputs, output_logits=True, return_dict_in_generate=True)
    length = pruned.last.input_ids.shape[1]
    answer = out.sequences[:, length:]
    extended = dict(inputs)
    extended["input_ids"] = torch.cat([inputs["input_ids"], answer], dim=1)
    extended["attention_mask"] = torch.cat([inputs["attention_mask"], torch.ones_like(answer)], dim=1)
    extended["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], torch.zeros_like(answer)], dim=1)
    with torch.no_grad():
        logits = pruned(**extended).logits
    # not bit-identical: one full pass against a prefill + cached steps (different matmul shapes)
    torch.testing.assert_close(logits[:, length - 1 : -1], torch.stack(out.logits, dim=1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_adaptive_mode_keeps_what_the_selector_accepts(family, bundles, make_selector):
    bundle = bundles(family)
    inputs = scenario(bundle, "batch")
    selector = make_selector()
    pruned = PrunedQwenVL(bundle.model, selector, keep=None, threshold=0.5)
    out = generate(pruned, inputs)
    assert out.shape[1] == pruned.last.input_ids.shape[1] + NEW
    features = pruned.selector_features(**inputs)
    for image, tokens, grid in zip(pruned.last.images, features, pruned.selector_grids(**inputs)):
        expected = selector.select(tokens[None], None, grid=grid, threshold=0.5).keep_mask(tokens.shape[0])[0]
        assert torch.equal(image.mask, expected)
    assert pruned.last.tokens_after != pruned.last.tokens_before


@pytest.mark.parametrize("family", FAMILIES)
def test_videos_are_pruned_per_frame_or_across_frames(family, bundles, make_selector):
    bundle = bundles(family)
    inputs = video_inputs(bundle, [(2, 4, 4), (2, 4, 6)], ["user : <video> what is it ?", "<video> describe it"])
    pruned = PrunedQwenVL(bundle.model, make_selector(), keep=0.5)
    out = generate(pruned, inputs)
    videos = pruned.last.videos
    assert [video.frames_after for video in videos] == [[2, 2], [3, 3]]
    assert pruned.last.video_tokens_before == [8, 12]
    before = inputs["attention_mask"].sum(dim=1)
    assert pruned.last.lengths == (before - torch.tensor([4, 6])).tolist()
    assert out.shape[1] == pruned.last.input_ids.shape[1] + NEW
    generate(pruned, inputs, temporal=True)
    assert sum(pruned.last.video_tokens_after) == 10  # the same total, spent across frames


def test_qwen3_deepstack_features_follow_the_keep_mask(bundles, make_selector):
    bundle = bundles("qwen3_vl")
    inputs = scenario(bundle, "batch")
    pruned = PrunedQwenVL(bundle.model, make_selector(), keep=0.25)
    pruned.prepare(**inputs)
    full = bundle.model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"], return_dict=True)
    given = pruned.last.mm_encoder_outputs["image"].deepstack_features
    assert len(given) == len(full.deepstack_features) == 2
    for layer, features in zip(given, full.deepstack_features):
        for image, kept, every in zip(pruned.last.images, layer, features):
            assert torch.equal(kept, every[image.mask])
    with torch.no_grad():
        assert torch.isfinite(pruned(**inputs).logits).all()


# ------------------------------------------------------------------------- what the selector sees
@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
def test_selector_sees_the_merged_tokens_on_their_grid(family, bundles):
    bundle = bundles(family)
    inputs = scenario(bundle, "batch")
    seen: list[tuple[torch.Tensor, tuple[int, int]]] = []

    class Recorder(MergeAll):
        def select(self, features, keep=None, **kwargs):
            seen.append((features.clone(), kwargs["grid"]))
            return super().select(features, keep, **kwargs)

    pruned = PrunedQwenVL(bundle.model, Recorder(), keep=0.5)
    merged = bundle.model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"]).pooler_output
    features = pruned.selector_features(**inputs)
    assert pruned.selector_grids(**inputs) == [(4, 4), (3, 5)]
    assert all(torch.equal(a, b) for a, b in zip(features, merged))
    pruned(**inputs)
    assert [grid for _, grid in seen] == [(4, 4), (3, 5)]  # one selector call per grid
    assert all(torch.equal(shown[0], tokens) for (shown, _), tokens in zip(seen, features))
    # a merging method's token reaches the LLM as the selector emitted it
    assert pruned.last.tokens_after == [1, 1]
    assert torch.allclose(pruned.last.images[0].features[0], features[0].mean(dim=0))


def test_mismatched_placeholders_and_selectors_are_refused(bundles, make_selector):
    bundle = bundles("qwen2_5_vl")
    inputs = scenario(bundle, "one")
    pruned = PrunedQwenVL(bundle.model, make_selector(), keep=0.5)
    ids, mask, types = inputs["input_ids"], inputs["attention_mask"], inputs["mm_token_type_ids"]
    two_fewer = {  # drop 2 of the 16 image placeholders
        "input_ids": torch.cat([ids[:, :4], ids[:, 6:]], dim=1), "attention_mask": mask[:, 2:], "mm_token_type_ids": types[:, 2:]
    }  # fmt: skip
    with pytest.raises(ValueError, match="14 image placeholders but the images give 16 tokens"):
        pruned.prepare(**{**inputs, **two_fewer})
    with pytest.raises(ValueError, match="image_grid_thw"):
        pruned.prepare(inputs["input_ids"], inputs["pixel_values"], attention_mask=inputs["attention_mask"])
    with pytest.raises(ValueError, match="64-dim features"):
        PrunedQwenVL(bundle.model, make_selector(dim=64))


def test_labels_and_caller_positions_follow_the_kept_slots(bundles, make_selector):
    bundle = bundles("qwen2_5_vl")
    inputs = scenario(bundle, "batch")
    labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
    positions, _ = bundle.model.model.get_rope_index(
        inputs["input_ids"], inputs["mm_token_type_ids"], inputs["image_grid_thw"], attention_mask=inputs["attention_mask"]
    )
    pruned = PrunedQwenVL(bundle.model, make_selector(), keep=1.0)
    with torch.no_grad():
        expected = bundle.model(**inputs, labels=labels).loss
        assert torch.equal(pruned(**inputs, labels=labels, position_ids=positions).loss, expected)
        pruned(**inputs, labels=labels, position_ids=positions + 7, keep=0.5)
    last, real = pruned.last, pruned.last.attention_mask.bool()
    assert torch.equal(last.labels[real], labels[last.kept])
    assert bool((last.labels[~real] == -100).all())
    assert torch.equal(last.position_ids[:, real], (positions + 7)[:, last.kept])
    # shift_labels (next token's label per slot) skip dropped runs: they equal the compacted labels shifted by one
    shift = torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], -100)], dim=1)
    types = inputs["input_ids"] % 3
    pruned.prepare(**inputs, labels=labels, keep=0.5, extra={"shift_labels": shift, "token_type_ids": types})
    last, given = pruned.last, pruned.last.extra
    assert torch.equal(given["shift_labels"][:, :-1], last.labels[:, 1:])
    assert bool((given["shift_labels"][:, -1] == -100).all())
    assert torch.equal(given["token_type_ids"][last.attention_mask.bool()], types[last.kept])


@pytest.mark.parametrize("family", FAMILIES)
def test_prune_visual_tokens_wraps_every_qwen_family(family, bundles, make_selector):
    from token_reduction.vlm import prune_visual_tokens
    from token_reduction.vlm.video import prune_video_tokens

    bundle = bundles(family)
    pruned = prune_visual_tokens(bundle.model, make_selector(), keep=0.25)
    assert isinstance(pruned, PrunedQwenVL) and pruned.family == family
    inputs = scenario(bundle, "one")
    pruned(**inputs)
    assert pruned.last.tokens_after == [4]
    temporal = prune_video_tokens(bundle.model, make_selector(), keep=0.5, temporal=True)
    temporal(**video_inputs(bundle, [(2, 4, 4)], ["<video> describe it"]))
    assert temporal.last.videos[0].temporal and temporal.last.video_tokens_after == [4]
