"""Tiny random Qwen2-VL / Qwen2.5-VL / Qwen3-VL / Qwen3.5 models and processors, built offline.

Vision: 4x4-pixel patches merged 2x2, so an image of ``H x W`` pixels (multiples of 8) gives
``H/8 x W/8`` LLM tokens (32x32 -> 16, 24x40 -> 15). Text: hidden 32, 2 heads of dim 16, multimodal
RoPE sections ``[2, 3, 3]`` (sum = head_dim / 2). Processors are the real transformers classes
without their video processor (it needs torchvision); video inputs are built by :func:`video_inputs`
the way the processors lay them out (Qwen3-VL / Qwen3.5: one run per frame after a timestamp).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from PIL import Image
from vlm.builders import random_image, word_tokenizer

from token_reduction.vlm.processors import image_only_processor

WORDS = "user assistant : what is in the image ? describe it a cat dog red blue green video frame <0.5s> <1.5s>".split()
SPECIALS = {
    "image_token": "<|image_pad|>",
    "video_token": "<|video_pad|>",
    "vision_start_token": "<|vision_start|>",
    "vision_end_token": "<|vision_end|>",
}
PATCH, MERGE, DIM = 4, 2, 32
FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_5")
IMAGE = "<|vision_start|> <|image_pad|> <|vision_end|>"


@dataclass
class Bundle:
    """A tiny model with the processor that expands ``<|image_pad|>`` for it."""

    family: str
    model: Any
    processor: Any

    def inputs(self, images: list[Image.Image], prompts: list[str]) -> dict[str, torch.Tensor]:
        return dict(self.processor(images=images, text=prompts, return_tensors="pt", padding=True))

    @property
    def per_frame_runs(self) -> bool:
        """Qwen3-VL / Qwen3.5 put each video frame in its own placeholder run, after a timestamp."""
        return self.family in ("qwen3_vl", "qwen3_5")


def qwen_tokenizer(padding_side: str = "left") -> Any:
    return word_tokenizer(WORDS, SPECIALS, padding_side=padding_side)


def _text(vocab_size: int, **extra: Any) -> dict[str, Any]:
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3], **extra.pop("rope", {})}
    return dict(
        hidden_size=DIM, intermediate_size=2 * DIM, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
        vocab_size=vocab_size, max_position_embeddings=512, rope_parameters=rope, pad_token_id=0, bos_token_id=2,
        eos_token_id=3, **extra,
    )  # fmt: skip


def _vision(family: str) -> dict[str, Any]:
    common = dict(depth=2, num_heads=2, patch_size=PATCH, spatial_merge_size=MERGE, temporal_patch_size=2)
    if family == "qwen2_vl":
        return dict(common, embed_dim=DIM, hidden_size=DIM, mlp_ratio=2)
    if family == "qwen2_5_vl":  # window attention over 2x2 merged tokens, then one full-attention block
        return dict(common, hidden_size=DIM, intermediate_size=2 * DIM, out_hidden_size=DIM, window_size=16, fullatt_block_indexes=[1])
    extra = {"deepstack_visual_indexes": [0, 1]} if family == "qwen3_vl" else {}
    return dict(common, hidden_size=DIM, intermediate_size=2 * DIM, out_hidden_size=DIM, num_position_embeddings=64, **extra)


def build_qwen(family: str, padding_side: str = "left", seed: int = 0) -> Bundle:
    """A tiny ``family`` model (one of :data:`FAMILIES`) with its processor."""
    import transformers
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    names = {
        "qwen2_vl": ("Qwen2VLConfig", "Qwen2VLForConditionalGeneration", "Qwen2VLProcessor"),
        "qwen2_5_vl": ("Qwen2_5_VLConfig", "Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLProcessor"),
        "qwen3_vl": ("Qwen3VLConfig", "Qwen3VLForConditionalGeneration", "Qwen3VLProcessor"),
        "qwen3_5": ("Qwen3_5Config", "Qwen3_5ForConditionalGeneration", "Qwen3VLProcessor"),
    }
    config_class, model_class, processor_class = (getattr(transformers, name) for name in names[family])
    tokenizer = qwen_tokenizer(padding_side)
    text = _text(len(tokenizer))
    if family == "qwen3_vl":
        text = _text(len(tokenizer), head_dim=DIM // 2, rope={"mrope_interleaved": True})
    elif family == "qwen3_5":
        text = _text(
            len(tokenizer), head_dim=DIM // 2, rope={"mrope_interleaved": True, "partial_rotary_factor": 1.0},
            layer_types=["linear_attention", "full_attention"], linear_conv_kernel_dim=4, linear_key_head_dim=8,
            linear_value_head_dim=8, linear_num_key_heads=2, linear_num_value_heads=2,
        )  # fmt: skip
    ids = {f"{name.removesuffix('_token')}_token_id": tokenizer.convert_tokens_to_ids(token) for name, token in SPECIALS.items()}
    torch.manual_seed(seed)
    model = model_class(config_class(vision_config=_vision(family), text_config=text, **ids)).eval()
    images = Qwen2VLImageProcessorPil(
        patch_size=PATCH, merge_size=MERGE, temporal_patch_size=2, size={"shortest_edge": 8 * 8, "longest_edge": 48 * 48}
    )
    processor = image_only_processor(processor_class)(image_processor=images, tokenizer=tokenizer)
    return Bundle(family, model, processor)


def bundle_cache() -> Callable[[str], Bundle]:
    """Build each family's bundle on first use (a test module's ``bundles`` fixture returns one cache)."""
    cache: dict[str, Bundle] = {}

    def get(family: str) -> Bundle:
        if family not in cache:
            cache[family] = build_qwen(family)
        return cache[family]

    return get


NEW = 4
"""Generated tokens per call in the tests (``min_new_tokens`` too, so random weights never stop early)."""


def scenario(bundle: Bundle, name: str) -> dict[str, torch.Tensor]:
    """``one``: one image; ``batch``: two images of different sizes, left-padded rows; ``multi``: 2 images in row 0."""
    if name == "one":
        return bundle.inputs([random_image(32, 32, 1)], [f"user : {IMAGE} what is in the image ?"])
    if name == "batch":
        images = [random_image(32, 32, 1), random_image(24, 40, 2)]
        return bundle.inputs(images, [f"user : {IMAGE} what is in the image ?", f"user : {IMAGE} describe it"])
    images = [random_image(16, 24, 3), random_image(32, 32, 1), random_image(24, 40, 2)]
    return bundle.inputs(images, [f"user : {IMAGE} and {IMAGE} what is it ?", f"{IMAGE} describe it"])


def generate(model: Any, inputs: dict[str, Any], **kwargs: Any) -> Any:
    """Greedy ``generate`` of exactly :data:`NEW` tokens."""
    return model.generate(**inputs, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False, **kwargs)


def video_inputs(
    bundle: Bundle, grids: list[tuple[int, int, int]], prompts: list[str], images: list[Image.Image] = (), seed: int = 0
) -> dict[str, torch.Tensor]:
    """Inputs for ``prompts`` whose ``<video>`` markers (one per entry of ``grids``, in order) are videos.

    ``grids`` are patch grids ``(t, h, w)``; pixels are seeded noise of the patch layout the
    vision tower reads. Qwen2/2.5-VL: one run of ``t*h*w/4`` placeholders per video; Qwen3-VL /
    Qwen3.5: one run per frame, each after a timestamp word, as their processor writes them.
    ``<|image_pad|>`` markers take ``images`` in order, through the real image processor (the
    processor itself refuses video placeholders without its video processor).
    """
    config = bundle.model.config.vision_config
    encoded_images = dict(bundle.processor.image_processor(images=list(images), return_tensors="pt")) if images else {}
    image_counts = iter([int(n) // MERGE**2 for n in encoded_images.get("image_grid_thw", torch.empty(0, 3)).prod(dim=-1)])
    texts, remaining = [], iter(grids)
    for prompt in prompts:
        parts = prompt.split("<video>")
        text = parts[0]
        for part in parts[1:]:
            t, h, w = next(remaining)
            frame = " ".join(["<|video_pad|>"] * (h * w // MERGE**2))
            if bundle.per_frame_runs:
                stamps = ["<0.5s>", "<1.5s>"] * t
                text += " ".join(f"{stamps[i]} <|vision_start|> {frame} <|vision_end|>" for i in range(t))
            else:
                text += f"<|vision_start|> {' '.join([frame] * t)} <|vision_end|>"
            text += part
        pieces = text.split("<|image_pad|>")
        texts.append(pieces[0] + "".join(" ".join(["<|image_pad|>"] * next(image_counts)) + piece for piece in pieces[1:]))
    encoded = dict(bundle.processor.tokenizer(texts, return_tensors="pt", padding=True))
    encoded["mm_token_type_ids"] = torch.tensor(bundle.processor.create_mm_token_type_ids(encoded["input_ids"]))
    patches = sum(t * h * w for t, h, w in grids)
    generator = torch.Generator().manual_seed(seed)
    width = config.in_channels * config.temporal_patch_size * config.patch_size**2
    encoded["pixel_values_videos"] = torch.randn(patches, width, generator=generator)
    encoded["video_grid_thw"] = torch.tensor(grids)
    if bundle.family == "qwen2_5_vl":  # seconds per temporal patch: spaces the frames' t positions (x tokens_per_second)
        encoded["second_per_grid_ts"] = torch.full((len(grids),), 1.5)
    return encoded | encoded_images


__all__ = ["FAMILIES", "IMAGE", "NEW", "Bundle", "bundle_cache", "build_qwen", "generate", "qwen_tokenizer", "random_image", "scenario", "video_inputs"]
