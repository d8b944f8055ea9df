"""Pruning the visual context of tiny Idefics3 and SmolVLM models (crop grid + global image, 2x2 pixel shuffle)."""

from __future__ import annotations

import pytest
import torch

from token_reduction.errors import UserError
from token_reduction.vlm import prune_visual_tokens
from token_reduction.vlm.idefics3 import PrunedIdefics3, PrunedSmolVLM
from token_reduction.vlm.internvl import run_lengths
from vlm.builders import assert_same_as_model
from vlm.shuffle_models import FixedCounts, KeepFirst, build_idefics3, random_image, tiny_selector

ONE = "user : <image> what is in the image ?"
SHORT = "user : <image> describe it"
TWO = "user : <image> <image> what is in the image ?"
FEATURE_DIM = 32 * 4  # vision hidden 32, 2x2 pixel shuffle
FAMILIES = ["idefics3", "smolvlm"]
WRAPPERS = {"idefics3": PrunedIdefics3, "smolvlm": PrunedSmolVLM}


@pytest.fixture(scope="module")
def bundles():
    return {family: build_idefics3(smol=family == "smolvlm") for family in FAMILIES}


@pytest.fixture(scope="module")
def wide():
    return random_image(10, 40, seed=1)  # resized to 8x32 -> a 1x2 grid of crops + the global image


@pytest.fixture(scope="module")
def square():
    return random_image(16, 16, seed=2)  # resized to 32x32 -> a 2x2 grid + the global image


def make_inputs(bundle, wide, square, case: str) -> dict:
    if case == "one_image":
        return bundle.inputs([[wide]], [ONE])
    if case == "two_sizes_left_padded":
        return bundle.inputs([[wide], [square]], [ONE, SHORT])
    if case == "two_images_one_prompt":
        return bundle.inputs([[wide, square]], [TWO])
    return bundle.inputs([[wide, square], [wide]], [TWO, SHORT])  # "mixed": row 1 gets padding crops


def tags_before_runs(input_ids, image_id) -> list[list[int]]:
    tags = []
    for row in input_ids:
        starts = ((row == image_id).long().diff(prepend=row.new_zeros(1)) == 1).nonzero().squeeze(1)
        tags.append(row[starts - 1].tolist())
    return tags


@pytest.mark.parametrize("case", ["one_image", "two_sizes_left_padded", "two_images_one_prompt", "mixed"])
@pytest.mark.parametrize("family", FAMILIES)
def test_keep_all_gives_identical_logits_and_generated_ids(bundles, wide, square, family, case):
    bundle = bundles[family]
    inputs = make_inputs(bundle, wide, square, case)
    if case == "two_sizes_left_padded":
        assert not bool(inputs["attention_mask"][0, 0]) and bool(inputs["attention_mask"][:, -1].all())
    pruned = WRAPPERS[family](bundle.model, tiny_selector(FEATURE_DIM), keep=1.0)
    assert_same_as_model(bundle, pruned, inputs, dict(max_new_tokens=5, do_sample=False))
    assert torch.equal(pruned.last.input_ids, inputs["input_ids"])


@pytest.mark.parametrize("family", FAMILIES)
def test_crops_group_into_images_and_each_crop_has_its_own_budget(bundles, wide, square, family):
    bundle = bundles[family]
    inputs = make_inputs(bundle, wide, square, "mixed")
    pruned = prune_visual_tokens(bundle.model, KeepFirst(), keep=0.5)
    assert type(pruned) is WRAPPERS[family]
    assert pruned.crop_layout(inputs["input_ids"]) == ([8, 3], [3, 5, 3])  # rows' crops; images' crops
    prepared = pruned.prepare(**inputs)
    assert [image.crops_before for image in prepared.images] == [[16] * 3, [16] * 5, [16] * 3]
    assert [image.crops_after for image in prepared.images] == [[8] * 3, [8] * 5, [8] * 3]  # grid crops and global alike
    assert prepared.tokens_before == [48, 80, 48] and prepared.tokens_after == [24, 40, 24]


