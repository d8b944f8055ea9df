"""CLIP and SigLIP vision towers from Hugging Face transformers, cut where the VLMs cut them.

Tokens are ``hidden_states[layer]`` (``hidden_states[0]`` is the embedding output), before any
final layer norm, with CLIP's CLS token dropped, because that is what LLaVA-NeXT (CLIP ViT-L/14-336,
``vision_feature_layer=-2``, 576 x 1024) and LLaVA-OneVision (SigLIP so400m/14-384, last hidden
state of its tower, 729 x 1152) project into their language models. Layers after the chosen one are
removed from the loaded copy, so they cost nothing.

ENCODER may be a local folder or a hub id of a CLIP/SigLIP (vision) model, or of a LLaVA /
LLaVA-NeXT / LLaVA-OneVision checkpoint, whose vision tower, ``vision_feature_layer`` and
``image_grid_pinpoints`` are then used. Only the image processor's geometry and normalisation
constants are read; preprocessing itself is :class:`ImageTransform` (identical to the PIL processors).
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import Tensor, nn

from token_reduction.encoders.anyres import default_pinpoints
from token_reduction.encoders.base import CLIP_MEAN, CLIP_STD, Encoder, ImageTransform

FAMILIES = {"clip": "clip", "clip_vision_model": "clip", "siglip": "siglip", "siglip_vision_model": "siglip"}
LLAVA_TYPES = ("llava", "llava_next", "llava_onevision")
DEFAULT_LAYERS = {"clip": -2, "siglip": -1}
"""LLaVA-NeXT feeds CLIP's penultimate layer; LLaVA-OneVision its SigLIP tower's last hidden state."""
HINT = "pass a local path to a saved CLIP/SigLIP vision model"


def hub_offline() -> bool:
    """Offline mode as the environment says *now* (huggingface_hub reads it only at import)."""
    return any(os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on") for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Hide load reports and progress bars (e.g. the text-tower keys a vision model ignores)."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        hf_logging.set_verbosity(level)


def resolve_layer(layer: int, num_layers: int, name: str) -> int:
    """Python-style index into ``hidden_states`` (``num_layers + 1`` entries) to a non-negative one."""
    count = num_layers + 1
    if isinstance(layer, bool) or not isinstance(layer, int) or not -count <= layer < count:
        raise ValueError(
            f"layer {layer!r} is out of range for {name!r}: hidden_states has {count} entries "
            f"(embeddings + {num_layers} layers), so use {-count}..{num_layers}"
        )
    return layer % count


def _source(spec: str) -> tuple[str, dict[str, Any]]:
    """Where to load from plus hub kwargs; a path-like spec must exist."""
    path = Path(spec).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ValueError(f"could not load {spec!r}: {path} is not a folder holding a config.json; {HINT}")
        return str(path), {}
    if spec.startswith(("/", ".", "~")) or spec.count("/") > 1 or "\\" in spec:
        raise ValueError(f"could not load {spec!r}: no such folder; {HINT}")
    return spec, {"local_files_only": True} if hub_offline() else {}


def _load_error(spec: str, source: str, err: Exception) -> ValueError:
    """A local folder's own error, or the 'not local and the hub did not help' message."""
    reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if Path(source).is_dir():
        return ValueError(f"could not load {spec!r}: {reason}")
    if hub_offline():
        why = "the model hub is unreachable (offline?)"
    else:
        why = "the model hub is unreachable (offline?) or has no such model"
    return ValueError(f"could not load {spec!r}: no local folder of that name and {why}; {HINT} ({reason})")


def _as_dict(size: Any) -> dict[str, int]:
    if size is None:
        return {}
    return {k: int(v) for k, v in dict(size).items() if v is not None}


