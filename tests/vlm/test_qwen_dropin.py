"""Tiny Qwen2-VL / Qwen2.5-VL / Qwen3-VL / Qwen3.5 wrapped as a drop-in: the shared wrapper's behaviours.

Each test calls the model the ways a transformers user does (masked placeholders, ``inputs_embeds``
with and without ``input_ids``, missing token types, ``image_outputs``, ``shift_labels``, beams)
and compares the wrapper at ``keep=1.0`` with the unpatched model (``torch.equal``); at
``keep=0.5`` the same call runs on the shortened prompt.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from vlm.qwen_models import FAMILIES, NEW, bundle_cache, generate, scenario
from token_reduction.vlm.qwen_vl import PrunedQwenVL


@pytest.fixture(scope="module")
def bundles() -> Any:
    return bundle_cache()


def wrappers(bundle: Any, make_selector: Any) -> tuple[PrunedQwenVL, PrunedQwenVL]:
    """The same model wrapped at keep 1.0 and keep 0.5."""
    return PrunedQwenVL(bundle.model, make_selector(), keep=1.0), PrunedQwenVL(bundle.model, make_selector(), keep=0.5)


def fresh(model: Any) -> Any:
    """``model`` with no ``rope_deltas`` left by an earlier call (its forward reads them without input_ids)."""
    model.model.rope_deltas = None
    return model


@pytest.mark.parametrize("family", FAMILIES)
def test_placeholders_under_a_zero_attention_mask_are_filled_like_the_model(family, bundles, make_selector):
    bundle = bundles(family)
    inputs = scenario(bundle, "batch")
    positions, _ = bundle.model.model.get_rope_index(
        inputs["input_ids"], inputs["mm_token_type_ids"], inputs["image_grid_thw"], attention_mask=inputs["attention_mask"]
    )
    image_token = bundle.model.config.image_token_id
    slots = (inputs["input_ids"][0] == image_token).nonzero().squeeze(1)
    inputs["attention_mask"][0, slots[:5]] = 0  # masked, yet the model scatters image tokens into them
    full, half = wrappers(bundle, make_selector)
    with torch.no_grad():
        expected = bundle.model(**inputs, position_ids=positions).logits
        assert torch.equal(full(**inputs, position_ids=positions).logits, expected)
        logits = half(**inputs, position_ids=positions).logits
    assert torch.equal(generate(full, inputs, position_ids=positions), generate(bundle.model, inputs, position_ids=positions))
    last = half.last
    assert logits.shape[1] == last.input_ids.shape[1]
    dropped = [b - a for b, a in zip(last.tokens_before, last.tokens_after)]
    present = (inputs["attention_mask"].bool() | (inputs["input_ids"] == image_token)).sum(dim=1)
    assert ((last.attention_mask.bool() | (last.input_ids == image_token)).sum(dim=1)).tolist() == (present - torch.tensor(dropped)).tolist()
    assert last.lengths == last.kept.sum(dim=1).tolist()  # masked placeholders that survive stay masked
    assert torch.equal(last.position_ids[:, last.attention_mask.bool()], positions[:, last.kept])
    no_types = {name: value for name, value in inputs.items() if name != "mm_token_type_ids"}
    assert torch.equal(generate(full, no_types), generate(bundle.model, no_types))  # the model's text positions
    # With token types and no positions the model's get_rope_index cannot place masked placeholders.
    with pytest.raises(RuntimeError), torch.no_grad():
        bundle.model(**inputs)
    with pytest.raises(ValueError, match="attention_mask: is 0 on 5 visual placeholders"):
        half(**inputs)


@pytest.mark.parametrize("family", FAMILIES)
def test_inputs_embeds_without_input_ids(family, bundles, make_selector):
    bundle = bundles(family)
    inputs = scenario(bundle, "batch")
    embeds = bundle.model.get_input_embeddings()(inputs["input_ids"]).detach()
    no_ids = {name: value for name, value in inputs.items() if name != "input_ids"}
    full, half = wrappers(bundle, make_selector)
    with torch.no_grad():
        expected = fresh(bundle.model)(**no_ids, inputs_embeds=embeds).logits
        assert torch.equal(fresh(bundle.model) and full(**no_ids, inputs_embeds=embeds).logits, expected)
        assert torch.equal(generate(full, no_ids, inputs_embeds=embeds), generate(bundle.model, no_ids, inputs_embeds=embeds))
        # placeholders found in the embeddings (get_placeholder_mask's rule): pruned as through input_ids;
        # without input_ids the model has no 3-D positions, so the call matches one without token types
        logits = half(**no_ids, inputs_embeds=embeds).logits
        assert half.last.input_ids is None and half.last.dropped > 0
        dropped = sum(b - a for b, a in zip(half.last.tokens_before, half.last.tokens_after))
        assert half.last.inputs_embeds.shape[1] < embeds.shape[1] and sum(half.last.lengths) == int(inputs["attention_mask"].sum()) - dropped
        no_types = {name: value for name, value in inputs.items() if name != "mm_token_type_ids"}
        assert torch.equal(logits, half(**no_types).logits)
    new_tokens = generate(half, no_ids, inputs_embeds=embeds)
    assert torch.equal(new_tokens, generate(half, no_types)[:, -NEW:])


@pytest.mark.parametrize("family", FAMILIES)
def test_input_ids_with_inputs_embeds_shortens_both(family, bundles, make_selector):
    bundle = bundles(family)
    inputs = scenario(bundle, "batch")
    embeds = bundle.model.get_input_embeddings()(inputs["input_ids"]).detach()
    full, half = wrappers(bundle, make_selector)
    assert torch.equal(generate(full, inputs, inputs_embeds=embeds), generate(bundle.model, inputs, inputs_embeds=embeds))
    out = generate(half, inputs, inputs_embeds=embeds)
    assert half.last.inputs_embeds.shape[:2] == half.last.input_ids.shape and half.last.dropped > 0
    assert torch.equal(out, generate(half, inputs))  # 3-D positions from input_ids, as without embeddings
    if family in ("qwen2_vl", "qwen2_5_vl"):  # Qwen3-VL / Qwen3.5's forward refuses both, wrapped or not
        with torch.no_grad():
            assert torch.equal(full(**inputs, inputs_embeds=embeds).logits, bundle.model(**inputs, inputs_embeds=embeds).logits)


@pytest.mark.parametrize("family", FAMILIES)
def test_missing_token_types_behave_as_the_model(family, bundles, make_selector):
    bundle = bundles(family)
    inputs = {name: value for name, value in scenario(bundle, "batch").items() if name != "mm_token_type_ids"}
    full, half = wrappers(bundle, make_selector)
    assert torch.equal(generate(full, inputs), generate(bundle.model, inputs))  # generate: text positions
    with torch.no_grad():
        if family == "qwen2_5_vl":  # its forward falls back to text positions too
            assert torch.equal(fresh(full)(**inputs).logits, fresh(bundle.model)(**inputs).logits)
        else:  # the others refuse, wrapped or not
            with pytest.raises(ValueError, match="mm_token_type_ids"):
                bundle.model(**inputs)
            with pytest.raises(ValueError, match="mm_token_type_ids"):
                full(**inputs)
    half.prepare(**inputs)
    real = half.last.attention_mask.bool()
    text = (inputs["attention_mask"].cumsum(dim=1) - 1)[half.last.kept]
    assert torch.equal(half.last.position_ids[:, real], text.expand(3, -1))  # kept slots keep those positions


@pytest.mark.parametrize("family", FAMILIES)
def test_image_outputs_carry_the_towers_fields(family, bundles, make_selector):
    bundle = bundles(family)
    inputs = scenario(bundle, "batch")
    full, half = wrappers(bundle, make_selector)
    with torch.no_grad():
        expected, actual, pruned = bundle.model(**inputs).image_outputs, full(**inputs).image_outputs, half(**inputs).image_outputs
    assert type(actual) is type(expected) and list(actual.keys()) == list(expected.keys())
    assert torch.equal(actual.last_hidden_state, expected.last_hidden_state)
    assert all(torch.equal(a, b) for a, b in zip(actual.pooler_output, expected.pooler_output, strict=True))
    for mine, theirs in zip(getattr(actual, "deepstack_features", None) or [], getattr(expected, "deepstack_features", None) or []):
        assert all(torch.equal(a, b) for a, b in zip(mine, theirs, strict=True))
    assert torch.equal(pruned.last_hidden_state, expected.last_hidden_state)  # every patch, as the tower saw it
    assert [len(p) for p in pruned.pooler_output] == half.last.tokens_after  # what the LLM read


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_labels_shift_labels_and_beams_as_the_model(family, bundles, make_selector):
    bundle = bundles(family)
    inputs = scenario(bundle, "batch")
    ids = inputs["input_ids"]
    labels = ids.masked_fill((ids == bundle.model.config.image_token_id) | (inputs["attention_mask"] == 0), -100)
    shift = torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], -100)], dim=1)
    full, half = wrappers(bundle, make_selector)
    with torch.no_grad():
        expected = bundle.model(**inputs, labels=labels, shift_labels=shift).loss
        assert torch.equal(full(**inputs, labels=labels, shift_labels=shift).loss, expected)
        loss = half(**inputs, labels=labels).loss
        assert torch.equal(half(**inputs, labels=labels, shift_labels=shift).loss, loss)
    assert torch.equal(half.last.extra["shift_labels"][:, :-1], half.last.labels[:, 1:])
    assert torch.equal(generate(full, inputs, num_beams=2), generate(bundle.model, inputs, num_beams=2))
    assert generate(half, inputs, num_beams=2, num_return_sequences=2).shape[0] == 4
