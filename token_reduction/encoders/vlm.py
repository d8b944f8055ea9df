"""A VLM checkpoint as the encoder: cache exactly the tokens its pruning wrapper shows the selector.

``token-reduction extract --encoder PATH`` with a local checkpoint folder of any family in
:mod:`token_reduction.vlm.families` (Qwen2/2.5/3-VL, Qwen3.5, InternVL, Idefics3, SmolVLM, Gemma 3/4,
Mistral3, Pixtral-12B) loads the model, preprocesses each image with the family's own image
processor (with the processor class's image defaults, e.g. InternVL's tiling), and stores what the
wrapper's ``selector_features`` returns: a selector trained on that cache plugs into that model.
LLaVA-1.5/NeXT/OneVision checkpoints with a CLIP/SigLIP tower keep the tower path of
:mod:`~token_reduction.encoders.hf` (``--anyres`` for their tiles), which gives the same tokens.

A cache needs one token count per sample, so:

* **fixed-size crops** are one sample each, with their grid: InternVL tiles + thumbnail, Idefics3 /
  SmolVLM grid crops + global image, Gemma 3's 256 pooled tokens per image;
* **variable-resolution families** (Qwen, Mistral3 / Pixtral, Gemma 4) first stretch every image to
  one *canvas*, so all samples share a grid: ``PATH@S`` or ``PATH@HxW`` in pixels; the default is
  16 x 16 selector tokens (Qwen2.5-VL 448 px, Qwen3-VL 512, Mistral3 448, Pixtral-12B 256,
  Gemma 4 768; the processor's own pixel limits may shrink it). A selector has 2-D position codes
  and takes ``grid=`` at inference, so it runs on the other grids the model gives at inference.

The manifest's ``info`` records the family, ``model_type``, the canvas and how the features were
taken (``features``); the encoder name carries a short form of it, so ``feature_source`` names it.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image
from torch import Tensor, nn

from token_reduction.encoders.anyres import CropView
from token_reduction.encoders.base import Encoder
from token_reduction.encoders.geometry import Crop, Resize, Size
from token_reduction.errors import UserError

CANVAS_TOKENS = 16
"""Default canvas of the variable-resolution families: this many selector tokens per side."""
TOWER_TYPES = ("clip_vision_model", "siglip_vision_model", "clip", "siglip")
"""Vision towers of LLaVA checkpoints that :mod:`~token_reduction.encoders.hf` extracts itself."""
SPEC = re.compile(r"^(?P<path>.+?)@(?P<height>\d+)(?:x(?P<width>\d+))?$")


@dataclass(frozen=True)
class Family:
    """What extraction needs to know about one family, beyond its wrapper.

    ``keys``: processor outputs ``selector_features`` reads; ``concat``: the dim along which one
    image's outputs join others' in a batch; ``canvas``: variable resolution (resized to a canvas);
    ``tiles``: how the processor cuts crops (``"internvl"``, ``"idefics3"`` or ``None``: one crop).
    """

    keys: tuple[str, ...]
    tag: str
    canvas: bool = False
    concat: int = 0
    tiles: str | None = None


QWEN = Family(("pixel_values", "image_grid_thw"), "merged tokens after the patch merger", canvas=True)
FAMILIES: dict[str, Family] = {
    "qwen2_vl": QWEN, "qwen2_5_vl": QWEN, "qwen3_vl": QWEN, "qwen3_5": QWEN,
    "mistral3": Family(("pixel_values", "image_sizes"), "merged tokens after the patch merger", canvas=True),
    "llava": Family(("pixel_values", "image_sizes"), "Pixtral tokens before the projector", canvas=True),
    "gemma3": Family(("pixel_values",), "pooled tokens before the projector"),
    "gemma4": Family(("pixel_values", "image_position_ids"), "pooled tokens before embed_vision", canvas=True),
    "internvl": Family(("pixel_values",), "pixel-shuffled tokens before the projector", tiles="internvl"),
    "idefics3": Family(("pixel_values", "pixel_attention_mask"), "pixel-shuffled tokens before the connector", concat=1, tiles="idefics3"),
    "smolvlm": Family(("pixel_values", "pixel_attention_mask"), "pixel-shuffled tokens before the connector", concat=1, tiles="idefics3"),
}  # fmt: skip


def _pair(value: Any) -> tuple[int, int]:
    return (int(value[0]), int(value[1])) if isinstance(value, (list, tuple)) else (int(value), int(value))


def token_pixels(config: Any) -> int:
    """Input pixels per side of one selector token (the merge, shuffle or pooling times the patch)."""
    kind, vision = config.model_type, config.vision_config
    patch = _pair(vision.patch_size)[0]
    if kind in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_5"):
        return patch * int(vision.spatial_merge_size)
    if kind == "mistral3":
        return patch * int(config.spatial_merge_size)
    if kind == "internvl":
        return patch * int(round(1 / config.downsample_ratio))
    if kind in ("idefics3", "smolvlm"):
        return patch * int(config.scale_factor)
    if kind == "gemma3":
        return int(vision.image_size) // math.isqrt(int(config.mm_tokens_per_image))
    if kind == "gemma4":
        return patch * int(vision.pooling_kernel_size)
    return patch  # Pixtral-12B: one token per patch


def describe(config: Any) -> str:
    """How the features are taken, in words (manifest ``info["features"]``)."""
    kind = config.model_type
    if kind in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_5"):
        m = config.vision_config.spatial_merge_size
        return f"merged tokens after the {m}x{m} patch merger (the LLM's hidden size), one per LLM position"
    if kind == "mistral3":
        m = config.spatial_merge_size
        layer = config.vision_feature_layer
        return f"vision layer {layer} after the RMS norm and the {m}x{m} patch merger (tower width), before the projector MLP"
    if kind == "llava":
        return f"Pixtral vision layer {config.vision_feature_layer} tokens (one per [IMG]), before the projector"
    if kind == "internvl":
        s = int(round(1 / config.downsample_ratio))
        return f"vision layer {config.vision_feature_layer} (CLS dropped) pixel-shuffled {s}x{s} (patches concatenated), before the projector"
    if kind in ("idefics3", "smolvlm"):
        s = config.scale_factor
        return f"last vision layer pixel-shuffled {s}x{s} (patches concatenated), before the connector's projection"
    if kind == "gemma3":
        side = math.isqrt(int(config.mm_tokens_per_image))
        return f"last vision layer average-pooled to {side}x{side} (tower width), before the projector's norm and projection"
    return "the vision tower's pooled tokens (tower width), before embed_vision"


def vlm_checkpoint(spec: str) -> tuple[Path, Size | None, str] | None:
    """``(folder, canvas, model_type)`` when ``spec`` is a local checkpoint this module extracts, else ``None``.

    ``spec`` is ``PATH``, ``PATH@S`` or ``PATH@HxW``; LLaVA checkpoints with a CLIP/SigLIP tower
    (and anything that is not a registered VLM) are left to the tower loaders.
    """
    from token_reduction.vlm.families import is_supported

    folder, canvas = Path(spec).expanduser(), None
    match = SPEC.match(spec)
    if match and not folder.is_dir() and Path(match["path"]).expanduser().is_dir():
        folder = Path(match["path"]).expanduser()
        canvas = (int(match["height"]), int(match["width"] or match["height"]))
    if not (folder / "config.json").is_file():
        return None
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None
    kind = config.get("model_type") if isinstance(config, dict) else None
    if kind not in FAMILIES or not is_supported(kind):
        return None
    if kind == "llava" and (config.get("vision_config") or {}).get("model_type", "clip_vision_model") in TOWER_TYPES:
        return None
    return folder, canvas, kind


class VLMPreprocessor:
    """Model-free, picklable per-image preprocessing run in DataLoader workers.

    :meth:`render_views` returns the family processor's outputs for one image and one
    :class:`CropView` per crop (in the order ``selector_features`` returns them); each view's ops
    map the original image onto that crop as the model sees it (``image_size`` pixels), so crop
    boxes and text masks follow the processor's geometry.
    """

    def __init__(self, image_processor: Any, family: Family, images_kwargs: dict[str, Any], unit: int, canvas: Size | None) -> None:
        self.image_processor, self.family, self.images_kwargs = image_processor, family, dict(images_kwargs)
        self.patch_size, self.canvas = unit, canvas
        self.grid: tuple[int, int] = (1, 1)  # set by the encoder once the model has told it
        self.resample = int(getattr(image_processor, "resample", None) or Image.Resampling.BICUBIC)

    @property
    def image_size(self) -> Size:
        """``(H, W)`` pixels of every crop as the model sees it: the grid times the token's pixels."""
        return (self.grid[0] * self.patch_size, self.grid[1] * self.patch_size)

    def process(self, images: Sequence[Image.Image]) -> dict[str, Tensor]:
        """The processor outputs ``selector_features`` reads, for ``images`` (canvas-resized first)."""
        if self.canvas is not None:
            images = [image.convert("RGB").resize(self.canvas[::-1], resample=self.resample) for image in images]
        out = self.image_processor(images=list(images), return_tensors="pt", **self.images_kwargs)
        return {key: out[key] for key in (*self.family.keys, "rows", "cols", "num_patches", "num_crops") if key in out}

    def render_views(self, image: Image.Image) -> tuple[dict[str, Tensor], list[CropView]]:
        """One image's model inputs and crops; a layout this module cannot follow is an error (the image is skipped)."""
        out = self.process([image])
        views = self.views((image.height, image.width), out)
        if self.count_crops(out) != len(views):
            raise ValueError(f"the processor made {self.count_crops(out)} crops, expected {len(views)} from its tiling settings")
        mask = out.get("pixel_attention_mask")
        if mask is not None and not bool(mask.bool().all()):
            raise ValueError("the processor padded a crop: padded tokens are not shown to the selector, so the crop has no fixed grid")
        return {key: out[key] for key in self.family.keys if key in out}, views

    def setting(self, name: str) -> Any:
        """An image-processor setting as a call would see it (the processor's call defaults win)."""
        value = self.images_kwargs.get(name, getattr(self.image_processor, name, None))
        return dict(value) if name.endswith("size") and value is not None else value

    @property
    def max_crops(self) -> int:
        """The most crops one image can give (InternVL: tiles + thumbnail; Idefics3: grid + global image)."""
        if self.family.tiles == "internvl" and self.setting("crop_to_patches"):
            return int(self.setting("max_patches")) + 1
        if self.family.tiles == "idefics3" and self.setting("do_image_splitting"):
            return math.ceil(self.setting("size")["longest_edge"] / self.setting("max_image_size")["longest_edge"]) ** 2 + 1
        return 1

    def count_crops(self, out: dict[str, Tensor]) -> int:
        """Selector crops in one image's processor outputs (canvas families: the image itself)."""
        if self.family.canvas:
            return 1
        return int(out["pixel_values"].shape[self.family.concat])

    def views(self, size: Size, out: dict[str, Tensor]) -> list[CropView]:
        side = self.image_size
        full = [CropView("full", "full", (Resize(*side),))]
        if self.family.tiles == "internvl" and out["pixel_values"].shape[0] > 1:
            from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import get_optimal_tiled_canvas

            tile = self.setting("size")
            low, high = self.setting("min_patches"), self.setting("max_patches")
            cols, rows = get_optimal_tiled_canvas(size, (tile["height"], tile["width"]), low, high)
            return tile_views(rows, cols, side, "thumbnail")
        if self.family.tiles == "idefics3" and "rows" in out:
            rows, cols = (int(torch.as_tensor(out[key]).flatten()[0]) for key in ("rows", "cols"))
            return tile_views(rows, cols, side, "global") if rows * cols else full
        return full