def transform_from_processor(processor: Any, family: str, image_size: int) -> ImageTransform:
    """Read a CLIP/SigLIP-style image processor's geometry and constants (``None``: family defaults)."""
    if processor is None:
        if family == "clip":
            return ImageTransform(CLIP_MEAN, CLIP_STD, shortest_edge=image_size, crop=(image_size, image_size))
        return ImageTransform((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), resize_to=(image_size, image_size))
    name = type(processor).__name__
    size = _as_dict(getattr(processor, "size", None))
    if not getattr(processor, "do_resize", True):
        raise ValueError(f"image processor {name} has do_resize=False; only resizing CLIP/SigLIP processors are supported")
    kwargs: dict[str, Any] = {}
    if "shortest_edge" in size and "longest_edge" not in size:
        kwargs["shortest_edge"] = size["shortest_edge"]
    elif "height" in size and "width" in size:
        kwargs["resize_to"] = (size["height"], size["width"])
    else:
        raise ValueError(f"image processor {name} has size {size}: expected shortest_edge or height/width")
    crop = _as_dict(getattr(processor, "crop_size", None))
    if getattr(processor, "do_center_crop", False) and crop:
        kwargs["crop"] = (crop["height"], crop["width"])
    elif "shortest_edge" in kwargs:
        raise ValueError(f"image processor {name} resizes the shortest edge without a center crop: token grids would vary")
    normalize = getattr(processor, "do_normalize", True)
    return ImageTransform(
        mean=tuple(processor.image_mean) if normalize else (0.0, 0.0, 0.0),
        std=tuple(processor.image_std) if normalize else (1.0, 1.0, 1.0),
        resample=int(getattr(processor, "resample", 3)),
        rescale_factor=float(processor.rescale_factor) if getattr(processor, "do_rescale", True) else 1.0,
        **kwargs,
    )


def _model_class(family: str) -> type:
    from transformers import CLIPVisionModel, SiglipVisionModel

    return CLIPVisionModel if family == "clip" else SiglipVisionModel


def _llava_weight_files(source: str, hub: dict[str, Any]) -> list[str]:
    """Safetensors files holding ``vision_tower.*`` weights, local or (only those shards) from the hub."""
    local = Path(source)
    if local.is_dir():
        def fetch(name: str) -> str:
            if not (local / name).is_file():
                raise FileNotFoundError(f"{local / name} not found")
            return str(local / name)
    else:
        from huggingface_hub import hf_hub_download

        def fetch(name: str) -> str:
            return hf_hub_download(source, name, **hub)

    try:
        index = json.loads(Path(fetch("model.safetensors.index.json")).read_text())
    except (OSError, ValueError):
        return [fetch("model.safetensors")]
    names = sorted({file for key, file in index["weight_map"].items() if "vision_tower." in key})
    return [fetch(name) for name in names]


def _load_llava_tower(source: str, hub: dict[str, Any], vision_config: Any, family: str, attn: str | None) -> nn.Module:
    """The vision tower of a LLaVA checkpoint without instantiating its language model."""
    from safetensors import safe_open

    model = _model_class(family)._from_config(vision_config, attn_implementation=attn)
    wanted = set(model.state_dict())
    state: dict[str, Tensor] = {}
    for file in _llava_weight_files(source, hub):
        with safe_open(file, framework="pt") as handle:
            for key in handle.keys():
                if "vision_tower." not in key:
                    continue
                short = key.split("vision_tower.", 1)[1]
                for candidate in (short, short.removeprefix("vision_model."), f"vision_model.{short}"):
                    if candidate in wanted:
                        state[candidate] = handle.get_tensor(key)
                        break
    unused = ("head.", "post_layernorm.")
    missing = [k for k in wanted - set(state) if not k.removeprefix("vision_model.").startswith(unused)]
    if missing:
        raise ValueError(f"could not load the vision tower of {source!r}: {len(missing)} weights missing, e.g. {sorted(missing)[:3]}")
    model.load_state_dict(state, strict=False)
    return model


