"""Tiny random LLaVA-NeXT / LLaVA-OneVision models and processors, built offline.

No hub: models come from config classes with seeded random weights; the tokenizer is a word-level
``tokenizers`` vocabulary wrapped in ``PreTrainedTokenizerFast`` with ``<image>``/``<video>``
special tokens; image processors are sized for 16x16 crops of 4x4-pixel patches (16 tokens).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

import pytest
import torch
from PIL import Image

from vlm.builders import Bundle, random_image, text_kwargs, vision_kwargs, word_tokenizer
from token_reduction.models.backbone import TrunkConfig
from token_reduction.models.selector import TokenSelector

WORDS = "user assistant : what is in the image ? describe it a cat dog red blue green big small the of and".split()
SPECIALS = ["<pad>", "<unk>", "<s>", "</s>", "<image>", "<video>"]
CROP, PATCH, DIM = 16, 4, 32
PINPOINTS = [[16, 32], [32, 16], [32, 32]]


def tiny_tokenizer(padding_side: str = "left") -> Any:
    return word_tokenizer(WORDS, {"image_token": "<image>", "video_token": "<video>"}, padding_side=padding_side, dense=False)


def _text_kwargs(vocab_size: int) -> dict[str, Any]:
    return text_kwargs(vocab_size)


def _vision_kwargs() -> dict[str, Any]:
    return vision_kwargs(CROP, PATCH)


def build_next(padding_side: str = "left", seed: int = 0) -> Bundle:
    """LLaVA-NeXT: CLIP tower (CLS dropped by the 'default' strategy, layer -2) + Llama LLM."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextProcessor
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    tokenizer = tiny_tokenizer(padding_side)
    torch.manual_seed(seed)
    config = LlavaNextConfig(
        vision_config=CLIPVisionConfig(**_vision_kwargs()),
        text_config=LlamaConfig(**_text_kwargs(len(tokenizer))),
        image_token_index=tokenizer.image_token_id,
        image_grid_pinpoints=PINPOINTS,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    model = LlavaNextForConditionalGeneration(config).eval()
    images = LlavaNextImageProcessorPil(
        size={"shortest_edge": CROP}, crop_size={"height": CROP, "width": CROP}, image_grid_pinpoints=PINPOINTS
    )
    processor = LlavaNextProcessor(
        image_processor=images, tokenizer=tokenizer, patch_size=PATCH,
        vision_feature_select_strategy="default", num_additional_image_tokens=1,
    )  # fmt: skip
    return Bundle(model, processor)


def onevision_processor_class() -> type:
    """LlavaOnevisionProcessor without its video processor, which needs torchvision (not installed)."""
    from transformers import LlavaOnevisionProcessor

    class ImageOnlyOnevisionProcessor(LlavaOnevisionProcessor):
        @classmethod
        def get_attributes(cls) -> list[str]:
            return ["image_processor", "tokenizer"]

    return ImageOnlyOnevisionProcessor


def build_onevision(padding_side: str = "left", vision_aspect_ratio: str = "anyres_max_9", seed: int = 0) -> Bundle:
    """LLaVA-OneVision: SigLIP tower ('full' strategy, last layer) + Qwen2 LLM."""
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration, Qwen2Config, SiglipVisionConfig

    tokenizer = tiny_tokenizer(padding_side)
    torch.manual_seed(seed)
    config = LlavaOnevisionConfig(
        vision_config=SiglipVisionConfig(**_vision_kwargs()),
        text_config=Qwen2Config(**_text_kwargs(len(tokenizer))),
        image_token_index=tokenizer.image_token_id,
        video_token_index=tokenizer.video_token_id,
        image_grid_pinpoints=PINPOINTS,
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        vision_aspect_ratio=vision_aspect_ratio,
    )
    model = LlavaOnevisionForConditionalGeneration(config).eval()
    return Bundle(model, onevision_processor(padding_side, vision_aspect_ratio))


def onevision_processor(padding_side: str = "left", vision_aspect_ratio: str = "anyres_max_9", strategy: str = "full") -> Any:
    """The tiny OneVision processor; ``strategy="default"`` expands one token fewer per crop (no CLS to drop)."""
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import LlavaOnevisionImageProcessorPil

    images = LlavaOnevisionImageProcessorPil(size={"height": CROP, "width": CROP}, image_grid_pinpoints=PINPOINTS)
    return onevision_processor_class()(
        image_processor=images, tokenizer=tiny_tokenizer(padding_side), num_image_tokens=(CROP // PATCH) ** 2,
        vision_feature_select_strategy=strategy, vision_aspect_ratio=vision_aspect_ratio,
    )  # fmt: skip


def tiny_selector(dim: int = DIM, seed: int = 0) -> TokenSelector:
    torch.manual_seed(seed)
    selector = TokenSelector(dim, TrunkConfig(width=16, depth=1, heads=2)).eval()
    torch.nn.init.normal_(selector.head.weight, std=1.0)  # token-dependent keep logits
    return selector


@pytest.fixture(scope="session")
def next_bundle() -> Bundle:
    return build_next()


@pytest.fixture(scope="session")
def onevision_bundle() -> Bundle:
    return build_onevision()


@pytest.fixture()
def images() -> list[Image.Image]:
    """A wide and a square image: different AnyRes grids and unpadding windows."""
    return [random_image(20, 37, seed=1), random_image(16, 16, seed=2)]


def save_bundle(bundle: Bundle, folder: Path) -> Path:
    bundle.model.save_pretrained(folder)
    bundle.processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def saved_models(tmp_path_factory: pytest.TempPathFactory, next_bundle: Bundle) -> Mapping[str, Path]:
    """A saved NeXT model + processor (OneVision's processor cannot be reloaded without torchvision) and selector."""
    root = tmp_path_factory.mktemp("llava")
    folders = {"next": save_bundle(next_bundle, root / "next")}
    folders["selector"] = tiny_selector().save_pretrained(root / "selector")
    return folders


@pytest.fixture()
def make_next() -> Callable[..., Bundle]:
    """Factory for NeXT bundles with non-default settings (e.g. ``padding_side="right"``)."""
    return build_next


@pytest.fixture()
def make_onevision() -> Callable[..., Bundle]:
    """Factory for OneVision bundles with non-default settings (e.g. ``vision_aspect_ratio``)."""
    return build_onevision


@pytest.fixture()
def make_onevision_processor() -> Callable[..., Any]:
    """Factory for tiny OneVision processors (``padding_side``, ``vision_aspect_ratio``, ``strategy``)."""
    return onevision_processor


@pytest.fixture()
def make_image() -> Callable[..., Image.Image]:
    return random_image


@pytest.fixture()
def make_selector() -> Callable[..., TokenSelector]:
    return tiny_selector
