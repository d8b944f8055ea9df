"""Pruning the visual context of a tiny InternVL (dynamic tiles + thumbnail, 2x2 pixel shuffle)."""

from __future__ import annotations

import pytest
import torch

from token_reduction.errors import UserError
from token_reduction.vlm import prune_visual_tokens
from token_reduction.vlm.internvl import PrunedCrops, PrunedInternVL, group_crops, run_lengths
from vlm.builders import assert_same_as_model
from vlm.shuffle_models import TOKENS_PER_CROP, FixedCounts, KeepFirst, build_internvl, random_image, tiny_selector

ONE = "user : <IMG_CONTEXT> what is in the image ?"
SHORT = "user : <IMG_CONTEXT> describe it"
TWO = "user : <IMG_CONTEXT> <IMG_CONTEXT> what is in the image ?"
FEATURE_DIM = 32 * 4  # vision hidden 32, 2x2 pixel shuffle


@pytest.fixture(scope="module")
def bundle():
    return build_internvl()


@pytest.fixture(scope="module")
def wide():
    return random_image(20, 37, seed=1)  # 2 tiles + thumbnail


@pytest.fixture(scope="module")
def square():
    return random_image(16, 16, seed=2)  # one crop


def cases(bundle, wide, square) -> dict[str, dict]:
    return {
        "one_image": bundle.inputs([wide], [ONE]),
        "two_sizes_left_padded": bundle.inputs([wide, square], [ONE, SHORT]),
        "two_images_one_prompt": bundle.inputs([wide, square], [TWO]),
    }


@pytest.mark.parametrize("case", ["one_image", "two_sizes_left_padded", "two_images_one_prompt"])
def test_keep_all_gives_identical_logits_and_generated_ids(bundle, wide, square, case):
    inputs = cases(bundle, wide, square)[case]
    if case == "two_sizes_left_padded":
        assert not bool(inputs["attention_mask"][1, 0]) and bool(inputs["attention_mask"][:, -1].all())
    pruned = PrunedInternVL(bundle.model, tiny_selector(FEATURE_DIM), keep=1.0)
    assert_same_as_model(bundle, pruned, inputs, dict(max_new_tokens=5, do_sample=False))
    assert torch.equal(pruned.last.input_ids, inputs["input_ids"])


def test_crops_are_read_off_the_prompt_and_each_has_its_own_budget(bundle, wide, square):
    inputs = bundle.inputs([wide, square], [ONE, SHORT])
    pruned = prune_visual_tokens(bundle.model, KeepFirst(), keep=0.5)
    assert isinstance(pruned, PrunedInternVL)
    assert pruned.crops_per_image(inputs["input_ids"]) == [3, 1]
    prepared = pruned.prepare(**inputs)
    assert all(isinstance(image, PrunedCrops) for image in prepared.images)
    assert [image.crops_before for image in prepared.images] == [[16, 16, 16], [16]]
    assert [image.crops_after for image in prepared.images] == [[8, 8, 8], [8]]  # tiles and thumbnail alike
    assert prepared.tokens_before == [48, 16] and prepared.tokens_after == [24, 8]


def test_input_shrinks_by_exactly_the_dropped_count_per_row(bundle, wide, square):
    inputs = bundle.inputs([wide, square], [ONE, SHORT])
    selector = FixedCounts([None, 5, 0, 3])  # adaptive: crops keep 16, 5, 0 and 3
    pruned = PrunedInternVL(bundle.model, selector)
    prepared = pruned.prepare(**inputs)
    assert selector.seen == [((4, 16, FEATURE_DIM), (4, 4))]  # every crop, shuffled: 4x4 tokens of 128 dims
    assert prepared.tokens_before == [48, 16] and prepared.tokens_after == [21, 3]
    dropped = torch.tensor(prepared.tokens_before) - torch.tensor(prepared.tokens_after)
    assert prepared.attention_mask.sum(dim=1).tolist() == (inputs["attention_mask"].sum(dim=1) - dropped).tolist()
    assert prepared.input_ids.shape[1] == int(prepared.attention_mask.sum(dim=1).max())
    image_id = bundle.model.config.image_token_id
    assert (prepared.input_ids == image_id).sum(dim=1).tolist() == [21, 3]
    for row in range(2):  # <img>, </img> and the text survive untouched, in order
        old = inputs["input_ids"][row][inputs["attention_mask"][row].bool()]
        new = prepared.input_ids[row][prepared.attention_mask[row].bool()]
        assert torch.equal(old[old != image_id], new[new != image_id])
    assert bool(prepared.attention_mask[:, -1].all())  # still left-padded
    with torch.no_grad():
        assert pruned(**inputs).logits.shape[:2] == prepared.input_ids.shape