@pytest.mark.parametrize("family", FAMILIES)
def test_input_shrinks_by_the_dropped_count_and_layout_tokens_stay(bundles, wide, square, family):
    bundle = bundles[family]
    inputs = make_inputs(bundle, wide, square, "two_sizes_left_padded")
    counts = [None, 0, 5, 1, 2, 3, 4, 0]  # adaptive: crops of row 0 (3), then row 1 (5)
    selector = FixedCounts(counts)
    pruned = WRAPPERS[family](bundle.model, selector)
    prepared = pruned.prepare(**inputs)
    assert selector.seen == [((8, 16, FEATURE_DIM), (4, 4))]  # every real crop, shuffled: 4x4 tokens of 128 dims
    assert prepared.tokens_before == [48, 80] and prepared.tokens_after == [21, 10]
    dropped = torch.tensor([27, 70])
    assert prepared.attention_mask.sum(dim=1).tolist() == (inputs["attention_mask"].sum(dim=1) - dropped).tolist()
    assert prepared.input_ids.shape[1] == int(prepared.attention_mask.sum(dim=1).max())
    image_id = bundle.model.config.image_token_id
    old, new = inputs["input_ids"], prepared.input_ids
    for row in range(2):  # <fake_token_around_image>, <row_r_col_c>, <global-img> and the text survive in order
        a, b = old[row][inputs["attention_mask"][row].bool()], new[row][prepared.attention_mask[row].bool()]
        assert torch.equal(a[a != image_id], b[b != image_id])
    # Every crop's shortened run still sits behind its own tag (a crop that kept nothing has no run).
    assert run_lengths(new == image_id) == [16, 5, 1, 2, 3, 4]
    tags = tags_before_runs(old, image_id)
    assert tags_before_runs(new, image_id) == [[tags[0][0], tags[0][2]], tags[1][:4]]
    assert bool(prepared.attention_mask[:, -1].all())  # still left-padded
    with torch.no_grad():
        assert pruned(**inputs).logits.shape[:2] == new.shape


@pytest.mark.parametrize("family", FAMILIES)
def test_kept_tokens_are_the_models_own_projected_tokens(bundles, wide, family):
    bundle = bundles[family]
    inputs = make_inputs(bundle, wide, None, "one_image")
    pruned = WRAPPERS[family](bundle.model, KeepFirst(), keep=2)
    prepared = pruned.prepare(**inputs)
    with torch.no_grad():
        everything = bundle.model.model.get_image_features(inputs["pixel_values"], inputs["pixel_attention_mask"]).pooler_output[0]
        shown = pruned.selector_features(**inputs)
    assert [tuple(f.shape) for f in shown] == [(16, FEATURE_DIM)] * 3
    assert pruned.selector_grids(**inputs) == [(4, 4)] * 3
    per_crop = everything.view(3, 16, -1)
    torch.testing.assert_close(prepared.images[0].features, per_crop[:, :2].reshape(-1, per_crop.shape[-1]))
    torch.testing.assert_close(bundle.model.model.connector.modality_projection(torch.stack(shown)), per_crop)


@pytest.mark.parametrize("family", FAMILIES)
def test_padded_patches_are_never_kept(bundles, wide, family):
    bundle = bundles[family]
    inputs = make_inputs(bundle, wide, None, "one_image")
    mask = inputs["pixel_attention_mask"].clone()
    mask[0, 2, :, 8:] = 0  # the global image's right half is padding: token columns 2 and 3
    selector = KeepFirst()
    pruned = WRAPPERS[family](bundle.model, selector, keep=1.0)
    prepared = pruned.prepare(**dict(inputs, pixel_attention_mask=mask))
    assert prepared.images[0].crops_after == [16, 16, 8]
    shown = pruned.selector_features(**dict(inputs, pixel_attention_mask=mask))
    assert [len(f) for f in shown] == [16, 16, 8]
    assert pruned.selector_grids(**dict(inputs, pixel_attention_mask=mask)) == [(4, 4), (4, 4), None]
    with torch.no_grad():
        features, valid, per_row = pruned.vision_features(inputs["pixel_values"], mask)
        kept = bundle.model.model.connector.modality_projection(features[2][valid[2]])
    assert per_row == [3] and bool(valid[:2].all())
    assert valid[2].view(4, 4).tolist() == [[True, True, False, False]] * 4
    torch.testing.assert_close(prepared.images[0].features[32:], kept)  # the real columns, as the tower saw them


