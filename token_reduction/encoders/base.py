"""The Encoder interface: images in, a grid of patch tokens out.

Preprocessing lives in a separate, model-free :class:`ImageTransform` so DataLoader workers can
run it (and send the same geometry through text masks) without a copy of the network.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from token_reduction.encoders.geometry import Crop, Op, Resize, Size, render_image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ImageTransform:
    """Resize (to a shortest edge or an exact size), optional center crop, rescale, normalise.

    This is what CLIP's and SigLIP's Hugging Face image processors do, written as a geometry plan
    (:meth:`geometry`) plus per-channel arithmetic, so pixels and masks take the same path.
    """

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize_to: Size | None = None
    shortest_edge: int | None = None
    crop: Size | None = None
    resample: int = Image.Resampling.BICUBIC
    rescale_factor: float = 1 / 255

    def __post_init__(self) -> None:
        if self.resize_to is not None and self.shortest_edge is not None:
            raise ValueError("ImageTransform: give resize_to or shortest_edge, not both")
        if self.crop is None and self.resize_to is None:
            raise ValueError("ImageTransform: without resize_to the output size needs a center crop")

    @property
    def image_size(self) -> Size:
        """``(H, W)`` of every preprocessed image."""
        return self.crop if self.crop is not None else self.resize_to  # type: ignore[return-value]

    def geometry(self, size: Size) -> list[Op]:
        """The resize/crop plan for an input of ``size`` ``(H, W)``."""
        height, width = size
        ops: list[Op] = []
        if self.resize_to is not None:
            ops.append(Resize(*self.resize_to))
            height, width = self.resize_to
        elif self.shortest_edge is not None:
            short, long = (width, height) if width <= height else (height, width)
            new_long = int(self.shortest_edge * long / short)  # same rounding as transformers
            height, width = (new_long, self.shortest_edge) if width <= height else (self.shortest_edge, new_long)
            ops.append(Resize(height, width))
        if self.crop is not None:
            ch, cw = self.crop
            ops.append(Crop((height - ch) // 2, (width - cw) // 2, ch, cw))
        return ops

    def __call__(self, images: Sequence[Image.Image]) -> Tensor:
        """``(B, 3, H, W)`` float32 normalised pixels."""
        if not images:
            raise ValueError("preprocess: got an empty list of images")
        arrays = []
        for image in images:
            if image.mode != "RGB":
                image = image.convert("RGB")
            arrays.append(np.asarray(render_image(image, self.geometry((image.height, image.width)), self.resample)))
        pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() * self.rescale_factor
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        return (pixels - mean) / std


class Encoder(nn.Module, ABC):
    """A frozen image encoder that yields ``grid[0] * grid[1]`` patch tokens of size ``dim``.

    Attributes:
        name: the spec it was loaded from (stored in cache manifests).
        family: ``"clip"``, ``"siglip"`` or ``"pixels"``; picks defaults such as AnyRes pinpoints.
        layer: the ``hidden_states`` index the tokens come from (``None`` for weight-free encoders).
        transform: model-free preprocessing, safe to pickle into DataLoader workers.
        attention: whether :meth:`encode` also returns a per-token attention score.
    """

    def __init__(
        self,
        name: str,
        family: str,
        transform: ImageTransform,
        patch_size: int,
        dim: int,
        layer: int | None,
        attention: bool = False,
        default_pinpoints: list[Size] | None = None,
    ) -> None:
        super().__init__()
        height, width = transform.image_size
        if not 0 < patch_size <= min(height, width):
            raise ValueError(f"encoder {name!r}: patch size {patch_size} does not fit image size {(height, width)}")
        self.name = name
        self.family = family
        self.transform = transform
        self.patch_size = patch_size
        self.dim = dim
        self.layer = layer
        self.attention = attention
        self.default_pinpoints = default_pinpoints

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Unpickled (``ddp_spawn``, DataLoader workers): re-register what transformers 5 records per
        module at ``__init__`` (``_can_record_outputs``); without it ``output_hidden_states`` silently
        returns ``None`` in the new process."""
        super().__setstate__(state)
        try:
            from transformers.utils.output_capturing import _CAN_RECORD_REGISTRY
        except ImportError:  # older transformers record outputs without a registry
            return
        for module in self.modules():
            if hasattr(module, "_can_record_outputs"):
                _CAN_RECORD_REGISTRY[module] = module._can_record_outputs

    @property
    def image_size(self) -> Size:
        return self.transform.image_size

    @property
    def grid(self) -> tuple[int, int]:
        """``(rows, cols)`` of patch tokens, row-major; a remainder is dropped like the patch conv does (384 / 14 -> 27)."""
        height, width = self.image_size
        return (height // self.patch_size, width // self.patch_size)

    @property
    def num_tokens(self) -> int:
        rows, cols = self.grid
        return rows * cols

    @property
    def device(self) -> torch.device:
        for tensor in self.parameters():
            return tensor.device
        return torch.device(getattr(self, "_device", "cpu"))

    def preprocess(self, images: Sequence[Image.Image]) -> Tensor:
        """PIL images to the ``(B, 3, H, W)`` float32 tensor :meth:`encode` expects (on the CPU)."""
        return self.transform(images)

    @abstractmethod
    def encode(self, pixels: Tensor) -> dict[str, Tensor]:
        """``{"features": (B, N, D)}`` plus ``"attention": (B, N)`` when enabled, on the encoder's device."""

    def forward(self, pixels: Tensor) -> dict[str, Tensor]:
        return self.encode(pixels)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, layer={self.layer}, grid={self.grid}, dim={self.dim}"
