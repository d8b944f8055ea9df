"""The wrapper as a drop-in: at keep 1.0 every way a transformers user calls the model gives the
unpatched model's logits / ids bit for bit (torch.equal); at keep < 1 the same calls run.

Each test here pins a defect found by calling the wrapper as a transformers user would.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from token_reduction.errors import UserError
from token_reduction.vlm import prune_visual_tokens
from token_reduction.vlm.families import FAMILIES, register_family, supported, wrapper_for
from token_reduction.vlm.llava_next import PrunedLlavaNext
from token_reduction.vlm.video import video_placeholders
from token_reduction.selection.base import selection_from_mask

PROMPTS = ["user : <image> what is in the image ?", "user : <image> describe it"]
GREEDY = dict(max_new_tokens=4, do_sample=False)


def bundle_for(family: str, request: pytest.FixtureRequest):
    return request.getfixturevalue("next_bundle" if family == "next" else "onevision_bundle")


def wrappers(bundle, make_selector):
    """The same model wrapped at keep 1.0 and keep 0.5."""
    return prune_visual_tokens(bundle.model, make_selector(), keep=1.0), prune_visual_tokens(bundle.model, make_selector(), keep=0.5)


def text_labels(inputs: dict, image_token_id: int) -> torch.Tensor:
    ids = inputs["input_ids"]
    return ids.masked_fill((ids == image_token_id) | (inputs["attention_mask"] == 0), -100)


def shift(labels: torch.Tensor) -> torch.Tensor:
    return torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], -100)], dim=1)


# ------------------------------------------------------------------------- a. per-call vision options
@pytest.mark.parametrize("family,layer", [("next", -1), ("onevision", -2)])
def test_per_call_vision_feature_layer_is_honoured(family, layer, request, images, make_selector):
    bundle = bundle_for(family, request)
    inputs = bundle.inputs(images, PROMPTS)
    full, half = wrappers(bundle, make_selector)
    with torch.no_grad():
        expected = bundle.model(**inputs, vision_feature_layer=layer).logits
        assert not torch.equal(expected, bundle.model(**inputs).logits)  # the layer matters
        assert torch.equal(full(**inputs, vision_feature_layer=layer).logits, expected)
    assert torch.equal(full.generate(**inputs, vision_feature_layer=layer, **GREEDY), bundle.model.generate(**inputs, vision_feature_layer=layer, **GREEDY))
    assert half.generate(**inputs, vision_feature_layer=layer, **GREEDY).shape[0] == 2
    with pytest.raises(ValueError, match=r"32-dim.*vision_feature_layer=\[-1, -2\].*64-dim"):
        full(**inputs, vision_feature_layer=[-1, -2])


def test_per_call_select_strategy_is_honoured(onevision_bundle, make_onevision_processor, make_image, make_selector):
    # A multi-image prompt (no AnyRes tiles) expanded for 'default' (CLS-less SigLIP then loses a token).
    processor = make_onevision_processor(strategy="default")
    pair = [[make_image(16, 16, seed=4), make_image(24, 16, seed=5)]]
    inputs = dict(processor(images=pair, text=["user : <image> <image> what is in the image ?"], return_tensors="pt"))
    full, half = wrappers(onevision_bundle, make_selector)
    with torch.no_grad():
        expected = onevision_bundle.model(**inputs, vision_feature_select_strategy="default").logits
        assert torch.equal(full(**inputs, vision_feature_select_strategy="default").logits, expected)
        half(**inputs, vision_feature_select_strategy="default")
    assert half.last.tokens_before == [16, 16] and half.last.tokens_after == [9, 9]  # 15 tokens -> 8, + newline


def test_onevision_vision_aspect_ratio_follows_forward_and_generate(make_onevision, make_image, make_selector):
    """transformers' OneVision forward ignores a per-call vision_aspect_ratio, its generate honours it."""
    model = make_onevision().model  # config: anyres_max_9
    small = make_onevision(vision_aspect_ratio="anyres_max_1")  # same weights, prompt expanded for anyres_max_1
    image = [make_image(40, 24, seed=3)]
    full = prune_visual_tokens(model, make_selector(), keep=1.0)
    expanded_for_1 = small.inputs(image, PROMPTS[:1])
    options = dict(vision_aspect_ratio="anyres_max_1", **GREEDY)
    assert torch.equal(full.generate(**expanded_for_1, **options), model.generate(**expanded_for_1, **options))
    expanded_for_9 = make_onevision().inputs(image, PROMPTS[:1])
    with torch.no_grad():
        expected = model(**expanded_for_9, vision_aspect_ratio="anyres_max_1").logits
        assert torch.equal(full(**expanded_for_9, vision_aspect_ratio="anyres_max_1").logits, expected)


