"""Tiny random InternVL / Idefics3 / SmolVLM models and processors (the pixel-shuffle families), built offline.

No hub: models come from config classes with seeded random weights (hidden 32, 2 layers); the
tokenizer is word-level with the special tokens each processor expands images into. Crops are
16x16 pixels of 2x2-pixel patches (an 8x8 patch grid), shuffled 2x2 into 16 LLM tokens per crop.

* InternVL: the real ``InternVLProcessor`` (without its video processor, which needs torchvision)
  over ``GotOcr2ImageProcessorPil`` with dynamic tiling (up to 4 tiles + thumbnail).
* Idefics3: the real ``Idefics3Processor`` and ``Idefics3ImageProcessorPil`` (images up to 32 px
  split into a grid of 16 px crops plus the global image).
* SmolVLM: ``SmolVLMProcessor`` needs ``num2words`` and a torchvision video processor, so
  :class:`ImageOnlySmolVLMProcessor` skips both; its image expansion is the real class's.
"""

from __future__ import annotations

from typing import Any

import torch
from vlm import builders
from vlm.builders import Bundle, KeepFirst, random_image  # noqa: F401  (tests import them from here)

WORDS = "user assistant : what is in the image ? describe it a cat dog red blue green big small the of and Frame1: Frame2:".split()
CROP, PATCH = 16, 2
ROW_COL = [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]
INTERNVL_SPECIALS = {
    "start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>",
}  # fmt: skip
IDEFICS_SPECIALS = {"image_token": "<image>", "fake_image_token": "<fake_token_around_image>", "global_image_token": "<global-img>"}


def word_tokenizer(specials: dict[str, str], extra: list[str] = (), padding_side: str = "left") -> Any:
    """:func:`builders.word_tokenizer` over this module's words."""
    return builders.word_tokenizer(WORDS, specials, extra, padding_side)


def text_kwargs(vocab_size: int) -> dict[str, Any]:
    return builders.text_kwargs(vocab_size, max_position_embeddings=2048)


def vision_kwargs() -> dict[str, Any]:
    return builders.vision_kwargs(CROP, PATCH)


