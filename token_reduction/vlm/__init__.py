"""Feed a Hugging Face VLM fewer visual tokens, chosen by any selection method.

Three lines::

    pruned = prune_visual_tokens(model, TokenSelector.from_pretrained("selector/"), keep=0.5)
    out = pruned.generate(**processor(images=image, text=prompt, return_tensors="pt"), max_new_tokens=64)
    print(pruned.last.tokens_before, pruned.last.tokens_after)

See :mod:`token_reduction.vlm.common` for the pipeline, :mod:`token_reduction.vlm.families` for
which wrapper serves which ``model_type``, and each family's module (e.g.
:mod:`~token_reduction.vlm.llava_next`, :mod:`~token_reduction.vlm.llava_onevision`) for what
happens to its image layout.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from token_reduction.vlm.common import PrunedImage, PrunedInputs, PrunedLlava
from token_reduction.vlm.families import register_family, supported, wrapper_for
from token_reduction.selection.base import Budget, SelectionMethod


def prune_visual_tokens(
    model: Any,
    selector: SelectionMethod,
    keep: Budget | None = None,
    threshold: float | None = None,
    *,
    padding_side: str | None = None,
) -> PrunedLlava:
    """Wrap ``model`` so its images go through ``selector`` before the projector.

    Args:
        model: any model whose ``config.model_type`` is registered in :mod:`token_reduction.vlm.families`
            (``supported()`` lists them); anything else is a one-line ``UserError``.
        selector: any :class:`SelectionMethod` (a trained ``TokenSelector`` or a baseline).
        keep: default budget per crop: ``None`` (adaptive: the selector decides, e.g. by
            ``threshold``), an int count or a float fraction in (0, 1].
        threshold: default keep-probability threshold for adaptive selectors.
        padding_side: how to re-pad batches whose images kept different counts; ``None`` follows
            the incoming attention mask and falls back to ``"left"`` (what ``generate`` needs).
    Both defaults can be overridden per call: ``pruned.generate(**inputs, keep=0.25)``.
    """
    wrapper = wrapper_for(model)
    return wrapper(model, selector, keep=keep, threshold=threshold, padding_side=padding_side)


def load_selector(spec: str | os.PathLike[str], device: str | torch.device = "cpu") -> SelectionMethod:
    """An exported ``TokenSelector`` folder or Hub repo (``owner/name``), or a feature-only method name from the selection registry."""
    from token_reduction.models.hub import is_local
    from token_reduction.selection.registry import get_method, required_extras

    if Path(spec).is_dir() or not is_local(spec):
        return get_method("learned", selector=spec, map_location=str(device))
    name = str(spec)
    if os.sep in name or name.endswith(".json"):
        raise FileNotFoundError(f"selector folder {name} does not exist")
    if required_extras(name):
        raise ValueError(f"method '{name}' needs encoder extras {required_extras(name)} that LLaVA pruning does not compute")
    return get_method(name)


def load_pruned_llava(
    pretrained: str | os.PathLike[str],
    selector: str | os.PathLike[str] | SelectionMethod,
    keep: Budget | None = None,
    threshold: float | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype = "auto",
    *,
    temporal: bool = False,
    **temporal_options: Any,
) -> tuple[PrunedLlava, Any]:
    """Model + processor from a folder or hub id, wrapped with ``selector``; for the CLI and lmms-eval.

    The family comes from the checkpoint's config (``model_type``, looked up in
    :mod:`token_reduction.vlm.families`): an unsupported checkpoint is a one-line ``UserError``
    before any weights load. The model loads through ``AutoModelForImageTextToText``, the
    processor through ``AutoProcessor``, or, where that needs a package that is not installed
    (torchvision, num2words), as the family's processor class rebuilt from its image processor and
    tokenizer (see :func:`~token_reduction.vlm.processors.load_processor`).
    ``dtype="auto"`` means bfloat16 on CUDA and float32 elsewhere. The tokenizer pads on the left,
    as batched generation needs. ``temporal`` and ``temporal_options`` set how videos are pruned
    (see :func:`token_reduction.vlm.video.prune_video_tokens`).
    """
    from transformers import AutoConfig, AutoModelForImageTextToText

    from token_reduction.vlm.processors import load_processor
    from token_reduction.vlm.video import prune_video_tokens

    wrapper_for(AutoConfig.from_pretrained(pretrained), where=str(pretrained))
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dtype == "auto":
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    elif isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    processor = load_processor(pretrained)
    model = AutoModelForImageTextToText.from_pretrained(pretrained, dtype=dtype).to(device).eval()
    method = selector if not isinstance(selector, (str, os.PathLike)) else load_selector(selector, device)
    return prune_video_tokens(model, method, keep, threshold, temporal=temporal, **temporal_options), processor


IMAGE_WRAPS: dict[str, tuple[str, str]] = {"<|image_pad|>": ("<|vision_start|>", "<|vision_end|>")}
"""Layout a family's chat template puts around its image marker, when the processor does not add it
itself (Qwen2/2.5/3-VL, Qwen3.5). Other processors expand the bare marker with their own layout:
InternVL ``<IMG_CONTEXT>`` into ``<img>...</img>``, Gemma 3 ``<start_of_image>`` and Gemma 4
``<image_soft_token>`` into begin/end-of-image runs, Idefics3/SmolVLM ``<image>`` into the crop
grid, Mistral3 ``[IMG]`` into rows ended by ``[IMG_BREAK]``/``[IMG_END]``, LLaVA ``<image>``."""


def image_token(processor: Any) -> str:
    """The token ``processor`` expands into one image's placeholders (``<image>`` when it names none)."""
    tokenizer = getattr(processor, "tokenizer", processor)
    return getattr(processor, "image_token", None) or getattr(tokenizer, "image_token", None) or "<image>"


def image_marker(processor: Any) -> str:
    """What one image is in a prompt before ``processor`` expands it, with the layout the family's template adds."""
    token = image_token(processor)
    start, end = IMAGE_WRAPS.get(token, ("", ""))
    start = getattr(processor, "vision_start_token", None) or start
    end = getattr(processor, "vision_end_token", None) or end
    return f"{start}{token}{end}"


def build_prompt(processor: Any, text: str, num_images: int) -> str:
    """A user turn with ``num_images`` images, for any supported family.

    With a chat template (real checkpoints have one) the template places the images
    (``{"type": "image"}`` content) and ``text``'s own image markers are removed; without one,
    each missing image becomes the family's marker on its own line (:func:`image_marker`: the
    processor then expands it to the model's placeholders), and markers already in ``text`` count.
    """
    marker, token = image_marker(processor), image_token(processor)
    if getattr(processor, "chat_template", None):
        content: list[dict[str, Any]] = [{"type": "image"} for _ in range(num_images)]
        content.append({"type": "text", "text": text.replace(marker, "").replace(token, "").strip()})
        return processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    missing = num_images - text.count(token)
    return f"{marker}\n" * max(missing, 0) + text


def parse_keep(value: str | float | int | None) -> Budget | None:
    """``"0.5"`` -> 0.5 (fraction), ``"64"`` -> 64 (count per crop), ``"none"``/``""`` -> None (adaptive)."""
    if value is None or isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("", "none", "adaptive"):
        return None
    number = float(text)
    return int(number) if number.is_integer() and number > 1 else number


__all__ = [
    "PrunedImage",
    "PrunedInputs",
    "PrunedLlava",
    "build_prompt",
    "image_marker",
    "image_token",
    "load_pruned_llava",
    "load_selector",
    "parse_keep",
    "prune_visual_tokens",
    "register_family",
    "supported",
    "wrapper_for",
]
