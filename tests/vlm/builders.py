"""Builders shared by the tiny offline VLM fixtures (``conftest``, ``simple_models``, ``shuffle_models``, ``qwen_models``).

One word-level tokenizer, one model-processor bundle and one set of tiny config sizes, so every
family's fixture differs only in what is really its own (vocabulary, special tokens, geometry).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from token_reduction.selection.base import TokenSelection, budgets_per_image, selection_from_mask

DIM = 32
GENERATE = dict(max_new_tokens=4, min_new_tokens=4, do_sample=False)
"""Greedy decoding of a fixed length (random weights would otherwise stop at any time)."""


@dataclass
class Bundle:
    """A tiny model with the processor that expands image placeholders for it."""

    model: Any
    processor: Any

    def inputs(self, images: list[Any], prompts: list[str], **kwargs: Any) -> dict[str, torch.Tensor]:
        return dict(self.processor(images=images, text=prompts, return_tensors="pt", padding=True, **kwargs))


def word_tokenizer(
    words: list[str], specials: dict[str, str], extra: list[str] = (), padding_side: str = "left", dense: bool = True
) -> Any:
    """Word-level tokenizer: pad/unk/bos/eos (ids 0-3), the named ``specials``, ``extra`` special tokens, then ``words``.

    ``dense=False`` numbers a repeated word by its last place (ids the LLaVA-NeXT fixtures were built with).
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tokens = ["<pad>", "<unk>", "<s>", "</s>", *specials.values(), *extra]
    tokens = list(dict.fromkeys(tokens + list(words))) if dense else tokens + list(words)
    vocab = {word: i for i, word in enumerate(tokens)}  # dense ids: len(tokenizer) covers them
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>",
        padding_side=padding_side, extra_special_tokens=dict(specials),
    )  # fmt: skip
    if extra:
        tokenizer.add_special_tokens({"additional_special_tokens": list(extra)})
    return tokenizer


def text_kwargs(vocab_size: int, max_position_embeddings: int = 1024) -> dict[str, Any]:
    """A 2-layer, 32-wide LLM config (pad 0, bos 2, eos 3 as :func:`word_tokenizer` numbers them)."""
    return dict(
        hidden_size=DIM, intermediate_size=2 * DIM, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=vocab_size, pad_token_id=0, bos_token_id=2, eos_token_id=3,
        max_position_embeddings=max_position_embeddings,
    )  # fmt: skip


def vision_kwargs(image_size: int, patch_size: int) -> dict[str, Any]:
    """A 2-layer, 32-wide vision tower config for ``image_size`` crops of ``patch_size`` patches."""
    return dict(
        hidden_size=DIM, intermediate_size=2 * DIM, num_hidden_layers=2, num_attention_heads=4, image_size=image_size, patch_size=patch_size
    )


def random_image(height: int, width: int, seed: int) -> Image.Image:
    """Seeded uniform-noise RGB image."""
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


class KeepFirst:
    """A baseline-like method: keep the first ``keep`` valid tokens of every crop (``keep=None``: all of them)."""

    name = "keep_first"

    def select(self, features, keep=None, *, padding_mask=None, extras=None, grid=None, generator=None) -> TokenSelection:
        valid = torch.ones(features.shape[:2], dtype=torch.bool) if padding_mask is None else ~padding_mask
        budgets = budgets_per_image(keep if keep is not None else 1.0, valid.sum(dim=1))
        return selection_from_mask(features, valid & (valid.long().cumsum(dim=1) <= budgets[:, None]))


def assert_same_as_model(bundle: Any, pruned: Any, inputs: dict[str, Any], generate: dict[str, Any] = GENERATE) -> None:
    """``keep=1.0``: the wrapper feeds the model its own inputs, so logits and greedy ids match bit for bit."""
    with torch.no_grad():
        expected, actual = bundle.model(**inputs).logits, pruned(**inputs).logits
    assert torch.equal(actual, expected)
    assert pruned.last.tokens_after == pruned.last.tokens_before
    assert torch.equal(pruned.generate(**inputs, **generate), bundle.model.generate(**inputs, **generate))


def adaptive_counts(pruned: Any, inputs: dict[str, Any], generate: dict[str, Any], new: int = 4) -> list[int]:
    """Generate at the wrapper's ``keep`` (every image must lose tokens), then adaptively at thresholds 0, 0.5, 1.01.

    Checks every output holds the shortened prompt plus ``new`` tokens; returns the kept visual tokens per threshold.
    """
    out = pruned.generate(**inputs, **generate)
    assert out.shape[1] == pruned.last.input_ids.shape[1] + new
    assert all(a < b for a, b in zip(pruned.last.tokens_after, pruned.last.tokens_before))
    counts = []
    for threshold in (0.0, 0.5, 1.01):
        out = pruned.generate(**inputs, keep=None, threshold=threshold, **generate)
        assert out.shape[1] == pruned.last.input_ids.shape[1] + new
        counts.append(sum(image.features.shape[0] for image in pruned.last.images))
    return counts
