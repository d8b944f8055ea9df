"""Pruning tiny LLaVA-1.5, Mistral3 and Pixtral-12B-style (LLaVA + Pixtral tower) models."""

from __future__ import annotations

import pytest
import torch
from vlm.builders import GENERATE, KeepFirst, adaptive_counts, assert_same_as_model
from vlm.simple_models import build_llava15, build_llava_pixtral, build_mistral3, random_image

from token_reduction.errors import UserError
from token_reduction.vlm import prune_visual_tokens
from token_reduction.selection.base import TokenSelection, selection_from_mask
from token_reduction.vlm.llava15 import PrunedLlava15
from token_reduction.vlm.mistral3 import PrunedLlavaPixtral, PrunedMistral3

FAMILIES = ("llava15", "mistral3", "llava_pixtral")
BUILDERS = {"llava15": build_llava15, "mistral3": build_mistral3, "llava_pixtral": build_llava_pixtral}
WRAPPERS = {"llava15": PrunedLlava15, "mistral3": PrunedMistral3, "llava_pixtral": PrunedLlava15}


class KeepMasks:
    """Adaptive: keep ``masks[i % len(masks)]`` (kept positions, None: all) of the ``i``-th image it is shown; records what it saw."""

    name = "keep_masks"

    def __init__(self, masks: list[list[int] | None]) -> None:
        self.masks, self.seen, self.grids = masks, [], []

    def select(self, features, keep=None, *, padding_mask=None, extras=None, grid=None, generator=None) -> TokenSelection:
        kept = torch.zeros(features.shape[:2], dtype=torch.bool)
        for row in range(features.shape[0]):
            chosen = self.masks[len(self.seen) % len(self.masks)]
            kept[row, list(range(features.shape[1])) if chosen is None else chosen] = True
            self.seen.append(features[row].clone())
            self.grids.append(grid)
        return selection_from_mask(features, kept)


def prompt(family: str, text: str, images: int = 1) -> str:
    token = "<image>" if family == "llava15" else "[IMG]"
    return "user : " + " ".join([token] * images) + " " + text


@pytest.fixture(scope="module")
def bundles():
    return {family: builder() for family, builder in BUILDERS.items()}


def positions_from_mask(mask: torch.Tensor) -> torch.Tensor:
    return (mask.long().cumsum(dim=1) - 1).masked_fill(mask == 0, 0)


# ------------------------------------------------------------------------------- keep 1.0 == model
@pytest.mark.parametrize("family", FAMILIES)
def test_keep_all_one_image_is_the_model(family, bundles, make_selector):
    bundle = bundles[family]
    inputs = bundle.inputs([random_image(20, 24, seed=1)], [prompt(family, "what is in the image ?")])
    pruned = WRAPPERS[family](bundle.model, make_selector(), keep=1.0)
    assert_same_as_model(bundle, pruned, inputs)


@pytest.mark.parametrize("family", FAMILIES)
def test_keep_all_two_image_sizes_in_a_batch_is_the_model(family, bundles):
    bundle = bundles[family]
    images = [random_image(24, 24, seed=2), random_image(12, 24, seed=3)]
    inputs = bundle.inputs(images, [prompt(family, "what is in it ?"), prompt(family, "describe the cat")])
    if family != "llava15":  # Pixtral towers read each image at its own size
        assert inputs["image_sizes"][0].tolist() != inputs["image_sizes"][1].tolist()
    assert_same_as_model(bundle, WRAPPERS[family](bundle.model, KeepFirst(), keep=1.0), inputs)


@pytest.mark.parametrize("family", FAMILIES)
def test_keep_all_left_padded_multi_image_batch_is_the_model(family, bundles):
    bundle = bundles[family]
    images = [[random_image(24, 16, seed=4), random_image(16, 24, seed=5)], [random_image(24, 24, seed=6)]]
    inputs = bundle.inputs(images, [prompt(family, "what is in the image ?", 2), prompt(family, "describe it")])
    assert not bool(inputs["attention_mask"][:, 0].all())  # left padded
    assert_same_as_model(bundle, WRAPPERS[family](bundle.model, KeepFirst(), keep=1.0), inputs)


@pytest.mark.parametrize(("layer", "strategy"), [([-2, -1], "default"), (-1, "full")])
def test_llava15_layer_lists_and_full_strategy(layer, strategy):
    bundle = build_llava15(layer=layer, strategy=strategy)
    inputs = bundle.inputs([random_image(16, 16, seed=7)], [prompt("llava15", "describe it")])
    selector = KeepMasks([None])
    pruned = PrunedLlava15(bundle.model, selector)
    assert_same_as_model(bundle, pruned, inputs)
    assert selector.grids[0] == ((4, 4) if strategy == "default" else None)  # CLS kept: no plain grid
    assert selector.seen[0].shape == (16 if strategy == "default" else 17, 32 * (2 if isinstance(layer, list) else 1))