def test_kept_tokens_are_the_models_own_projected_tokens(bundle, wide):
    inputs = bundle.inputs([wide], [ONE])
    pruned = PrunedInternVL(bundle.model, KeepFirst(), keep=2)
    prepared = pruned.prepare(**inputs)
    with torch.no_grad():
        everything = bundle.model.model.get_image_features(inputs["pixel_values"]).pooler_output  # (crops, 16, D)
        shown = pruned.selector_features(**inputs)
    assert [tuple(f.shape) for f in shown] == [(16, FEATURE_DIM)] * 3
    assert pruned.selector_grids(**inputs) == [(4, 4)] * 3
    torch.testing.assert_close(prepared.images[0].features, everything[:, :2].reshape(-1, everything.shape[-1]))
    torch.testing.assert_close(bundle.model.model.multi_modal_projector(torch.stack(shown)), everything)


def test_generate_at_half_keep_runs_on_a_shorter_prompt(bundle, wide, square):
    inputs = bundle.inputs([wide, square], [ONE, SHORT])
    pruned = PrunedInternVL(bundle.model, tiny_selector(FEATURE_DIM), keep=0.5)
    out = pruned.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    prompt = pruned.last.input_ids
    assert pruned.last.tokens_after == [24, 8]
    assert prompt.shape[1] == inputs["input_ids"].shape[1] - 24  # the longer row dropped 24 tokens
    assert out.shape == (2, prompt.shape[1] + 4) and torch.equal(out[:, : prompt.shape[1]], prompt)


