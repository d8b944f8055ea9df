"""InternVL glue (``model_type == "internvl"``): tiles + thumbnail, pixel shuffle, MLP projector.

InternVL cuts an image into up to ``max_patches`` tiles plus a thumbnail (dynamic tiling; one crop
for small images), runs the vision tower on every crop, drops CLS (``"default"`` strategy), and
pixel-shuffles each crop's ``side x side`` patch grid by ``downsample_ratio`` (0.5: every 2x2
block of patches becomes one token with 4x the channels). The projector (LayerNorm + MLP, per
token) maps those to the LLM, and the prompt holds ``<img>`` + one ``<IMG_CONTEXT>`` per token of
every crop + ``</img>``.

What pruning does with that, and why:

* **Where the selector looks: after the pixel shuffle, before the projector.** The LLM reads one
  token per 2x2 block, so that is the unit a budget must count; selecting raw patches would drop
  quarter-tokens the shuffle then has to re-assemble. The shuffled token is the lossless
  concatenation of its four patch features (no learned weights), so it is still the vision
  encoder's representation, independent of the projector and the LLM, and ``extract`` stores
  exactly that (:meth:`PrunedInternVL.selector_features`): dim ``vision hidden * 4``. The projector
  works per token, so projecting only the kept ones gives exactly the model's values for them.
* **Each crop has its own budget** (tiles and thumbnail alike), as for LLaVA-NeXT's AnyRes crops,
  so the global view and every tile keep some tokens.
* **Layout:** ``<img>``/``</img>`` are text tokens, never counted and never touched; the image's
  run of ``<IMG_CONTEXT>`` is cut to its kept count, kept tokens in raster order, crop after crop.
* **Positions** are sequential (1-D RoPE): the shared rule applies.

The processor does not return how many crops each image has (it consumes ``num_patches``), so
the wrapper reads it off the prompt: every maximal run of ``<IMG_CONTEXT>`` is one image (or one
video frame: InternVL feeds frames as one-crop images, so they are pruned as such), holding
``crops * tokens_per_crop`` placeholders. ``keep=1.0`` reproduces the model's own inputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from token_reduction.errors import UserError
from token_reduction.selection.base import Budget
from token_reduction.vlm.common import PrunedImage, PrunedInputs, PrunedLlava, run_selector
from token_reduction.vlm.sequence import placeholder_slots


@dataclass
class PrunedCrops(PrunedImage):
    """One image made of crops, each pruned on its own budget; ``features`` are the crops' kept tokens in order."""

    crops_before: list[int] = field(default_factory=list)
    crops_after: list[int] = field(default_factory=list)

    @classmethod
    def group(cls, crops: list[PrunedImage], counts: list[int]) -> list["PrunedCrops"]:
        """Consecutive ``crops`` joined into images of ``counts[i]`` crops each."""
        if sum(counts) != len(crops):
            raise ValueError(f"{len(crops)} crops cannot be grouped into images of {counts} crops")
        images, start = [], 0
        for count in counts:
            part = crops[start : start + count]
            before, after = [crop.before for crop in part], [crop.after for crop in part]
            images.append(cls(torch.cat([crop.features for crop in part]), sum(before), crops_before=before, crops_after=after))
            start += count
        return images


def group_crops(ends_image: list[bool]) -> list[int]:
    """Crops per image from a per-crop "last crop of its image" flag; trailing crops form one more image."""
    counts, run = [], 0
    for last in ends_image:
        run += 1
        if last:
            counts.append(run)
            run = 0
    return counts + ([run] if run else [])


def run_lengths(slots: Tensor) -> list[int]:
    """Lengths of the maximal runs of True in each row of ``slots`` ``(B, L)``, in reading order."""
    runs: list[int] = []
    for row in slots:
        edges = torch.cat([row.new_zeros(1), row, row.new_zeros(1)]).long().diff()
        starts, ends = (edges == 1).nonzero().squeeze(1), (edges == -1).nonzero().squeeze(1)
        runs.extend((ends - starts).tolist())
    return runs


def flat_tokens(features: list[Tensor]) -> Tensor:
    """Every kept token as its own ``(1, D)`` entry: ``(sum, 1, D)``.

    The model flattens ``pooler_output`` before scattering it, and ``generate`` (which repeats
    entries per row for beams or several return sequences by matching cumulative lengths) then
    still pairs every row with its own images, whatever each image kept.
    """
    return torch.cat(features)[:, None]