# --------------------------------------------------------------------------------------- pruning
@pytest.mark.parametrize("family", FAMILIES)
def test_each_row_shrinks_by_its_dropped_visual_tokens(family, bundles):
    bundle = bundles[family]
    images = [[random_image(24, 16, seed=4), random_image(16, 24, seed=5)], [random_image(24, 24, seed=6)]]
    inputs = bundle.inputs(images, [prompt(family, "what is in the image ?", 2), prompt(family, "describe it")])
    pruned = WRAPPERS[family](bundle.model, KeepFirst(), keep=0.5)
    prepared = pruned.prepare(**inputs)
    before, after = prepared.tokens_before, prepared.tokens_after
    assert all(a < b for a, b in zip(after, before))
    dropped = [before[0] - after[0] + before[1] - after[1], before[2] - after[2]]
    old = inputs["attention_mask"].sum(dim=1)
    assert prepared.lengths == [int(old[0]) - dropped[0], int(old[1]) - dropped[1]]
    assert prepared.input_ids.shape[1] == max(prepared.lengths) and bool(prepared.attention_mask[:, -1].all())
    image_id = bundle.model.config.image_token_id
    kept = [image.features.shape[0] for image in prepared.images]
    assert (prepared.input_ids == image_id).sum(dim=1).tolist() == [kept[0] + kept[1], kept[2]]
    assert torch.equal(prepared.position_ids, positions_from_mask(prepared.attention_mask))
    with torch.no_grad():
        assert pruned(**inputs).logits.shape[:2] == prepared.input_ids.shape
    out = pruned.generate(**inputs, **GENERATE)
    assert out.shape == (2, prepared.input_ids.shape[1] + 4)
    assert torch.equal(out[:, : prepared.input_ids.shape[1]], prepared.input_ids)


@pytest.mark.parametrize("family", FAMILIES)
def test_generate_at_half_and_adaptive_with_a_token_selector(family, bundles, make_selector):
    bundle = bundles[family]
    images = [random_image(24, 24, seed=8), random_image(16, 24, seed=9)]
    inputs = bundle.inputs(images, [prompt(family, "what is in it ?"), prompt(family, "describe it")])
    pruned = WRAPPERS[family](bundle.model, make_selector(), keep=0.5)
    counts = adaptive_counts(pruned, inputs, GENERATE)
    kept_all = sum(pruned.selector_features(**inputs)[i].shape[0] for i in range(2))
    assert counts[0] == kept_all >= counts[1] >= counts[2] == 2  # adaptive mode keeps at least one token per image


def test_selector_sees_the_merged_tokens_with_each_image_grid(bundles):
    bundle = bundles["mistral3"]
    images = [random_image(24, 24, seed=10), random_image(16, 24, seed=11)]
    inputs = bundle.inputs(images, [prompt("mistral3", "what is in it ?"), prompt("mistral3", "describe it")])
    selector = KeepMasks([None, None])
    pruned = PrunedMistral3(bundle.model, selector)
    pruned.prepare(**inputs)
    assert selector.grids == [(3, 3), (2, 3)]  # one selector call per grid, in image order here
    features = pruned.selector_features(**inputs)
    assert [f.shape for f in features] == [(9, 32), (6, 32)]
    assert all(torch.equal(seen, f) for seen, f in zip(selector.seen, features))
    assert pruned.selector_grids(**inputs) == [(3, 3), (2, 3)]
    with torch.no_grad():  # what the LLM reads: the model's own projection of these merged tokens
        expected = bundle.model.model.get_image_features(inputs["pixel_values"], inputs["image_sizes"]).pooler_output
    assert all(torch.equal(image.features, e) for image, e in zip(pruned.last.images, expected))


def tokens_of(bundle, ids: torch.Tensor) -> list[str]:
    return [t for t in bundle.processor.tokenizer.convert_ids_to_tokens(ids.tolist()) if t.startswith("[IMG")]


@pytest.mark.parametrize(
    ("kept", "layout"),
    [
        ([0, 4, 8], "I B I B I E"),  # one token per row: every separator stays
        ([0, 1, 6], "I I B I E"),  # empty middle row: its [IMG_BREAK] goes
        ([1, 2, 4], "I I B I E"),  # empty last row: [IMG_END] closes the last surviving row
        ([], "E"),  # nothing kept: the image is only its [IMG_END]
        (None, "I I I B I I I B I I I E"),  # everything kept: the model's own layout
    ],
)
def test_rows_keep_their_separator_only_while_they_hold_a_token(kept, layout, bundles):
    bundle = bundles["mistral3"]
    inputs = bundle.inputs([random_image(24, 24, seed=12)], [prompt("mistral3", "describe it")])
    pruned = PrunedMistral3(bundle.model, KeepMasks([kept]))
    prepared = pruned.prepare(**inputs)
    short = {"[IMG]": "I", "[IMG_BREAK]": "B", "[IMG_END]": "E"}
    assert " ".join(short[t] for t in tokens_of(bundle, prepared.input_ids[0])) == layout
    assert prepared.tokens_before == [12] and prepared.tokens_after == [len(layout.split())]
    assert prepared.images[0].kept.sum() == (9 if kept is None else len(kept))
    with torch.no_grad():
        assert torch.isfinite(pruned(**inputs).logits).all()


