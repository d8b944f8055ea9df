"""Multi-image prompts: every image pruned on its own budget, placeholders lined up in reading order."""

from __future__ import annotations

import re

import pytest
import torch
from vlm.builders import KeepFirst

from token_reduction.cli.chat import chat_main
from token_reduction.vlm import prune_visual_tokens
from token_reduction.selection.base import TokenSelection, selection_from_mask

PROMPT = "user : <image> <image> what is in the image ?"


class FixedCounts:
    """Adaptive: crop ``i`` keeps its first ``counts[i]`` valid tokens (``None``: all)."""

    name = "fixed_counts"

    def __init__(self, counts):
        self.counts = counts

    def select(self, features, keep=None, *, padding_mask=None, extras=None, grid=None, generator=None) -> TokenSelection:
        assert features.shape[0] == len(self.counts), f"expected {len(self.counts)} crops, got {features.shape[0]}"
        valid = torch.ones(features.shape[:2], dtype=torch.bool) if padding_mask is None else ~padding_mask
        limit = torch.tensor([features.shape[1] if c is None else c for c in self.counts])
        return selection_from_mask(features, valid & (valid.long().cumsum(dim=1) <= limit[:, None]))


@pytest.fixture()
def two_images(make_image):
    return [make_image(20, 37, seed=11), make_image(16, 16, seed=12)]


def test_two_image_prompt_keep_all_equals_the_unpatched_model(onevision_bundle, two_images):
    inputs = onevision_bundle.inputs([two_images], [PROMPT])
    assert inputs["batch_num_images"].tolist() == [2]
    pruned = prune_visual_tokens(onevision_bundle.model, KeepFirst(), keep=1.0)
    with torch.no_grad():
        torch.testing.assert_close(pruned(**inputs).logits, onevision_bundle.model(**inputs).logits, rtol=1e-5, atol=1e-5)
    expected = onevision_bundle.model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert torch.equal(pruned.generate(**inputs, max_new_tokens=4, do_sample=False), expected)
    assert pruned.last.tokens_after == pruned.last.tokens_before == [17, 17]


def test_each_image_has_its_own_budget_and_the_input_shrinks_by_the_dropped_count(onevision_bundle, two_images):
    inputs = onevision_bundle.inputs([two_images], [PROMPT])
    image_id = onevision_bundle.model.config.image_token_id
    pruned = prune_visual_tokens(onevision_bundle.model, FixedCounts([3, 10]))  # adaptive: different counts
    prepared = pruned.prepare(**inputs)
    assert prepared.tokens_before == [17, 17] and prepared.tokens_after == [4, 11]  # + the trailing newline each
    dropped = sum(prepared.tokens_before) - sum(prepared.tokens_after)
    assert prepared.input_ids.shape[1] == inputs["input_ids"].shape[1] - dropped
    assert int((prepared.input_ids == image_id).sum()) == 15
    # The placeholder runs line up with the images: the text between them survives unchanged.
    old, new = inputs["input_ids"][0], prepared.input_ids[0]
    assert torch.equal(old[old != image_id], new[new != image_id])
    # A fraction applies to each image on its own (16 tokens each -> 4 each).
    quarter = prune_visual_tokens(onevision_bundle.model, KeepFirst(), keep=0.25).prepare(**inputs)
    assert quarter.tokens_after == [5, 5]
    with torch.no_grad():
        logits = pruned(**inputs).logits
    assert logits.shape[1] == prepared.input_ids.shape[1]


def test_features_land_in_their_own_images_placeholders(onevision_bundle, two_images):
    """Pruning the *second* image must not change what the LLM reads for the first one."""
    inputs = onevision_bundle.inputs([two_images], [PROMPT])
    image_id = onevision_bundle.model.config.image_token_id
    full = prune_visual_tokens(onevision_bundle.model, FixedCounts([None, None])).prepare(**inputs)
    cut = prune_visual_tokens(onevision_bundle.model, FixedCounts([None, 2])).prepare(**inputs)
    torch.testing.assert_close(cut.images[0].features, full.images[0].features)
    torch.testing.assert_close(cut.images[1].features[:2], full.images[1].features[:2])
    torch.testing.assert_close(cut.images[1].features[-1], full.images[1].features[-1])  # the newline stays
    embed = onevision_bundle.model.get_input_embeddings()
    with torch.no_grad():
        hidden = onevision_bundle.model.model(**cut.model_kwargs(), output_hidden_states=True).hidden_states[0][0]
    slots = (cut.input_ids[0] == image_id).nonzero().squeeze(1)
    expected = torch.cat([cut.images[0].features, cut.images[1].features])
    torch.testing.assert_close(hidden[slots], expected.to(hidden.dtype))
    assert not torch.allclose(hidden[slots[0]], embed(torch.tensor(image_id)))


