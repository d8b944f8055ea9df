"""The other families of ``benchmarks/llava_prefill.py --family``: real-size shapes, random weights, inputs.

Each family is its smallest public checkpoint's shapes, built from transformers config classes
(no download), plus processor-shaped inputs for one image built by hand (the placeholder run the
processor would write, with the family's layout tokens around it):

* ``qwen2_5_vl`` - Qwen2.5-VL-3B: 448x448 image -> 32x32 patches -> 256 merged tokens between
  ``<|vision_start|>``/``<|vision_end|>``; ``image_grid_thw`` and ``mm_token_type_ids`` as the processor;
* ``qwen3_vl`` - Qwen3-VL-2B: the same layout with 16-pixel patches (448x448 -> 28x28 -> 196 tokens)
  and deepstack features from three tower layers;
* ``internvl`` - InternVL3-1B: a 448x448 crop, pixel shuffle 0.5 -> 256 tokens in ``<img>...</img>``;
* ``gemma3`` - Gemma 3 4B: an 896x896 image pooled to 256 tokens in ``<start_of_image>...<end_of_image>``.

``Shapes.image`` is the crop side. The Qwen families read images at their own resolution, so their
input builders also take ``size=(H, W)`` (rounded to whole merged tokens, as the processor's resize
does); the other families resize every image to their one canvas.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

try:  # a package module (the suite, tests) or a script next to it
    from benchmarks.random_weights import build_random
except ImportError:  # pragma: no cover - `python benchmarks/llava_prefill.py` without the repo on sys.path
    from random_weights import build_random  # type: ignore[no-redef]

QWEN = {"image": 151655, "video": 151656, "start": 151652, "end": 151653}  # Qwen2.5-VL's token ids
INTERNVL = {"image": 151667, "start": 151665, "end": 151666}
GEMMA3 = {"image": 262144, "start": 255999, "end": 256000}

SHAPES: dict[str, dict[str, Any]] = {  # fields of llava_prefill.Shapes
    "qwen2_5_vl": dict(
        vision_hidden=1280, vision_layers=32, vision_heads=16, vision_intermediate=3420, patch=14, image=448,
        llm_hidden=2048, llm_layers=36, llm_heads=16, llm_kv_heads=2, llm_intermediate=11008, vocab=151936,
    ),
    "qwen3_vl": dict(
        vision_hidden=1024, vision_layers=24, vision_heads=16, vision_intermediate=4096, patch=16, image=448,
        llm_hidden=2048, llm_layers=28, llm_heads=16, llm_kv_heads=8, llm_intermediate=6144, vocab=151936,
    ),
    "internvl": dict(
        vision_hidden=1024, vision_layers=24, vision_heads=16, vision_intermediate=4096, patch=14, image=448,
        llm_hidden=896, llm_layers=24, llm_heads=14, llm_kv_heads=2, llm_intermediate=4864, vocab=151674,
    ),
    "gemma3": dict(
        vision_hidden=1152, vision_layers=27, vision_heads=16, vision_intermediate=4304, patch=14, image=896,
        llm_hidden=2560, llm_layers=34, llm_heads=8, llm_kv_heads=4, llm_intermediate=10240, vocab=262208,
    ),
}  # fmt: skip
TITLES = {"qwen2_5_vl": "Qwen2.5-VL", "qwen3_vl": "Qwen3-VL", "internvl": "InternVL", "gemma3": "Gemma 3"}


def _build(model_class: Any, config: Any, device: torch.device, dtype: torch.dtype) -> Any:
    return build_random(model_class, config, device, dtype)


def build_qwen2_5_vl(s: Any, device: torch.device, dtype: torch.dtype) -> Any:
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    half = s.llm_hidden // s.llm_heads // 2  # rotary pairs per head, split (t, h, w) as 1/4, 3/8, 3/8
    vision = dict(
        depth=s.vision_layers, hidden_size=s.vision_hidden, num_heads=s.vision_heads, intermediate_size=s.vision_intermediate,
        patch_size=s.patch, spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=s.llm_hidden, window_size=112,
        fullatt_block_indexes=list(range(7, s.vision_layers, 8)) or [s.vision_layers - 1],
    )  # fmt: skip
    text = dict(
        hidden_size=s.llm_hidden, num_hidden_layers=s.llm_layers, num_attention_heads=s.llm_heads,
        num_key_value_heads=s.llm_kv_heads, intermediate_size=s.llm_intermediate, vocab_size=s.vocab,
        max_position_embeddings=32768, tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [half // 4, half * 3 // 8, half - half // 4 - half * 3 // 8]},
    )  # fmt: skip
    ids = dict(image_token_id=QWEN["image"], video_token_id=QWEN["video"], vision_start_token_id=QWEN["start"], vision_end_token_id=QWEN["end"])
    return _build(Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLConfig(vision_config=vision, text_config=text, **ids), device, dtype)


def build_qwen3_vl(s: Any, device: torch.device, dtype: torch.dtype) -> Any:
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    half = s.llm_hidden // s.llm_heads // 2  # rotary pairs per head: [24, 20, 20] at head dim 128
    vision = dict(
        depth=s.vision_layers, hidden_size=s.vision_hidden, num_heads=s.vision_heads, intermediate_size=s.vision_intermediate,
        patch_size=s.patch, spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=s.llm_hidden,
        num_position_embeddings=2304, deepstack_visual_indexes=[i * s.vision_layers // 4 - 1 for i in (1, 2, 3)],
    )  # fmt: skip
    text = dict(
        hidden_size=s.llm_hidden, num_hidden_layers=s.llm_layers, num_attention_heads=s.llm_heads, head_dim=2 * half,
        num_key_value_heads=s.llm_kv_heads, intermediate_size=s.llm_intermediate, vocab_size=s.vocab,
        max_position_embeddings=32768, tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 5e6, "mrope_interleaved": True,
                         "mrope_section": [half * 3 // 8, half * 5 // 16, half - half * 3 // 8 - half * 5 // 16]},
    )  # fmt: skip
    ids = dict(image_token_id=QWEN["image"], video_token_id=QWEN["video"], vision_start_token_id=QWEN["start"], vision_end_token_id=QWEN["end"])
    return _build(Qwen3VLForConditionalGeneration, Qwen3VLConfig(vision_config=vision, text_config=text, **ids), device, dtype)


def build_internvl(s: Any, device: torch.device, dtype: torch.dtype) -> Any:
    from transformers import InternVLConfig, InternVLForConditionalGeneration, InternVLVisionConfig, Qwen2Config

    vision = InternVLVisionConfig(
        hidden_size=s.vision_hidden, num_hidden_layers=s.vision_layers, num_attention_heads=s.vision_heads,
        intermediate_size=s.vision_intermediate, image_size=[s.image, s.image], patch_size=[s.patch, s.patch],
    )  # fmt: skip
    text = Qwen2Config(
        hidden_size=s.llm_hidden, num_hidden_layers=s.llm_layers, num_attention_heads=s.llm_heads,
        num_key_value_heads=s.llm_kv_heads, intermediate_size=s.llm_intermediate, vocab_size=s.vocab,
        max_position_embeddings=32768, tie_word_embeddings=True,
    )  # fmt: skip
    tokens = (s.image // s.patch // 2) ** 2
    config = InternVLConfig(
        vision_config=vision, text_config=text, image_token_id=INTERNVL["image"], downsample_ratio=0.5, image_seq_length=tokens
    )
    return _build(InternVLForConditionalGeneration, config, device, dtype)


def build_gemma3(s: Any, device: torch.device, dtype: torch.dtype) -> Any:
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3TextConfig, SiglipVisionConfig

    vision = SiglipVisionConfig(
        hidden_size=s.vision_hidden, num_hidden_layers=s.vision_layers, num_attention_heads=s.vision_heads,
        intermediate_size=s.vision_intermediate, patch_size=s.patch, image_size=s.image, vision_use_head=False,
    )  # fmt: skip
    text = Gemma3TextConfig(
        hidden_size=s.llm_hidden, num_hidden_layers=s.llm_layers, num_attention_heads=s.llm_heads,
        num_key_value_heads=s.llm_kv_heads, intermediate_size=s.llm_intermediate, vocab_size=s.vocab,
    )  # fmt: skip
    config = Gemma3Config(
        vision_config=vision, text_config=text, mm_tokens_per_image=gemma3_tokens(s),
        boi_token_index=GEMMA3["start"], eoi_token_index=GEMMA3["end"], image_token_index=GEMMA3["image"],
    )  # fmt: skip
    return _build(Gemma3ForConditionalGeneration, config, device, dtype)


def gemma3_tokens(s: Any) -> int:
    """Gemma 3 pools the patch grid 4x4 (64x64 patches -> 16x16 tokens)."""
    return max(1, s.image // s.patch // 4) ** 2


def _prompt(run: list[int], vocab: int, device: torch.device) -> torch.Tensor:
    """12 random text tokens, the image's run, 24 more: the shape of a one-image question (the LLaVA prompt's)."""
    generator = torch.Generator().manual_seed(0)
    words = lambda n: torch.randint(0, min(vocab, 150000), (n,), generator=generator)  # noqa: E731
    return torch.cat([words(12), torch.tensor(run), words(24)])[None].to(device)


def qwen_inputs(s: Any, device: torch.device, dtype: torch.dtype, size: tuple[int, int] | None = None) -> dict[str, torch.Tensor]:
    """One ``size`` image (default ``s.image`` square) as Qwen2.5-VL / Qwen3-VL's processor lays it out."""
    height, width = (max(2, 2 * round(side / (2 * s.patch))) for side in (size or (s.image, s.image)))  # patches, even
    ids = _prompt([QWEN["start"], *[QWEN["image"]] * (height * width // 4), QWEN["end"]], s.vocab, device)
    pixels = torch.randn(height * width, 3 * 2 * s.patch * s.patch, generator=torch.Generator().manual_seed(1))
    return {
        "input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": pixels.to(device, dtype),
        "image_grid_thw": torch.tensor([[1, height, width]], device=device), "mm_token_type_ids": (ids == QWEN["image"]).int(),
    }  # fmt: skip


def _one_canvas(size: tuple[int, int] | None, family: str) -> None:
    if size is not None:
        raise ValueError(f"{family} resizes every image to its one canvas: size= is for the Qwen families")


def internvl_inputs(s: Any, device: torch.device, dtype: torch.dtype, size: tuple[int, int] | None = None) -> dict[str, torch.Tensor]:
    _one_canvas(size, "internvl")
    ids = _prompt([INTERNVL["start"], *[INTERNVL["image"]] * ((s.image // s.patch // 2) ** 2), INTERNVL["end"]], s.vocab, device)
    pixels = torch.randn(1, 3, s.image, s.image, generator=torch.Generator().manual_seed(1))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": pixels.to(device, dtype)}


def gemma3_inputs(s: Any, device: torch.device, dtype: torch.dtype, size: tuple[int, int] | None = None) -> dict[str, torch.Tensor]:
    _one_canvas(size, "gemma3")
    ids = _prompt([GEMMA3["start"], *[GEMMA3["image"]] * gemma3_tokens(s), GEMMA3["end"]], s.vocab, device)
    pixels = torch.randn(1, 3, s.image, s.image, generator=torch.Generator().manual_seed(1))
    return {
        "input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": pixels.to(device, dtype),
        "token_type_ids": (ids == GEMMA3["image"]).long(),
    }  # fmt: skip


def fixed_positions(model: Any, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Qwen: the prompt's 3-D positions, computed once, so every keep's prefill times the LLM alone."""
    if not hasattr(model.model, "get_rope_index"):
        return {}
    positions, _ = model.model.get_rope_index(
        inputs["input_ids"], inputs["mm_token_type_ids"], inputs["image_grid_thw"], attention_mask=inputs["attention_mask"]
    )
    return {"position_ids": positions}


BUILDERS: dict[str, tuple[Callable[..., Any], Callable[..., dict[str, torch.Tensor]]]] = {
    "qwen2_5_vl": (build_qwen2_5_vl, qwen_inputs),
    "qwen3_vl": (build_qwen3_vl, qwen_inputs),
    "internvl": (build_internvl, internvl_inputs),
    "gemma3": (build_gemma3, gemma3_inputs),
}

__all__ = ["BUILDERS", "SHAPES", "TITLES", "fixed_positions"]