def test_pixtral_tower_under_llava_dispatches_to_the_row_layout(bundles):
    assert type(PrunedLlava15(bundles["llava_pixtral"].model, KeepFirst())) is PrunedLlavaPixtral
    assert type(PrunedLlava15(bundles["llava15"].model, KeepFirst())) is PrunedLlava15


def test_llava15_selector_features_are_what_the_selector_sees(bundles):
    bundle = bundles["llava15"]
    images = [random_image(16, 16, seed=13), random_image(30, 20, seed=14)]
    inputs = bundle.inputs(images, [prompt("llava15", "a"), prompt("llava15", "b")])
    selector = KeepMasks([[0, 5], [3]])
    pruned = PrunedLlava15(bundle.model, selector)
    prepared = pruned.prepare(**inputs)
    features = pruned.selector_features(**inputs)
    assert all(torch.equal(seen, f) for seen, f in zip(selector.seen, features))
    assert pruned.selector_grids(**inputs) == [(4, 4), (4, 4)] and selector.grids == [(4, 4), (4, 4)]
    with torch.no_grad():
        projected = bundle.model.model.multi_modal_projector(torch.stack(features))
    assert torch.equal(prepared.images[0].features, projected[0, [0, 5]])
    assert prepared.tokens_after == [2, 1]


def test_a_prompt_not_laid_out_in_rows_is_refused(bundles):
    bundle = bundles["mistral3"]
    inputs = bundle.inputs([random_image(24, 24, seed=15)], [prompt("mistral3", "describe it")])
    ids = inputs["input_ids"].clone()
    ids[ids == bundle.processor.tokenizer.convert_tokens_to_ids("[IMG_BREAK]")] = bundle.model.config.image_token_id
    with pytest.raises(UserError, match=r"rows of 3 \[IMG\]"):
        PrunedMistral3(bundle.model, KeepFirst(), keep=0.5).prepare(**dict(inputs, input_ids=ids))


@pytest.mark.parametrize("family", FAMILIES)
def test_prune_visual_tokens_picks_the_family_and_text_only_calls_pass_through(family, bundles):
    bundle = bundles[family]
    pruned = prune_visual_tokens(bundle.model, KeepFirst(), keep=0.5)
    assert type(pruned) is {"llava15": PrunedLlava15, "mistral3": PrunedMistral3, "llava_pixtral": PrunedLlavaPixtral}[family]
    ids = bundle.processor.tokenizer(["user : describe a cat"], return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(pruned(**ids).logits, bundle.model(**ids).logits)


def test_mistral3_labels_positions_and_inputs_embeds_follow_the_rows(bundles):
    bundle = bundles["mistral3"]
    inputs = bundle.inputs([random_image(24, 24, seed=16)], [prompt("mistral3", "describe it")])
    pruned = PrunedMistral3(bundle.model, KeepMasks([[0, 1, 6]]))  # middle row emptied: 6 [IMG] and 1 [IMG_BREAK] go
    labels, positions = inputs["input_ids"].clone(), torch.arange(inputs["input_ids"].shape[1])[None] + 5
    prepared = pruned.prepare(**inputs, labels=labels, position_ids=positions)
    assert prepared.input_ids.shape[1] == inputs["input_ids"].shape[1] - 7
    assert torch.equal(prepared.labels, prepared.input_ids)
    assert torch.equal(prepared.position_ids, torch.arange(prepared.input_ids.shape[1])[None] + 5)
    embeds = bundle.model.get_input_embeddings()(inputs["input_ids"])
    with torch.no_grad():
        from_ids = pruned(**inputs).logits
        from_embeds = pruned(inputs_embeds=embeds, **{k: v for k, v in inputs.items() if k != "input_ids"}).logits
    assert torch.equal(from_embeds, from_ids)
    assert torch.isfinite(pruned(**inputs, labels=labels).loss)


def test_mistral3_merging_methods_feed_the_projection_of_their_merged_tokens(bundles):
    bundle = bundles["mistral3"]
    inputs = bundle.inputs([random_image(24, 24, seed=17)], [prompt("mistral3", "describe it")])

    class MergeAll:
        name = "merge_all"

        def select(self, features, keep=None, **kwargs) -> TokenSelection:
            ones = torch.ones(features.shape[0], 1, dtype=torch.bool)
            first = torch.zeros(features.shape[0], 1, dtype=torch.long)
            return TokenSelection(features.mean(dim=1, keepdim=True), first, ones, ones.sum(dim=1), merged=True)

    pruned = PrunedMistral3(bundle.model, MergeAll(), keep=1)
    prepared = pruned.prepare(**inputs)
    mean = pruned.selector_features(**inputs)[0].mean(dim=0)
    with torch.no_grad():
        expected = pruned.project(mean[None], inputs["image_sizes"])[0]
    torch.testing.assert_close(prepared.images[0].features[0], expected)
    assert tokens_of(bundle, prepared.input_ids[0]) == ["[IMG]", "[IMG_END]"]