def test_mixed_batch_of_a_multi_image_and_a_single_image_prompt(onevision_bundle, two_images, make_image):
    inputs = onevision_bundle.inputs([two_images, [make_image(24, 16, seed=13)]], [PROMPT, "user : <image> describe it"])
    assert inputs["batch_num_images"].tolist() == [2, 1]
    keep_all = prune_visual_tokens(onevision_bundle.model, KeepFirst(), keep=1.0)
    with torch.no_grad():
        torch.testing.assert_close(keep_all(**inputs).logits, onevision_bundle.model(**inputs).logits, rtol=1e-5, atol=1e-5)
    crops = [layout.num_crops for layout in keep_all.layouts(inputs["image_sizes"], batch_num_images=inputs["batch_num_images"])]
    assert crops[:2] == [1, 1] and crops[2] > 1  # the multi-image sample skips AnyRes, the single image does not
    pruned = prune_visual_tokens(onevision_bundle.model, KeepFirst(), keep=0.5)
    prepared = pruned.prepare(**inputs)
    old_lengths = inputs["attention_mask"].sum(dim=1)
    per_row = [prepared.tokens_before[0] + prepared.tokens_before[1], prepared.tokens_before[2]]
    kept_row = [prepared.tokens_after[0] + prepared.tokens_after[1], prepared.tokens_after[2]]
    expected = old_lengths - torch.tensor(per_row) + torch.tensor(kept_row)
    assert prepared.attention_mask.sum(dim=1).tolist() == expected.tolist()
    out = pruned.generate(**inputs, max_new_tokens=2, min_new_tokens=2, do_sample=False)
    assert out.shape == (2, prepared.input_ids.shape[1] + 2)


def test_next_two_images_in_one_prompt(next_bundle, two_images):
    inputs = next_bundle.inputs(two_images, ["user : <image> <image> describe it"])
    keep_all = prune_visual_tokens(next_bundle.model, KeepFirst(), keep=1.0)
    with torch.no_grad():
        torch.testing.assert_close(keep_all(**inputs).logits, next_bundle.model(**inputs).logits, rtol=1e-5, atol=1e-5)
    prepared = prune_visual_tokens(next_bundle.model, KeepFirst(), keep=0.25).prepare(**inputs)
    dropped = sum(prepared.tokens_before) - sum(prepared.tokens_after)
    assert len(prepared.tokens_after) == 2 and all(a < b for a, b in zip(prepared.tokens_after, prepared.tokens_before))
    assert prepared.input_ids.shape[1] == inputs["input_ids"].shape[1] - dropped


@pytest.fixture(scope="module")
def onevision_folder(tmp_path_factory, onevision_bundle):
    folder = tmp_path_factory.mktemp("onevision") / "model"
    onevision_bundle.model.save_pretrained(folder)
    onevision_bundle.processor.save_pretrained(folder)
    return folder


def test_chat_prints_counts_for_every_image_of_a_multi_image_prompt(onevision_folder, two_images, tmp_path, capsys):
    paths = []
    for i, picture in enumerate(two_images):
        picture.save(tmp_path / f"img{i}.png")
        paths += ["--image", str(tmp_path / f"img{i}.png")]
    argv = ["--model", str(onevision_folder), "--selector", "norm", *paths, "--prompt", "what is in the image ?"]
    assert chat_main([*argv, "--keep", "0.25", "--max-new-tokens", "2", "--device", "cpu"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("image ")]
    counts = [re.fullmatch(r"image (\d) \(img\d\.png\): (\d+) -> (\d+) visual tokens \(\d+% kept\)", line) for line in lines]
    assert [(int(m[1]), int(m[2]), int(m[3])) for m in counts] == [(0, 17, 5), (1, 17, 5)]  # 4 of 16 tokens + newline