class PrunedInternVL(PrunedLlava):
    """:class:`PrunedLlava` for ``InternVLForConditionalGeneration`` (images, and frames fed as images)."""

    family = "internvl"
    vision_kwargs = ("vision_feature_layer", "vision_feature_select_strategy")

    # ------------------------------------------------------------------------------ geometry
    @property
    def shuffle_factor(self) -> int:
        """Patches per side merged into one LLM token (2 for ``downsample_ratio=0.5``)."""
        return int(round(1 / self.config.downsample_ratio))

    def feature_dim_for(self, layer: int | list[int]) -> int:
        """Dim of a pixel-shuffled token of one layer: what the projector (and the selector) reads."""
        if not isinstance(layer, int):
            raise UserError(self.family, "vision_feature_layer", f"InternVL reads one layer, got {layer!r}")
        return self.config.vision_config.hidden_size * self.shuffle_factor**2

    @property
    def token_grid(self) -> tuple[int, int]:
        """``(rows, cols)`` of one crop's shuffled tokens, in the raster order the LLM reads them."""
        vision = self.config.vision_config
        rows, cols = (vision.image_size[i] // vision.patch_size[i] // self.shuffle_factor for i in (0, 1))
        return rows, cols

    @property
    def tokens_per_crop(self) -> int:
        rows, cols = self.token_grid
        return rows * cols

    # ------------------------------------------------------------------------------ features
    def vision_features(
        self, pixel_values: Tensor, vision_feature_layer: int | None = None, vision_feature_select_strategy: str | None = None
    ) -> Tensor:
        """``(crops, tokens_per_crop, D)``: the model's ``get_image_features`` up to the projector."""
        if pixel_values.dim() != 4:
            raise UserError(self.family, "pixel_values", f"expected (crops, 3, H, W), got shape {tuple(pixel_values.shape)}")
        layer, strategy = self.feature_options(vision_feature_layer, vision_feature_select_strategy)
        pixel_values = pixel_values.to(dtype=self.inner.dtype)
        out = self.inner.vision_tower(pixel_values=pixel_values, output_hidden_states=layer, return_dict=True)
        self.record_encoder_output("image", out)
        features = out.last_hidden_state if layer == -1 else out.hidden_states[layer]
        if strategy == "default":
            features = features[:, 1:, :]
        crops, num_patches, _ = features.shape
        side = int(num_patches**0.5)
        if side * side != num_patches:
            raise UserError(self.family, "pixel_values", f"crops must give a square patch grid, got {num_patches} patches")
        shuffled = self.inner.pixel_shuffle(features.reshape(crops, side, side, -1), scale_factor=self.config.downsample_ratio)
        return shuffled.reshape(crops, -1, shuffled.shape[-1])

    def crops_per_image(self, input_ids: Tensor | None = None, inputs_embeds: Tensor | None = None) -> list[int]:
        """Crops of every image (or frame) in reading order, read off its ``<IMG_CONTEXT>`` run length."""
        per_crop = self.tokens_per_crop
        slots = placeholder_slots(input_ids, inputs_embeds, self.config.image_token_id, self.embed_token)
        runs = run_lengths(slots)
        bad = [run for run in runs if run % per_crop]
        if bad:
            raise UserError(
                self.family, "input_ids",
                f"an image run of {bad[0]} <IMG_CONTEXT> tokens is not a multiple of {per_crop} tokens per crop; "
                f"build prompts with the model's processor (image_seq_length={per_crop})",
            )  # fmt: skip
        return [run // per_crop for run in runs]

    @torch.no_grad()
    def selector_features(self, pixel_values: Tensor, **processor_outputs: Any) -> list[Tensor]:
        """One ``(tokens_per_crop, D)`` tensor per *crop* (tiles, then the thumbnail, image after image).

        Exactly what the selector sees: each crop is its own selector input with grid
        :attr:`token_grid` (:meth:`selector_grids`); :meth:`crops_per_image` groups them into images.
        """
        return list(self.vision_features(pixel_values))

    def selector_grids(self, pixel_values: Tensor, **processor_outputs: Any) -> list[tuple[int, int]]:
        """The token grid of each crop in :meth:`selector_features`."""
        return [self.token_grid] * int(pixel_values.shape[0])

    # ------------------------------------------------------------------------------ encoding
    def encode_images(
        self,
        pixel_values: Tensor,
        image_sizes: Any,
        keep: Budget | None,
        threshold: float | None,
        *,
        crops: list[int] | None = None,
        **options: Any,
    ) -> list[PrunedImage]:
        """Tower -> pixel shuffle -> selector per crop -> projector on kept tokens, one :class:`PrunedCrops` per image."""
        features = self.vision_features(pixel_values, **options)
        crops = [features.shape[0]] if crops is None else crops
        if sum(crops) != features.shape[0]:
            raise UserError(
                self.family, "pixel_values",
                f"holds {features.shape[0]} crops but the prompt's <IMG_CONTEXT> runs need {sum(crops)}; "
                "pass the processor's pixel_values and input_ids together",
            )  # fmt: skip
        valid = torch.ones(features.shape[:2], dtype=torch.bool, device=features.device)
        mask, features = run_selector(self.selector, features, valid, keep, threshold, self.token_grid)
        projected = self.inner.multi_modal_projector(features[mask])  # raster order, crop after crop
        per_crop = [PrunedImage(chunk, self.tokens_per_crop) for chunk in projected.split(mask.sum(dim=1).tolist())]
        return PrunedCrops.group(per_crop, crops)

    def prepare(
        self,
        input_ids: Tensor | None,
        pixel_values: Tensor | None = None,
        image_sizes: Tensor | None = None,
        attention_mask: Tensor | None = None,
        **kwargs: Any,
    ) -> PrunedInputs:
        """The shared ``prepare``, told each image's crop count (from the prompt); kept tokens go in as ``(sum, 1, D)``."""
        if pixel_values is not None and (input_ids is not None or kwargs.get("inputs_embeds") is not None):
            kwargs["crops"] = self.crops_per_image(input_ids, kwargs.get("inputs_embeds"))
        prepared = super().prepare(input_ids, pixel_values, image_sizes, attention_mask, **kwargs)
        image = prepared.mm_encoder_outputs.get("image")
        if image is not None:  # InternVL's forward calls .to() on pooler_output: a tensor, not a list
            image.pooler_output = flat_tokens([item.features for item in prepared.images])
        return prepared
