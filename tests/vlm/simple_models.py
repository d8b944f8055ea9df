"""Tiny random LLaVA-1.5 / Mistral3 / Gemma 3 / Gemma 4 models and processors, built offline.

No hub: models come from config classes with seeded random weights (hidden 32, 2 layers); the
tokenizer is a word-level vocabulary with the special tokens each processor expands images into.
Processors are the real transformers classes where they import without torchvision; Mistral3's
``PixtralProcessor`` needs torchvision, so :class:`PixtralLikeProcessor` reproduces its prompt
expansion (rows of ``[IMG]`` ended by ``[IMG_BREAK]``, the last by ``[IMG_END]``) on top of the
real ``PixtralImageProcessorPil``.
"""

from __future__ import annotations

from typing import Any

import torch
from vlm import builders
from vlm.builders import DIM, Bundle, random_image, text_kwargs, vision_kwargs  # noqa: F401  (tests import them from here)

WORDS = (
    "user assistant : what is in the image ? describe it a cat dog red blue green big small of and "
    "here crops to help you see better original"  # Gemma 3's pan-and-scan phrase
).split()


def word_tokenizer(specials: dict[str, str], extra: list[str] = (), padding_side: str = "left") -> Any:
    """:func:`builders.word_tokenizer` over this module's words."""
    return builders.word_tokenizer(WORDS, specials, extra, padding_side)


# ------------------------------------------------------------------------------------ LLaVA-1.5
def build_llava15(
    padding_side: str = "left", layer: int | list[int] = -2, strategy: str = "default", seed: int = 0
) -> Bundle:
    """LLaVA-1.5: CLIP tower (16x16 pixels, 4x4 patches: 16 tokens after dropping CLS) + Llama LLM."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    tokenizer = word_tokenizer({"image_token": "<image>"}, padding_side=padding_side)
    torch.manual_seed(seed)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(**vision_kwargs(16, 4)),
        text_config=LlamaConfig(**text_kwargs(len(tokenizer))),
        image_token_index=tokenizer.image_token_id,
        vision_feature_layer=layer,
        vision_feature_select_strategy=strategy,
    )
    model = LlavaForConditionalGeneration(config).eval()
    images = CLIPImageProcessorPil(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
    processor = LlavaProcessor(
        image_processor=images, tokenizer=tokenizer, patch_size=4,
        vision_feature_select_strategy=strategy, num_additional_image_tokens=1,
    )  # fmt: skip
    return Bundle(model, processor)


# ------------------------------------------------------------------------------ Mistral3 / Pixtral
class PixtralLikeProcessor:
    """``PixtralProcessor``'s prompt expansion (it needs torchvision) over the real Pixtral image processor.

    Each ``[IMG]`` in a prompt becomes ``rows`` runs of ``cols`` ``[IMG]``, each run followed by
    ``[IMG_BREAK]`` and the last by ``[IMG_END]``, for the image's ``image_sizes`` divided by
    ``patch_size * spatial_merge_size``: the same code as ``PixtralProcessor.replace_image_token``.
    """

    def __init__(self, image_processor: Any, tokenizer: Any, patch_size: int, spatial_merge_size: int) -> None:
        self.image_processor, self.tokenizer = image_processor, tokenizer
        self.patch_size, self.spatial_merge_size = patch_size, spatial_merge_size

    def expansion(self, height: int, width: int) -> str:
        step = self.patch_size * self.spatial_merge_size
        tokens = [(["[IMG]"] * (width // step) + ["[IMG_BREAK]"]) for _ in range(height // step)]
        flat = [token for row in tokens for token in row]
        flat[-1] = "[IMG_END]"
        return "".join(flat)

    def __call__(self, images: list[Any], text: list[str], return_tensors: str = "pt", padding: bool = True) -> Any:
        from transformers import BatchFeature

        flat = [image for item in images for image in (item if isinstance(item, (list, tuple)) else [item])]
        step = self.patch_size * self.spatial_merge_size
        pixels = self.image_processor(flat, patch_size={"height": step, "width": step}, return_tensors=return_tensors)
        sizes = iter(pixels["image_sizes"].tolist())
        expanded = []
        for prompt in text:
            parts = prompt.split("[IMG]")
            expanded.append(parts[0] + "".join(f" {self.expansion(*next(sizes))} {part}" for part in parts[1:]))
        encoded = self.tokenizer(expanded, padding=padding, return_tensors=return_tensors)
        return BatchFeature({**encoded, **pixels})


def build_mistral3(padding_side: str = "left", seed: int = 0) -> Bundle:
    """Mistral3: Pixtral tower (4x4 patches) + 2x2 patch merger + Mistral LLM; images up to 24x24 px (3x3 tokens)."""
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration, MistralConfig, PixtralVisionConfig
    from transformers.models.pixtral.image_processing_pil_pixtral import PixtralImageProcessorPil

    tokenizer = word_tokenizer({"image_token": "[IMG]"}, extra=["[IMG_BREAK]", "[IMG_END]"], padding_side=padding_side)
    torch.manual_seed(seed)
    config = Mistral3Config(
        vision_config=PixtralVisionConfig(**vision_kwargs(32, 4)),
        text_config=MistralConfig(**text_kwargs(len(tokenizer))),
        image_token_index=tokenizer.image_token_id,
        spatial_merge_size=2,
        vision_feature_layer=-1,
    )
    model = Mistral3ForConditionalGeneration(config).eval()
    images = PixtralImageProcessorPil(size={"longest_edge": 24}, patch_size={"height": 8, "width": 8})
    return Bundle(model, PixtralLikeProcessor(images, tokenizer, patch_size=4, spatial_merge_size=2))


def build_llava_pixtral(padding_side: str = "left", seed: int = 0) -> Bundle:
    """Pixtral-12B layout: ``LlavaForConditionalGeneration`` with a Pixtral tower, no merger (8x8-pixel patches)."""
    from transformers import LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, PixtralVisionConfig
    from transformers.models.pixtral.image_processing_pil_pixtral import PixtralImageProcessorPil

    tokenizer = word_tokenizer({"image_token": "[IMG]"}, extra=["[IMG_BREAK]", "[IMG_END]"], padding_side=padding_side)
    torch.manual_seed(seed)
    config = LlavaConfig(
        vision_config=PixtralVisionConfig(**vision_kwargs(32, 8)),
        text_config=LlamaConfig(**text_kwargs(len(tokenizer))),
        image_token_index=tokenizer.image_token_id,
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
    )
    model = LlavaForConditionalGeneration(config).eval()
    images = PixtralImageProcessorPil(size={"longest_edge": 24}, patch_size={"height": 8, "width": 8})
    return Bundle(model, PixtralLikeProcessor(images, tokenizer, patch_size=8, spatial_merge_size=1))


# ------------------------------------------------------------------------------------ Gemma 3 / 4
GEMMA_TOKENS = {"image_token": "<image_soft_token>", "boi_token": "<start_of_image>", "eoi_token": "<end_of_image>"}


def gemma_text_kwargs(vocab_size: int) -> dict[str, Any]:
    """One sliding-window and one full-attention layer, so both of Gemma's masks are exercised."""
    kwargs = text_kwargs(vocab_size)
    kwargs.update(head_dim=8, sliding_window=64, layer_types=["sliding_attention", "full_attention"])
    return kwargs