# ----------------------------------------------------------------- b. placeholders under mask 0
@pytest.mark.parametrize("family", ["next", "onevision"])
def test_placeholders_under_a_zero_attention_mask_are_filled_like_the_model(family, request, images, make_selector):
    bundle = bundle_for(family, request)
    inputs = bundle.inputs(images, PROMPTS)
    slots = (inputs["input_ids"][0] == bundle.model.config.image_token_id).nonzero().squeeze(1)
    inputs["attention_mask"][0, slots[:5]] = 0
    full, half = wrappers(bundle, make_selector)
    with torch.no_grad():
        assert torch.equal(full(**inputs).logits, bundle.model(**inputs).logits)
        logits = half(**inputs).logits
    assert logits.shape[1] == half.last.input_ids.shape[1]
    assert half.last.lengths[0] == int(inputs["attention_mask"][0].sum()) - (half.last.tokens_before[0] - half.last.tokens_after[0])
    assert torch.equal(full.generate(**inputs, **GREEDY), bundle.model.generate(**inputs, **GREEDY))


# ---------------------------------------------------------------------------- c. inputs_embeds
@pytest.mark.parametrize("family", ["next", "onevision"])
def test_inputs_embeds_without_input_ids(family, request, images, make_selector):
    bundle = bundle_for(family, request)
    inputs = bundle.inputs(images, PROMPTS)
    embeds = bundle.model.get_input_embeddings()(inputs["input_ids"]).detach()
    no_ids = {name: value for name, value in inputs.items() if name != "input_ids"}
    full, half = wrappers(bundle, make_selector)
    with torch.no_grad():
        assert torch.equal(full(**no_ids, inputs_embeds=embeds).logits, bundle.model(**no_ids, inputs_embeds=embeds).logits)
        # placeholders found in the embeddings: pruned exactly as through input_ids
        assert torch.equal(half(**no_ids, inputs_embeds=embeds).logits, half(**inputs).logits)
    assert half.last.input_ids is not None
    assert torch.equal(full.generate(**no_ids, inputs_embeds=embeds, **GREEDY), bundle.model.generate(**no_ids, inputs_embeds=embeds, **GREEDY))
    new_tokens = half.generate(**no_ids, inputs_embeds=embeds, **GREEDY)
    assert half.last.input_ids is None and half.last.inputs_embeds.shape[1] < embeds.shape[1]
    assert torch.equal(new_tokens, half.generate(**inputs, **GREEDY)[:, -GREEDY["max_new_tokens"] :])


def test_generate_with_input_ids_and_inputs_embeds_shortens_both(next_bundle, images, make_selector):
    inputs = next_bundle.inputs(images, PROMPTS)
    embeds = next_bundle.model.get_input_embeddings()(inputs["input_ids"]).detach()
    full, half = wrappers(next_bundle, make_selector)
    expected = next_bundle.model.generate(**inputs, inputs_embeds=embeds, **GREEDY)
    assert torch.equal(full.generate(**inputs, inputs_embeds=embeds, **GREEDY), expected)
    out = half.generate(**inputs, inputs_embeds=embeds, **GREEDY)
    assert half.last.inputs_embeds.shape[:2] == half.last.input_ids.shape
    assert torch.equal(out, half.generate(**inputs, **GREEDY))


# -------------------------------------------------------------------------- d. labels, shift_labels
@pytest.mark.parametrize("family", ["next", "onevision"])
def test_labels_and_shift_labels_give_the_models_loss(family, request, images, make_selector):
    bundle = bundle_for(family, request)
    inputs = bundle.inputs(images, PROMPTS)
    labels = text_labels(inputs, bundle.model.config.image_token_id)
    full, half = wrappers(bundle, make_selector)
    with torch.no_grad():
        assert torch.equal(full(**inputs, labels=labels).loss, bundle.model(**inputs, labels=labels).loss)
        expected = bundle.model(**inputs, labels=labels, shift_labels=shift(labels)).loss
        assert torch.equal(full(**inputs, labels=labels, shift_labels=shift(labels)).loss, expected)
        pruned_loss = half(**inputs, labels=labels).loss
        assert torch.equal(half(**inputs, labels=labels, shift_labels=shift(labels)).loss, pruned_loss)
    assert torch.equal(half.last.extra["shift_labels"], shift(half.last.labels))


# ------------------------------------------------------------------------ positions, image_outputs
@pytest.mark.parametrize("family", ["next", "onevision"])
def test_left_padded_batch_without_positions_is_bit_exact(family, request, images, make_selector):
    bundle = bundle_for(family, request)
    inputs = bundle.inputs(images, PROMPTS)
    assert not bool(inputs["attention_mask"].all())
    full, half = wrappers(bundle, make_selector)
    with torch.no_grad():
        assert torch.equal(full(**inputs).logits, bundle.model(**inputs).logits)
        half(**inputs)
    assert full.last.position_ids is None and full.last.input_ids is inputs["input_ids"]
    assert half.last.dropped > 0 and half.last.position_ids is not None
    one = {name: inputs[name][:1] for name in ("input_ids", "pixel_values", "image_sizes")}
    with torch.no_grad():  # no attention mask at all
        assert torch.equal(full(**one).logits, bundle.model(**one).logits)