class HFVisionEncoder(Encoder):
    """A CLIP/SigLIP vision tower returning ``hidden_states[layer]`` as tokens (CLS dropped)."""

    def __init__(
        self,
        name: str,
        model: nn.Module,
        family: str,
        transform: ImageTransform,
        layer: int,
        attention: bool = False,
        pinpoints: list[tuple[int, int]] | None = None,
    ) -> None:
        config = model.config
        super().__init__(name, family, transform, config.patch_size, config.hidden_size, layer, attention,
                         pinpoints or default_pinpoints(family, transform.image_size))
        if transform.image_size != (config.image_size, config.image_size):
            raise ValueError(
                f"{name!r}: the image processor produces {transform.image_size} images but the model "
                f"expects {config.image_size}x{config.image_size}"
            )
        core = getattr(model, "vision_model", model)
        self.num_layers = len(core.encoder.layers)
        self.layer_index = resolve_layer(layer, self.num_layers, name)
        if attention and self.layer_index == 0:
            raise ValueError(f"{name!r}: layer {layer} is the embedding output, which has no attention to store")
        core.encoder.layers = nn.ModuleList(list(core.encoder.layers)[: max(self.layer_index, 1)])
        core.post_layernorm = nn.Identity()
        if getattr(core, "use_head", False):
            core.use_head = False
            del core.head
        self.drop_cls = family == "clip"
        self.model = model.eval().requires_grad_(False)
        self._attention: Tensor | None = None
        if attention:
            if getattr(config, "_attn_implementation", "eager") != "eager":
                raise ValueError(f"{name!r}: attention scores need the model loaded with attn_implementation='eager'")
            core.encoder.layers[self.layer_index - 1].self_attn.register_forward_hook(self._keep_attention)

    def _keep_attention(self, module: nn.Module, inputs: Any, output: Any) -> None:
        """Reduce the layer's attention right away: keeping (B, heads, T, T) would cost far more."""
        weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
        if weights is None:
            raise RuntimeError(f"{self.name!r}: the attention layer returned no weights (not eager attention?)")
        weights = weights.mean(dim=1, dtype=torch.float32)  # over heads, without a float copy of all heads
        # CLIP: how much the CLS token attends to each patch; SigLIP: attention each token receives.
        self._attention = weights[:, 0, 1:] if self.drop_cls else weights.mean(dim=1)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @torch.inference_mode()
    def encode(self, pixels: Tensor) -> dict[str, Tensor]:
        if pixels.dim() != 4 or tuple(pixels.shape[1:]) != (3, *self.image_size):
            raise ValueError(f"{self.name!r}: expected pixels (B, 3, {self.image_size[0]}, {self.image_size[1]}), got {tuple(pixels.shape)}")
        self._attention = None
        out = self.model(pixel_values=pixels.to(self.device, self.dtype), output_hidden_states=True)
        hidden = out.hidden_states[self.layer_index]
        if self.drop_cls:
            hidden = hidden[:, 1:]
        if hidden.shape[1] != self.num_tokens:
            raise RuntimeError(f"{self.name!r}: got {hidden.shape[1]} tokens, expected {self.num_tokens} for grid {self.grid}")
        result = {"features": hidden}
        if self.attention:
            result["attention"] = self._attention
        return result


def load_hf_encoder(
    spec: str,
    layer: int | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    attention: bool = False,
) -> HFVisionEncoder:
    """Load a CLIP/SigLIP vision tower (or a LLaVA checkpoint's) and its preprocessing."""
    from transformers import AutoConfig, AutoImageProcessor

    source, hub = _source(spec)
    try:
        with quiet_transformers():
            config = AutoConfig.from_pretrained(source, **hub)
    except (OSError, ValueError) as err:
        raise _load_error(spec, source, err) from err
    model_type = config.model_type
    vision_config, pinpoints = config, None
    if model_type in LLAVA_TYPES:
        vision_config = config.vision_config
        if layer is None:
            layer = config.vision_feature_layer
        if not isinstance(layer, int):
            raise ValueError(f"{spec!r}: multi-layer vision_feature_layer {layer!r} is not supported; pass --layer")
        pinpoints = [tuple(p) for p in getattr(config, "image_grid_pinpoints", None) or []] or None
        model_type = vision_config.model_type
    elif model_type in FAMILIES:
        vision_config = getattr(config, "vision_config", config)
    family = FAMILIES.get(model_type)
    if family is None:
        raise ValueError(
            f"{spec!r} is a {model_type!r} model; expected a CLIP or SigLIP vision model "
            f"(model_type one of {sorted(FAMILIES)} or a LLaVA checkpoint {list(LLAVA_TYPES)})"
        )
    layer = DEFAULT_LAYERS[family] if layer is None else layer
    resolve_layer(layer, vision_config.num_hidden_layers, spec)  # fail before loading weights
    attn = "eager" if attention else None
    try:
        with quiet_transformers():
            if config.model_type in LLAVA_TYPES:
                model = _load_llava_tower(source, hub, vision_config, family, attn)
            else:
                model = _model_class(family).from_pretrained(source, attn_implementation=attn, **hub)
    except OSError as err:
        raise _load_error(spec, source, err) from err
    try:
        with quiet_transformers():
            processor = AutoImageProcessor.from_pretrained(source, **hub)
    except (OSError, ValueError) as err:
        warnings.warn(f"{spec!r}: no usable image processor ({err}); using {family} defaults", stacklevel=2)
        processor = None
    transform = transform_from_processor(processor, family, vision_config.image_size)
    model.to(device=device, dtype=dtype)
    return HFVisionEncoder(spec, model, family, transform, layer, attention, pinpoints)