def build_gemma3(padding_side: str = "left", pan_and_scan: bool = False, seed: int = 0) -> Bundle:
    """Gemma 3: SigLIP tower (16x16 pixels, 4x4 patches: 16 patches) pooled 2x2 to 4 soft tokens + Gemma 3 LLM."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3Processor, Gemma3TextConfig, SiglipVisionConfig
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    tokenizer = word_tokenizer(GEMMA_TOKENS, padding_side=padding_side)
    torch.manual_seed(seed)
    config = Gemma3Config(
        text_config=Gemma3TextConfig(**gemma_text_kwargs(len(tokenizer))),
        vision_config=SiglipVisionConfig(**vision_kwargs(16, 4)),
        mm_tokens_per_image=4,
        boi_token_index=tokenizer.boi_token_id,
        eoi_token_index=tokenizer.eoi_token_id,
        image_token_index=tokenizer.image_token_id,
    )
    model = Gemma3ForConditionalGeneration(config).eval()
    torch.nn.init.normal_(model.model.multi_modal_projector.mm_input_projection_weight, std=0.5)  # zeros by default
    scan = dict(do_pan_and_scan=True, pan_and_scan_min_crop_size=8, pan_and_scan_min_ratio_to_activate=1.2) if pan_and_scan else {}
    images = Gemma3ImageProcessorPil(size={"height": 16, "width": 16}, **scan)
    return Bundle(model, Gemma3Processor(image_processor=images, tokenizer=tokenizer, image_seq_length=4))


def gemma4_processor_class() -> type:
    """``Gemma4Processor`` with only its image processor and tokenizer (its video processor needs torchvision)."""
    from transformers import Gemma4Processor
    from transformers.processing_utils import ProcessorMixin

    class DropMissing(ProcessorMixin):
        def __init__(self, *args: Any, feature_extractor: Any = None, video_processor: Any = None, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)

    class ImageOnlyGemma4Processor(Gemma4Processor, DropMissing):
        @classmethod
        def get_attributes(cls) -> list[str]:
            return ["image_processor", "tokenizer"]

        def __init__(self, image_processor: Any, tokenizer: Any, **kwargs: Any) -> None:
            Gemma4Processor.__init__(self, None, image_processor, tokenizer, None, **kwargs)

    return ImageOnlyGemma4Processor


def build_gemma4(padding_side: str = "left", seed: int = 0) -> Bundle:
    """Gemma 4: its own vision tower (2x2-pixel patches pooled 2x2; images resized to at most 70 soft tokens) + Gemma 4 LLM.

    The LLM attends bidirectionally among each image's tokens (``use_bidirectional_attention="vision"``).
    """
    from transformers import Gemma4Config, Gemma4ForConditionalGeneration, Gemma4TextConfig, Gemma4VisionConfig
    from transformers.models.gemma4.image_processing_pil_gemma4 import Gemma4ImageProcessorPil

    specials = GEMMA_TOKENS | {"audio_token": "<audio_soft_token>", "boa_token": "<start_of_audio>", "eoa_token": "<end_of_audio>"}
    tokenizer = word_tokenizer(specials, padding_side=padding_side)
    images = Gemma4ImageProcessorPil(patch_size=2, pooling_kernel_size=2, max_soft_tokens=70)
    processor = gemma4_processor_class()(images, tokenizer, image_seq_length=70)  # adds <|video|> to the tokenizer
    text = gemma_text_kwargs(len(tokenizer))
    text.update(
        global_head_dim=8, hidden_size_per_layer_input=8, vocab_size_per_layer_input=len(tokenizer),
        use_bidirectional_attention="vision",
    )  # fmt: skip
    vision = Gemma4VisionConfig(
        hidden_size=DIM, intermediate_size=2 * DIM, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
        head_dim=8, pooling_kernel_size=2, patch_size=2, position_embedding_size=64,
    )  # fmt: skip
    torch.manual_seed(seed)
    config = Gemma4Config(
        text_config=Gemma4TextConfig(**text), vision_config=vision, audio_config=None,
        boi_token_id=tokenizer.boi_token_id, eoi_token_id=tokenizer.eoi_token_id, image_token_id=tokenizer.image_token_id,
        video_token_id=processor.video_token_id, audio_token_id=tokenizer.audio_token_id,
        boa_token_id=tokenizer.boa_token_id, eoa_token_index=tokenizer.eoa_token_id,
    )  # fmt: skip
    return Bundle(Gemma4ForConditionalGeneration(config).eval(), processor)


def gemma4_inputs(bundle: Bundle, prompts: list[str], images: list[Any] = (), videos: list[list[Any]] = ()) -> dict[str, torch.Tensor]:
    """What ``Gemma4Processor`` returns for prompts holding ``<image_soft_token>`` and ``<|video|>`` markers.

    Its video processor needs torchvision, so frames go through the image processor (same resize,
    patches and positions) and each video marker is expanded as ``replace_video_token`` does:
    ``"mm:ss <start_of_image><|video|>...<end_of_image>"`` per frame (1 frame per second here).
    """
    processor = bundle.processor
    tokenizer = processor.tokenizer
    out: dict[str, torch.Tensor] = {}
    runs: dict[str, Any] = {}
    if images:
        pixels = processor.image_processor(list(images), return_tensors="pt")
        out.update(pixel_values=pixels["pixel_values"], image_position_ids=pixels["image_position_ids"])
        counts = pixels["num_soft_tokens_per_image"]
        runs[processor.image_token] = iter(f"{processor.boi_token}{processor.image_token * int(n)}{processor.eoi_token}" for n in counts)
    if videos:
        pixels = processor.image_processor([frame for video in videos for frame in video], return_tensors="pt")
        frame_counts = iter(int(n) for n in pixels["num_soft_tokens_per_image"])
        expanded = []
        boi, token, eoi = processor.boi_token, processor.video_token, processor.eoi_token
        for video in videos:
            expanded.append(" ".join(f"00:{second:02d} {boi}{token * next(frame_counts)}{eoi}" for second in range(len(video))))
        out.update(pixel_values_videos=pixels["pixel_values"], video_position_ids=pixels["image_position_ids"])
        out["num_frames_per_video"] = torch.tensor([len(video) for video in videos])
        runs[processor.video_token] = iter(expanded)
    texts = []
    for text in prompts:
        for marker, replacements in runs.items():
            parts = text.split(marker)
            text = parts[0] + "".join(f" {next(replacements)} {part}" for part in parts[1:])
        texts.append(text)
    encoded = tokenizer(texts, padding=True, return_tensors="pt")
    types = processor.create_mm_token_type_ids(encoded["input_ids"].tolist())
    return {**encoded, "mm_token_type_ids": torch.tensor(types), **out}