@pytest.mark.parametrize("family", ["next", "onevision"])
def test_image_outputs_carry_the_towers_fields(family, request, images, make_selector):
    bundle = bundle_for(family, request)
    inputs = bundle.inputs(images, PROMPTS)
    full, half = wrappers(bundle, make_selector)
    with torch.no_grad():
        expected, actual = bundle.model(**inputs).image_outputs, full(**inputs).image_outputs
        pruned = half(**inputs).image_outputs
    assert list(actual.keys()) == list(expected.keys())
    assert torch.equal(actual.last_hidden_state, expected.last_hidden_state)
    assert len(actual.hidden_states) == len(expected.hidden_states)
    for mine, theirs in zip(actual.hidden_states, expected.hidden_states):
        assert (mine is None and theirs is None) or torch.equal(mine, theirs)
    assert all(torch.equal(a, b) for a, b in zip(actual.pooler_output, expected.pooler_output))
    assert torch.equal(pruned.last_hidden_state, expected.last_hidden_state)  # every crop, as the tower saw it
    assert [len(p) for p in pruned.pooler_output] == half.last.tokens_after  # what the LLM read


# --------------------------------------------------------------------------- generation modes
@pytest.mark.parametrize("family", ["next", "onevision"])
def test_beam_search_sampling_and_static_cache(family, request, images, make_selector):
    bundle = bundle_for(family, request)
    inputs = bundle.inputs(images, PROMPTS)
    full, half = wrappers(bundle, make_selector)
    for options in ({"num_beams": 2}, {"cache_implementation": "static"}, {"num_beams": 2, "num_return_sequences": 2}):
        expected = bundle.model.generate(**inputs, **GREEDY, **options)
        assert torch.equal(full.generate(**inputs, **GREEDY, **options), expected), options
        assert half.generate(**inputs, **GREEDY, **options).shape[0] == expected.shape[0]
    torch.manual_seed(3)
    expected = bundle.model.generate(**inputs, max_new_tokens=4, do_sample=True)
    torch.manual_seed(3)
    assert torch.equal(full.generate(**inputs, max_new_tokens=4, do_sample=True), expected)
    assert len(half.last.mm_encoder_outputs["image"].pooler_output) == 2  # generate's beam expansion works on a copy


@pytest.mark.parametrize("family", ["next", "onevision"])
def test_continuing_from_the_cache(family, request, images, make_selector):
    bundle = bundle_for(family, request)
    inputs = bundle.inputs(images, PROMPTS)
    full, half = wrappers(bundle, make_selector)
    with torch.no_grad():
        first, mine = bundle.model(**inputs, use_cache=True), full(**inputs, use_cache=True)
        token = first.logits[:, -1].argmax(dim=-1, keepdim=True)
        mask = torch.cat([inputs["attention_mask"], torch.ones_like(token)], dim=1)
        expected = bundle.model(input_ids=token, attention_mask=mask, cache=first.cache).logits
        assert torch.equal(full(input_ids=token, attention_mask=mask, cache=mine.cache).logits, expected)
        pruned = half(**inputs, use_cache=True)  # keep 0.5: continue from pruned.last's mask
        assert pruned.cache.get_seq_length() == half.last.input_ids.shape[1] < inputs["input_ids"].shape[1]
        mask = torch.cat([half.last.attention_mask, torch.ones_like(token)], dim=1)
        positions = torch.tensor(half.last.lengths)[:, None]
        step = half(input_ids=token, attention_mask=mask, position_ids=positions, cache=pruned.cache).logits
    assert step.shape[:2] == (2, 1) and bool(torch.isfinite(step).all())


@pytest.mark.parametrize("family", ["next", "onevision"])
def test_generate_accepts_and_shortens_position_ids(family, request, images, make_selector):
    bundle = bundle_for(family, request)
    inputs = bundle.inputs(images, PROMPTS)
    positions = (inputs["attention_mask"].cumsum(dim=1) - 1).clamp_min(0)
    full, half = wrappers(bundle, make_selector)
    expected = bundle.model.generate(**inputs, position_ids=positions, **GREEDY)
    assert torch.equal(full.generate(**inputs, position_ids=positions, **GREEDY), expected)
    out = half.generate(**inputs, position_ids=positions, **GREEDY)
    assert half.last.position_ids.shape == half.last.input_ids.shape and out.shape[0] == 2


