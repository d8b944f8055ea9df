"""Tiny random CLIP / SigLIP vision towers saved like hub checkpoints (importable by any test).

No hub access: models are built from config classes with seeded random weights and saved, with a
matching image processor, to a folder that the real path-based loaders then read.
"""

from __future__ import annotations

from pathlib import Path

import torch


def _tower_kwargs(image_size: int, patch_size: int, hidden_size: int, num_layers: int) -> dict:
    return dict(
        image_size=image_size,
        patch_size=patch_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
    )


def save_tiny_clip(folder: Path, image_size: int = 32, patch_size: int = 8, hidden_size: int = 32, num_layers: int = 3, seed: int = 0) -> Path:
    """A CLIPVisionModel (CLS + (image_size/patch_size)^2 patches) and a CLIPImageProcessor."""
    from transformers import CLIPVisionConfig, CLIPVisionModel
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    torch.manual_seed(seed)
    model = CLIPVisionModel(CLIPVisionConfig(**_tower_kwargs(image_size, patch_size, hidden_size, num_layers))).eval()
    model.save_pretrained(folder)
    CLIPImageProcessorPil(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}).save_pretrained(folder)
    return Path(folder)


def save_tiny_siglip(folder: Path, image_size: int = 32, patch_size: int = 8, hidden_size: int = 32, num_layers: int = 2, seed: int = 0) -> Path:
    """A SiglipVisionModel (no CLS) and a SiglipImageProcessor (plain resize to a square)."""
    from transformers import SiglipVisionConfig, SiglipVisionModel
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    torch.manual_seed(seed)
    model = SiglipVisionModel(SiglipVisionConfig(**_tower_kwargs(image_size, patch_size, hidden_size, num_layers))).eval()
    model.save_pretrained(folder)
    SiglipImageProcessorPil(size={"height": image_size, "width": image_size}).save_pretrained(folder)
    return Path(folder)


def save_tiny_llava_next(folder: Path, image_size: int = 32, patch_size: int = 8, hidden_size: int = 32, seed: int = 0) -> Path:
    """A whole (tiny) LLaVA-NeXT checkpoint with a CLIP tower, to load only its vision tower from."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaNextConfig, LlavaNextForConditionalGeneration

    torch.manual_seed(seed)
    vision = CLIPVisionConfig(**_tower_kwargs(image_size, patch_size, hidden_size, 3))
    text = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=4, vocab_size=64)
    config = LlavaNextConfig(
        vision_config=vision.to_dict(),
        text_config=text.to_dict(),
        image_token_index=63,
        image_grid_pinpoints=[[image_size, 2 * image_size], [2 * image_size, image_size]],
    )
    LlavaNextForConditionalGeneration(config).eval().save_pretrained(folder)
    return Path(folder)