def tile_views(rows: int, cols: int, side: Size, overview: str) -> list[CropView]:
    """Tiles of the image stretched to ``rows x cols`` crops, row-major, then the whole image as one crop."""
    height, width = side
    tiles = [
        CropView(f"r{r}c{c}", (r, c), (Resize(rows * height, cols * width), Crop(r * height, c * width, height, width)))
        for r in range(rows) for c in range(cols)
    ]  # fmt: skip
    return tiles + [CropView(overview, overview, (Resize(height, width),))]


def images_kwargs_for(config: Any) -> dict[str, Any]:
    """What the family's processor adds to every image-processor call (class defaults; Pixtral's patch size)."""
    from token_reduction.vlm.processors import processor_class_for

    if config.model_type in ("mistral3", "llava"):  # PixtralProcessor needs torchvision; its one image setting:
        merge = int(getattr(config, "spatial_merge_size", 1) if config.model_type == "mistral3" else 1)
        step = _pair(config.vision_config.patch_size)[0] * merge
        return {"patch_size": {"height": step, "width": step}}
    try:
        return dict(getattr(processor_class_for(config.model_type), "images_kwargs", None) or {})
    except (ImportError, ValueError):
        return {}


class FeaturesOnly:
    """Stands in for a selector in the wrapper: extraction calls ``selector_features``, never ``select``.

    A plain object (no generator state), so the encoder pickles into ``ddp_spawn`` processes.
    """

    name = "features_only"

    def select(self, features: Tensor, keep: Any = None, **kwargs: Any) -> Any:
        raise RuntimeError("the extraction encoder's wrapper only computes selector_features")