class FrameCounts:
    """Adaptive: frame ``i`` (of all videos, in order) keeps its first ``counts[i]`` tokens."""

    name = "frame_counts"

    def __init__(self, counts: list[int]) -> None:
        self.counts = counts

    def select(self, features, keep=None, *, padding_mask=None, extras=None, grid=None, generator=None):
        return selection_from_mask(features, torch.arange(features.shape[1])[None] < torch.tensor(self.counts)[:, None])


def test_videos_of_different_kept_counts_keep_their_rows_under_beam_expansion(onevision_bundle):
    frames, model = 3, onevision_bundle.model
    count = video_placeholders(model.config, frames)
    prompt = "user : " + " ".join(["<video>"] * count) + " describe it"
    inputs = dict(onevision_bundle.processor.tokenizer([prompt, prompt], return_tensors="pt"))
    inputs["pixel_values_videos"] = torch.randn(2, frames, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    pruned = prune_visual_tokens(model, FrameCounts([4] * frames + [1] * frames))
    prepared = pruned.prepare(**inputs)
    first, second = (video.features for video in prepared.videos)
    outputs = pruned.generate_inputs(prepared, False)["mm_encoder_outputs"]
    expanded = onevision_bundle.model._expand_multimodal_outputs(prepared.input_ids, outputs, expand_size=2)
    features = expanded["video"].pooler_output.flatten(0, 1)  # what the model scatters, in row order
    assert torch.equal(features, torch.cat([first, first, second, second]))
    assert pruned.generate(**inputs, num_beams=2, **GREEDY).shape[0] == 2


# ------------------------------------------------------------------------------------ the registry
def test_unsupported_models_get_one_line_naming_the_class_and_the_supported_types(make_selector):
    with pytest.raises(UserError) as caught:
        prune_visual_tokens(torch.nn.Linear(2, 2), make_selector())
    message = str(caught.value)
    assert "\n" not in message and "Linear" in message and "llava_next" in message and "llava_onevision" in message


def test_registered_families_are_looked_up_by_model_type(next_bundle, make_selector):
    assert {"llava_next", "llava_onevision"} <= set(supported()) and "llava_next" in FAMILIES
    assert wrapper_for(next_bundle.model) is PrunedLlavaNext

    class Custom(PrunedLlavaNext):
        family = "custom"

    register_family("custom_vlm", lambda: Custom)
    assert wrapper_for("custom_vlm") is Custom
    config = type("Config", (), {"model_type": "custom_vlm"})()
    assert wrapper_for(config) is Custom


def test_wrapping_one_family_imports_no_other():
    code = (
        "import sys; from token_reduction.vlm.families import wrapper_for; wrapper_for('llava_next'); "
        "print(sorted(m for m in sys.modules if m.startswith('token_reduction.vlm.')))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "llava_next" in loaded and "llava_onevision" not in loaded and "qwen" not in loaded


# ------------------------------------------------------------------------------ the shared shortener
def test_shorten_placeholders_on_a_toy_batch():
    from token_reduction.vlm.sequence import PrunedImage, shorten_placeholders

    ids = torch.tensor([[0, 5, 9, 9, 9, 6], [5, 9, 9, 9, 6, 7]])  # 9: placeholder, 0: left padding
    mask = torch.tensor([[0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    images = [PrunedImage(torch.zeros(1, 2), 3), PrunedImage(torch.zeros(3, 2), 3)]  # row 0 keeps 1 of 3
    positions = torch.arange(6).expand(3, 2, 6) + 10  # (3, B, L) positions, as multimodal RoPE has them
    shift_labels = torch.tensor([[-100, -100, -100, -100, 61, 62], [-100, -100, -100, 60, 70, -100]])
    out = shorten_placeholders(
        ids, mask, 9, images, pad_token_id=0, position_ids=positions, labels=ids, extra={"shift_labels": shift_labels}
    )
    assert out.input_ids.tolist() == [[0, 0, 0, 5, 9, 6], [5, 9, 9, 9, 6, 7]]
    assert out.attention_mask.tolist() == [[0, 0, 0, 1, 1, 1], [1, 1, 1, 1, 1, 1]]
    assert out.position_ids.shape == (3, 2, 6) and out.position_ids[:, 0, 3:].tolist() == [[11, 12, 13]] * 3
    assert out.extra["shift_labels"][0, -2:].tolist() == [61, 62] and out.dropped == 2  # the kept <image> now precedes 6
    decided = torch.zeros_like(ids, dtype=torch.bool)
    decided[0, 3:5] = True  # the caller decides which positions go (e.g. separators between runs)
    again = shorten_placeholders(ids, mask, 9, images, pad_token_id=0, dropped=decided)
    assert again.input_ids.tolist() == out.input_ids.tolist()