@pytest.mark.parametrize("family", FAMILIES)
def test_generate_at_half_keep_and_adaptive(bundles, wide, square, family):
    bundle = bundles[family]
    inputs = make_inputs(bundle, wide, square, "two_sizes_left_padded")
    pruned = WRAPPERS[family](bundle.model, tiny_selector(FEATURE_DIM), keep=0.5)
    out = pruned.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    prompt = pruned.last.input_ids
    assert pruned.last.tokens_after == [24, 40]
    assert prompt.shape[1] == inputs["input_ids"].shape[1] - 40  # the longer row dropped 40 tokens
    assert out.shape == (2, prompt.shape[1] + 4) and torch.equal(out[:, : prompt.shape[1]], prompt)

    adaptive = prune_visual_tokens(bundle.model, tiny_selector(FEATURE_DIM), threshold=0.5)
    counts = [sum(adaptive.prepare(**inputs, threshold=t).tokens_after) for t in (0.0, 0.5, 0.9, 0.99, 1.0)]
    assert counts[0] == 128 and counts == sorted(counts, reverse=True) and counts[-1] < counts[0]
    threshold = next(t for t in (0.5, 0.9, 0.99, 1.0) if sum(adaptive.prepare(**inputs, threshold=t).tokens_after) < 128)
    out = adaptive.generate(**inputs, threshold=threshold, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert out.shape == (2, adaptive.last.input_ids.shape[1] + 3)
    assert sum(adaptive.last.tokens_after) < sum(adaptive.last.tokens_before)


@pytest.mark.parametrize("family", FAMILIES)
def test_multi_image_prompts_fill_each_images_own_runs(bundles, wide, square, family):
    bundle = bundles[family]
    inputs = make_inputs(bundle, wide, square, "mixed")
    image_id = bundle.model.config.image_token_id
    full = WRAPPERS[family](bundle.model, FixedCounts([None] * 11)).prepare(**inputs)
    cut = WRAPPERS[family](bundle.model, FixedCounts([None] * 3 + [2] * 5 + [None] * 3)).prepare(**inputs)
    assert cut.tokens_before == [48, 80, 48] and cut.tokens_after == [48, 10, 48]
    for image in (0, 2):
        torch.testing.assert_close(cut.images[image].features, full.images[image].features)
    assert cut.attention_mask.sum(dim=1).tolist() == (inputs["attention_mask"].sum(dim=1) - torch.tensor([70, 0])).tolist()
    with torch.no_grad():
        hidden = bundle.model.model(**cut.model_kwargs(), output_hidden_states=True).hidden_states[0]
    slots = cut.input_ids == image_id
    expected = torch.cat([image.features for image in cut.images])
    torch.testing.assert_close(hidden[slots], expected)
    quarter = WRAPPERS[family](bundle.model, KeepFirst(), keep=0.25)
    out = quarter.generate(**inputs, max_new_tokens=2, min_new_tokens=2, do_sample=False)
    assert quarter.last.tokens_after == [12, 20, 12] and out.shape[1] == quarter.last.input_ids.shape[1] + 2


@pytest.mark.parametrize("family", FAMILIES)
def test_beams_and_inputs_embeds(bundles, wide, square, family):
    bundle = bundles[family]
    inputs = make_inputs(bundle, wide, square, "two_sizes_left_padded")
    keep_all = WRAPPERS[family](bundle.model, KeepFirst(), keep=1.0)
    beams = dict(max_new_tokens=3, num_beams=2, num_return_sequences=2, do_sample=False)
    assert torch.equal(keep_all.generate(**inputs, **beams), bundle.model.generate(**inputs, **beams))
    pruned = WRAPPERS[family](bundle.model, KeepFirst(), keep=0.25)
    embeds = bundle.model.get_input_embeddings()(inputs["input_ids"])
    rest = {k: v for k, v in inputs.items() if k != "input_ids"}
    with torch.no_grad():
        by_ids = pruned(**inputs).logits
        by_embeds = pruned(inputs_embeds=embeds, **rest).logits  # crops and images found by embedding
    assert [image.crops_after for image in pruned.last.images] == [[4] * 3, [4] * 5]
    torch.testing.assert_close(by_embeds, by_ids)


@pytest.mark.parametrize("family", FAMILIES)
def test_clear_errors_and_text_only_pass_through(bundles, wide, square, family):
    bundle = bundles[family]
    from token_reduction.models.backbone import TrunkConfig
    from token_reduction.models.selector import TokenSelector

    with pytest.raises(ValueError, match=r"32-dim.*128-dim"):  # a selector trained on unshuffled patches
        WRAPPERS[family](bundle.model, TokenSelector(32, TrunkConfig(width=16, depth=1, heads=2)))
    inputs = make_inputs(bundle, wide, square, "two_sizes_left_padded")
    pruned = WRAPPERS[family](bundle.model, KeepFirst(), keep=0.5)
    swapped = dict(inputs, pixel_values=inputs["pixel_values"].flip(0), pixel_attention_mask=inputs["pixel_attention_mask"].flip(0))
    with pytest.raises(UserError, match=r"pixel_values: holds \[5, 3\] real crops per row"):
        pruned.prepare(**swapped)
    ids = bundle.processor.tokenizer(["user : describe a cat"], return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(pruned(**ids).logits, bundle.model(**ids).logits)
    assert torch.equal(pruned.generate(**ids, max_new_tokens=2), bundle.model.generate(**ids, max_new_tokens=2))


def test_smolvlm_video_frames_are_pruned_as_one_crop_images(bundles, wide, square):
    """SmolVLM feeds a video as frames in ``pixel_values``, each behind ``<global-img>`` like an unsplit image."""
    bundle = bundles["smolvlm"]
    frame = "<fake_token_around_image><global-img>" + "<image>" * 16 + "<fake_token_around_image>"
    ids = bundle.processor.tokenizer([f"user : Frame1: {frame} Frame2: {frame} what is in the image ?"], return_tensors="pt")
    pixels = bundle.processor.image_processor([[wide, square]], do_image_splitting=False, return_tensors="pt")
    inputs = {**ids, **pixels}
    assert tuple(inputs["pixel_values"].shape[:2]) == (1, 2)
    keep_all = PrunedSmolVLM(bundle.model, KeepFirst(), keep=1.0)
    with torch.no_grad():
        assert torch.equal(keep_all(**inputs).logits, bundle.model(**inputs).logits)
    half = PrunedSmolVLM(bundle.model, KeepFirst(), keep=0.5)
    out = half.generate(**inputs, max_new_tokens=2, min_new_tokens=2, do_sample=False)
    assert half.last.tokens_before == [16, 16] and half.last.tokens_after == [8, 8]
    assert out.shape[1] == inputs["input_ids"].shape[1] - 16 + 2


def test_other_scale_factors_shuffle_the_same_way(wide, square):
    """``scale_factor=4`` (SmolVLM-256M's): 4x4 patches per token, a 2x2 token grid of 32*16 dims per crop."""
    bundle = build_idefics3(smol=True, scale=4)
    inputs = make_inputs(bundle, wide, square, "two_sizes_left_padded")
    selector = FixedCounts([None] * 8)
    keep_all = PrunedSmolVLM(bundle.model, selector)
    with torch.no_grad():
        assert torch.equal(keep_all(**inputs).logits, bundle.model(**inputs).logits)
    assert selector.seen == [((8, 4, 32 * 16), (2, 2))]
    half = PrunedSmolVLM(bundle.model, KeepFirst(), keep=0.5)
    out = half.generate(**inputs, max_new_tokens=2, min_new_tokens=2, do_sample=False)
    assert half.last.tokens_before == [12, 20] and half.last.tokens_after == [6, 10]
    assert out.shape[1] == inputs["input_ids"].shape[1] - 10 + 2