TOKENS_PER_CROP = (CROP // PATCH // 2) ** 2  # 16


def build_internvl(padding_side: str = "left", max_patches: int = 4, seed: int = 0) -> Bundle:
    """InternVL: InternVL vision tower (CLS dropped), pixel shuffle 0.5, MLP projector, Qwen2 LLM."""
    from transformers import InternVLConfig, InternVLForConditionalGeneration, InternVLProcessor, InternVLVisionConfig
    from transformers import Qwen2Config
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

    class ImageOnlyInternVLProcessor(InternVLProcessor):
        @classmethod
        def get_attributes(cls) -> list[str]:
            return ["image_processor", "tokenizer"]

    tokenizer = word_tokenizer(INTERNVL_SPECIALS, padding_side=padding_side)
    torch.manual_seed(seed)
    config = InternVLConfig(
        vision_config=InternVLVisionConfig(**vision_kwargs()),
        text_config=Qwen2Config(**text_kwargs(len(tokenizer))),
        image_token_id=tokenizer.context_image_token_id,
        image_seq_length=TOKENS_PER_CROP,
    )
    model = InternVLForConditionalGeneration(config).eval()
    images = GotOcr2ImageProcessorPil(size={"height": CROP, "width": CROP}, crop_to_patches=True, max_patches=max_patches)
    processor = ImageOnlyInternVLProcessor(image_processor=images, tokenizer=tokenizer, image_seq_length=TOKENS_PER_CROP)
    return Bundle(model, processor)


def idefics3_image_processor(smol: bool) -> Any:
    if smol:
        from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil as cls
    else:
        from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil as cls
    return cls(size={"longest_edge": 2 * CROP}, max_image_size={"longest_edge": CROP})


def smolvlm_processor_class() -> type:
    """``SmolVLMProcessor`` for images only: no ``num2words`` check, no (torchvision) video processor."""
    from transformers import SmolVLMProcessor
    from transformers.processing_utils import ProcessorMixin

    class ImageOnlySmolVLMProcessor(SmolVLMProcessor):
        @classmethod
        def get_attributes(cls) -> list[str]:
            return ["image_processor", "tokenizer"]

        def __init__(self, image_processor: Any, tokenizer: Any, image_seq_len: int = 169, **kwargs: Any) -> None:
            self.fake_image_token = tokenizer.fake_image_token
            self.image_token = tokenizer.image_token
            self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
            self.end_of_utterance_token = "<end_of_utterance>"
            self.global_image_token = tokenizer.global_image_token
            self.image_seq_len = image_seq_len
            self.video_token = "<video>"
            ProcessorMixin.__init__(self, image_processor, tokenizer, **kwargs)

    return ImageOnlySmolVLMProcessor


def build_idefics3(padding_side: str = "left", smol: bool = False, scale: int = 2, seed: int = 0) -> Bundle:
    """Idefics3 (Llama LLM) or SmolVLM (``smol=True``, Llama LLM): SigLIP-style tower + pixel-shuffle connector.

    ``scale`` is the connector's ``scale_factor`` (``scale x scale`` patches per LLM token).
    """
    from transformers import LlamaConfig

    if smol:
        from transformers import SmolVLMConfig as Config, SmolVLMForConditionalGeneration as Model
        from transformers import SmolVLMVisionConfig as VisionConfig
    else:
        from transformers import Idefics3Config as Config, Idefics3ForConditionalGeneration as Model
        from transformers import Idefics3VisionConfig as VisionConfig
    tokenizer = word_tokenizer(IDEFICS_SPECIALS, extra=[*ROW_COL, "<end_of_utterance>"], padding_side=padding_side)
    torch.manual_seed(seed)
    config = Config(
        vision_config=VisionConfig(**vision_kwargs()),
        text_config=LlamaConfig(**text_kwargs(len(tokenizer))),
        image_token_id=tokenizer.image_token_id,
        scale_factor=scale,
        pad_token_id=0,
    )
    model = Model(config).eval()
    images, per_crop = idefics3_image_processor(smol), (CROP // PATCH // scale) ** 2
    if smol:
        processor = smolvlm_processor_class()(images, tokenizer, image_seq_len=per_crop)
    else:
        from transformers import Idefics3Processor

        processor = Idefics3Processor(images, tokenizer, image_seq_len=per_crop)
    return Bundle(model, processor)


# ------------------------------------------------------------------------------ selection stubs
class FixedCounts:
    """Adaptive (``keep=None``): crop ``i`` keeps its first ``counts[i]`` valid tokens (``None``: all)."""

    name = "fixed_counts"

    def __init__(self, counts: list[int | None]) -> None:
        self.counts = counts
        self.seen: list[tuple[int, ...]] = []

    def select(self, features, keep=None, *, padding_mask=None, extras=None, grid=None, generator=None) -> Any:
        from token_reduction.selection.base import selection_from_mask

        assert keep is None, "FixedCounts is adaptive only"
        assert features.shape[0] == len(self.counts), f"expected {len(self.counts)} crops, got {features.shape[0]}"
        self.seen.append((tuple(features.shape), grid))
        valid = torch.ones(features.shape[:2], dtype=torch.bool) if padding_mask is None else ~padding_mask
        limit = torch.tensor([features.shape[1] if c is None else c for c in self.counts])
        return selection_from_mask(features, valid & (valid.long().cumsum(dim=1) <= limit[:, None]))


def tiny_selector(dim: int, seed: int = 0) -> Any:
    """A random ``TokenSelector`` with token-dependent keep logits (adaptive by threshold)."""
    from token_reduction.models.backbone import TrunkConfig
    from token_reduction.models.selector import TokenSelector

    torch.manual_seed(seed)
    selector = TokenSelector(dim, TrunkConfig(width=16, depth=1, heads=2)).eval()
    torch.nn.init.normal_(selector.head.weight, std=1.0)
    return selector