def test_adaptive_selector_decides_the_count_per_crop(bundle, wide, square):
    inputs = bundle.inputs([wide, square], [ONE, SHORT])
    pruned = prune_visual_tokens(bundle.model, tiny_selector(FEATURE_DIM), threshold=0.5)
    counts = [sum(pruned.prepare(**inputs, threshold=t).tokens_after) for t in (0.0, 0.5, 0.9, 0.99, 1.0)]
    assert counts[0] == 64 and counts == sorted(counts, reverse=True) and counts[-1] < counts[0]
    threshold = next(t for t in (0.5, 0.9, 0.99, 1.0) if sum(pruned.prepare(**inputs, threshold=t).tokens_after) < 64)
    out = pruned.generate(**inputs, threshold=threshold, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert out.shape == (2, pruned.last.input_ids.shape[1] + 3)
    assert sum(pruned.last.tokens_after) < sum(pruned.last.tokens_before)


def test_multi_image_prompt_prunes_each_image_in_its_own_run(bundle, wide, square):
    inputs = bundle.inputs([wide, square], [TWO])
    image_id = bundle.model.config.image_token_id
    full = PrunedInternVL(bundle.model, FixedCounts([None] * 4)).prepare(**inputs)
    cut = PrunedInternVL(bundle.model, FixedCounts([None, None, None, 2])).prepare(**inputs)
    assert cut.tokens_before == [48, 16] and cut.tokens_after == [48, 2]
    assert cut.input_ids.shape[1] == inputs["input_ids"].shape[1] - 14
    torch.testing.assert_close(cut.images[0].features, full.images[0].features)  # image 0 is untouched
    with torch.no_grad():
        hidden = bundle.model.model(**cut.model_kwargs(), output_hidden_states=True).hidden_states[0][0]
    slots = (cut.input_ids[0] == image_id).nonzero().squeeze(1)
    torch.testing.assert_close(hidden[slots], torch.cat([cut.images[0].features, cut.images[1].features]))
    assert run_lengths(cut.input_ids == image_id) == [48, 2]  # each image still between its own <img> ... </img>
    quarter = PrunedInternVL(bundle.model, KeepFirst(), keep=0.25)
    out = quarter.generate(**inputs, max_new_tokens=2, min_new_tokens=2, do_sample=False)
    assert quarter.last.tokens_after == [12, 4] and out.shape[1] == quarter.last.input_ids.shape[1] + 2


def test_video_frames_are_pruned_as_one_crop_images(bundle, wide, square):
    """InternVL feeds a video as frames, each ``<img>`` + one crop's ``<IMG_CONTEXT>`` + ``</img>``, in ``pixel_values``."""
    run = "<img>" + "<IMG_CONTEXT>" * TOKENS_PER_CROP + "</img>"
    text = f"user : Frame1: {run} Frame2: {run} what is in the image ?"
    ids = bundle.processor.tokenizer([text], return_tensors="pt")
    frames = bundle.processor.image_processor([wide, square], crop_to_patches=False, return_tensors="pt")["pixel_values"]
    inputs = {**ids, "pixel_values": frames}
    keep_all = PrunedInternVL(bundle.model, KeepFirst(), keep=1.0)
    with torch.no_grad():
        assert torch.equal(keep_all(**inputs).logits, bundle.model(**inputs).logits)
    half = PrunedInternVL(bundle.model, KeepFirst(), keep=0.5)
    out = half.generate(**inputs, max_new_tokens=2, min_new_tokens=2, do_sample=False)
    assert half.last.tokens_before == [16, 16] and half.last.tokens_after == [8, 8]
    assert out.shape[1] == inputs["input_ids"].shape[1] - 16 + 2


def test_several_sequences_per_prompt_pair_rows_with_their_own_images(bundle, wide, square):
    inputs = bundle.inputs([wide, square], [ONE, SHORT])
    keep_all = PrunedInternVL(bundle.model, KeepFirst(), keep=1.0)
    expected = bundle.model.generate(**inputs, max_new_tokens=3, num_beams=2, num_return_sequences=2, do_sample=False)
    assert torch.equal(keep_all.generate(**inputs, max_new_tokens=3, num_beams=2, num_return_sequences=2, do_sample=False), expected)
    half = PrunedInternVL(bundle.model, KeepFirst(), keep=0.5)
    out = half.generate(**inputs, max_new_tokens=3, num_beams=2, num_return_sequences=2, do_sample=False)
    assert out.shape[0] == 4


def test_inputs_embeds_prune_like_input_ids(bundle, wide, square):
    inputs = bundle.inputs([wide, square], [ONE, SHORT])
    pruned = PrunedInternVL(bundle.model, KeepFirst(), keep=0.25)
    embeds = bundle.model.get_input_embeddings()(inputs["input_ids"])
    with torch.no_grad():
        by_ids = pruned(**inputs).logits
        by_embeds = pruned(inputs_embeds=embeds, pixel_values=inputs["pixel_values"], attention_mask=inputs["attention_mask"]).logits
    assert pruned.last.tokens_after == [12, 4]
    torch.testing.assert_close(by_embeds, by_ids)


def test_clear_errors(bundle, wide, square):
    inputs = bundle.inputs([wide, square], [ONE, SHORT])
    from token_reduction.models.backbone import TrunkConfig
    from token_reduction.models.selector import TokenSelector

    with pytest.raises(ValueError, match=r"32-dim.*128-dim"):  # a selector trained on unshuffled tokens
        PrunedInternVL(bundle.model, TokenSelector(32, TrunkConfig(width=16, depth=1, heads=2)))
    pruned = PrunedInternVL(bundle.model, KeepFirst(), keep=0.5)
    with pytest.raises(UserError, match="pixel_values: holds 3 crops"):
        pruned.prepare(**dict(inputs, pixel_values=inputs["pixel_values"][:3]))
    cut = inputs["input_ids"][:, :-10], inputs["attention_mask"][:, :-10]
    with pytest.raises(UserError, match="not a multiple of 16"):
        pruned.prepare(**dict(inputs, input_ids=cut[0], attention_mask=cut[1]))


def test_text_only_calls_pass_through(bundle):
    ids = bundle.processor.tokenizer(["user : describe a cat"], return_tensors="pt")
    pruned = PrunedInternVL(bundle.model, KeepFirst(), keep=0.5)
    with torch.no_grad():
        assert torch.equal(pruned(**ids).logits, bundle.model(**ids).logits)


def test_group_crops():
    assert group_crops([False, False, True, True, False]) == [3, 1, 1]
    assert group_crops([]) == []


def test_per_call_vision_feature_layer_matches_the_model(bundle, wide):
    inputs = bundle.inputs([wide], [ONE])
    pruned = PrunedInternVL(bundle.model, KeepFirst(), keep=1.0)
    with torch.no_grad():
        expected = bundle.model(**inputs, vision_feature_layer=-2).logits
        assert torch.equal(pruned(**inputs, vision_feature_layer=-2).logits, expected)
        assert not torch.equal(expected, bundle.model(**inputs).logits)
