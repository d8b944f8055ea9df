"""Image encoders that turn images into patch tokens, behind one :class:`Encoder` interface.

Specs understood by :func:`load_encoder`:

* ``pixels:P``, ``pixels:P@S``, ``pixels:P@HxW`` - weight-free normalised pixel patches;
* a Hugging Face hub id or local folder of a CLIP or SigLIP (vision) model, or of a LLaVA /
  LLaVA-NeXT / LLaVA-OneVision checkpoint (its vision tower is used);
* a local checkpoint folder of any other VLM family that pruning supports (``PATH``, or ``PATH@S`` /
  ``PATH@HxW`` to set the canvas of variable-resolution families): the tokens its pruning wrapper
  shows the selector (:mod:`token_reduction.encoders.vlm`).
"""

from __future__ import annotations

import torch

from token_reduction.encoders.anyres import CropView, anyres_views, default_pinpoints, parse_pinpoints
from token_reduction.encoders.base import Encoder, ImageTransform
from token_reduction.encoders.hf import DEFAULT_LAYERS, HFVisionEncoder, load_hf_encoder
from token_reduction.encoders.pixels import PixelEncoder
from token_reduction.encoders.vlm import VLMEncoder, load_vlm_encoder, vlm_checkpoint
from token_reduction.errors import UserError

DTYPES = {
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp32": torch.float32, "float32": torch.float32, "float": torch.float32,
}


def as_torch_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``"fp16"``/``"bf16"``/``"fp32"`` (or a torch dtype) to a torch dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}: use fp16, bf16 or fp32")
    return DTYPES[dtype]


def load_encoder(
    spec: str,
    layer: int | None = None,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = torch.float32,
    attention: bool = False,
) -> Encoder:
    """Build the encoder named by ``spec`` on ``device``, computing in ``dtype``.

    Args:
        spec: ``pixels:...``, a CLIP/SigLIP/LLaVA hub id or local folder, or a local VLM checkpoint
            folder (``PATH[@S|@HxW]``, see :mod:`token_reduction.encoders.vlm`).
        layer: index into ``hidden_states`` (negative counts from the end); ``None`` picks the
            family default that the VLMs use (CLIP -2, SigLIP -1, a LLaVA checkpoint its own).
            VLM checkpoints take their own layer from their config (``layer`` must be ``None``).
        attention: also return a per-token attention score from :meth:`Encoder.encode`.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"encoder spec must be a non-empty string, got {spec!r}")
    torch_dtype = as_torch_dtype(dtype)
    if spec.strip().startswith("pixels:"):
        if layer is not None:
            raise ValueError(f"{spec!r} has no layers; drop --layer")
        if attention:
            raise ValueError(f"{spec!r} has no attention to store; drop --store-attention")
        return PixelEncoder(spec, device=device, dtype=torch_dtype)
    found = vlm_checkpoint(spec.strip())
    if found is not None:
        if layer is not None:
            raise UserError(spec, "--layer", "a VLM checkpoint's features come from its own config (vision_feature_layer); drop --layer")
        if attention:
            raise UserError(spec, "--store-attention", "not available for VLM checkpoints; drop it")
        return load_vlm_encoder(spec.strip(), *found, dtype=torch_dtype, device=device)
    return load_hf_encoder(spec.strip(), layer=layer, device=device, dtype=torch_dtype, attention=attention)


__all__ = [
    "DEFAULT_LAYERS",
    "CropView",
    "Encoder",
    "HFVisionEncoder",
    "ImageTransform",
    "PixelEncoder",
    "VLMEncoder",
    "anyres_views",
    "as_torch_dtype",
    "default_pinpoints",
    "load_encoder",
    "parse_pinpoints",
]