def drop_language_model(model: nn.Module) -> None:
    """Free the LLM (and LM head): ``selector_features`` only runs the vision side."""
    inner = getattr(model, "model", None)
    for owner, name in ((inner, "language_model"), (inner, "text_model"), (model, "lm_head")):
        if owner is not None and isinstance(getattr(owner, name, None), nn.Module):
            setattr(owner, name, nn.Identity())


class VLMEncoder(Encoder):
    """A VLM's own feature path behind the :class:`Encoder` interface (one sample per selector crop).

    Inputs are processor outputs, not a pixel tensor: :meth:`preprocess` builds them, the
    extraction pipeline gets them per image from :attr:`transform` (a :class:`VLMPreprocessor`)
    and batches them with :meth:`encode_inputs`. Encoder.__init__ is bypassed because its geometry
    (one fixed resize and a patch grid) does not describe a processor that cuts its own crops.
    """

    def __init__(self, name: str, model: nn.Module, model_type: str, transform: VLMPreprocessor) -> None:
        nn.Module.__init__(self)
        from token_reduction.vlm.families import wrapper_for

        self.model = model.eval().requires_grad_(False)
        self.wrapper = wrapper_for(model, where=name)(model, FeaturesOnly())
        self.model_type, self.family, self.transform = model_type, str(self.wrapper.family), transform
        self.spec = FAMILIES[model_type]
        self.patch_size, self.attention, self.default_pinpoints = transform.patch_size, False, None
        layer = getattr(model.config, "vision_feature_layer", None)
        self.layer = layer if isinstance(layer, int) and not isinstance(layer, bool) else None
        self.dim = int(self.wrapper.feature_dim)
        with torch.inference_mode():  # the grid of one blank image: every sample of the cache has it
            grids = self.wrapper.selector_grids(**self.to_model(transform.process([Image.new("RGB", (64, 64))])))
        if any(grid is None or tuple(grid) != tuple(grids[0]) for grid in grids):
            raise UserError(name, "crops", f"have no single token grid ({grids}); this checkpoint's layout cannot be cached per crop")
        transform.grid = (int(grids[0][0]), int(grids[0][1]))
        self.name = name if transform.canvas is None else f"{name}@{transform.canvas[0]}x{transform.canvas[1]}"
        self.name += f" [{model_type}: {self.spec.tag}]"

    @property
    def image_size(self) -> Size:
        return self.transform.image_size

    @property
    def grid(self) -> tuple[int, int]:
        return self.transform.grid

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def describe(self) -> dict[str, Any]:
        """Manifest ``info`` entries: family, model_type, canvas, how the features were taken."""
        canvas = list(self.transform.canvas) if self.transform.canvas else None
        samples = "one per image" if self.spec.canvas or self.spec.tiles is None else "one per crop"
        features = describe(self.model.config)
        return {"family": self.family, "model_type": self.model_type, "features": features, "canvas": canvas, "samples": samples}

    def preprocess(self, images: Sequence[Image.Image]) -> dict[str, Tensor]:  # type: ignore[override]
        """The processor outputs of ``images`` for :meth:`encode` (crops of all images, in order)."""
        return {key: value for key, value in self.transform.process(images).items() if key in self.spec.keys}

    def to_model(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        """Inputs on the model's device, pixels in its dtype."""
        moved = {k: v.to(self.device) for k, v in inputs.items() if k in self.spec.keys}
        return {k: v.to(self.dtype) if v.is_floating_point() else v for k, v in moved.items()}

    @torch.inference_mode()
    def encode(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:  # type: ignore[override]
        """``{"features": (crops, N, D)}``: the wrapper's ``selector_features`` of one batch of processor outputs."""
        features = self.wrapper.selector_features(**self.to_model(inputs))
        shapes = {tuple(f.shape) for f in features}
        if shapes != {(self.num_tokens, self.dim)}:
            expected = (self.num_tokens, self.dim)
            raise RuntimeError(f"{self.name}: selector_features gave shapes {sorted(shapes)}, expected {expected} for grid {self.grid}")
        return {"features": torch.stack(features)}

    def encode_inputs(self, items: list[dict[str, Tensor]], crops: list[int], batch_size: int) -> dict[str, Tensor]:
        """Encode per-image processor outputs, whole images at a time, about ``batch_size`` crops per call; float32 CPU."""
        parts, start = [], 0
        while start < len(items):
            stop, total = start + 1, crops[start]
            while stop < len(items) and total + crops[stop] <= batch_size:
                total, stop = total + crops[stop], stop + 1
            batch = {key: torch.cat([item[key] for item in items[start:stop]], dim=self.spec.concat) for key in items[start]}
            parts.append(self.encode(batch)["features"].float().cpu())
            start = stop
        return {"features": torch.cat(parts)}


def load_vlm_encoder(
    spec: str, folder: Path, canvas: Size | None, model_type: str, dtype: torch.dtype, device: str | torch.device = "cpu"
) -> VLMEncoder:
    """Load the checkpoint in ``folder`` (weights in their saved dtype, then the LLM dropped) and its image processor."""
    from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageTextToText

    from token_reduction.encoders.hf import quiet_transformers

    family = FAMILIES[model_type]
    name = spec[: spec.rindex("@")] if canvas is not None else spec  # the canvas goes back in, always spelled HxW
    with quiet_transformers():
        config = AutoConfig.from_pretrained(folder)
        if canvas is not None and not family.canvas:
            raise UserError(spec, "@canvas", f"{model_type} crops have a fixed size already; drop the @{canvas[0]}x{canvas[1]} suffix")
        if family.canvas and canvas is None:
            side = CANVAS_TOKENS * token_pixels(config)
            canvas = (side, side)
        try:
            image_processor = AutoImageProcessor.from_pretrained(folder)
        except (OSError, ValueError) as err:
            fix = f"no usable image processor ({err}); save the model's processor into the folder"
            raise UserError(folder, "preprocessor_config.json", fix) from err
        model = AutoModelForImageTextToText.from_pretrained(folder, dtype="auto")
    drop_language_model(model)
    model.to(device=device, dtype=dtype)
    transform = VLMPreprocessor(image_processor, family, images_kwargs_for(config), token_pixels(config), canvas)
    return VLMEncoder(name, model, model_type, transform)


__all__ = ["CANVAS_TOKENS", "FAMILIES", "VLMEncoder", "VLMPreprocessor", "describe", "load_vlm_encoder", "token_pixels", "vlm_checkpoint"]
