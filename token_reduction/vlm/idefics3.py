"""Idefics3 and SmolVLM glue (``model_type`` ``"idefics3"`` / ``"smolvlm"``): crop grid + global image, pixel shuffle.

Both split an image into a grid of ``max_image_size`` crops plus a downscaled *global* image (one
crop only for small images), run a SigLIP tower on every crop (``pixel_attention_mask`` marks
padding pixels), pixel-shuffle each crop's ``side x side`` patch grid by ``scale_factor`` (2: every
2x2 block of patches becomes one token with 4x the channels) and project that with one linear layer.
The prompt reads, per image::

    <fake_token_around_image><row_1_col_1><image>*n <fake_token_around_image><row_1_col_2><image>*n ...
    <fake_token_around_image><global-img><image>*n <fake_token_around_image>

What pruning does with that, and why:

* **Where the selector looks: after the pixel shuffle, before the projection**, as for InternVL:
  the LLM reads one token per shuffled block, so that is what a budget counts; the shuffled token
  is the lossless concatenation of its patches' SigLIP features (dim ``hidden * scale_factor**2``,
  what ``selector_features`` returns and ``extract`` stores), and the per-token linear projection
  of the kept tokens equals the model's own values for them.
* **Each crop has its own budget** (grid crops and global image alike), with its own run of
  ``<image>`` placeholders, cut to its kept count. ``<fake_token_around_image>``, ``<row_r_col_c>``,
  ``<global-img>`` and newlines are layout: never counted, never touched, so every crop's kept
  tokens stay behind their own tag.
* **Padding is never kept.** A shuffled token all of whose patches are padding (per
  ``pixel_attention_mask``) is shown to the selector as padding. The stock processors resize every
  crop to the full square, so this only matters for hand-made inputs (where ``keep=1.0`` then
  drops those tokens, unlike the unpruned model). Padding *crops* (all-zero pixels, which batch
  rows with fewer crops get) are skipped as the model skips them.
* **Positions** are sequential (1-D RoPE): the shared rule applies.

``pruned.last.images`` has one :class:`~token_reduction.vlm.internvl.PrunedCrops` per image (with
per-crop counts). Images are told apart in the prompt by the tag before each crop's run: an image
ends with the crop tagged ``<global-img>``, whose id is read off the prompt (the last crop of a
row is always a global one) unless :attr:`PrunedIdefics3.global_image_token_id` is set.
``keep=1.0`` reproduces the model's own inputs.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from token_reduction.errors import UserError
from token_reduction.selection.base import Budget
from token_reduction.vlm.common import PrunedImage, PrunedInputs, PrunedLlava, run_selector
from token_reduction.vlm.internvl import PrunedCrops, group_crops
from token_reduction.vlm.sequence import placeholder_slots


class PrunedIdefics3(PrunedLlava):
    """:class:`PrunedLlava` for ``Idefics3ForConditionalGeneration``."""

    family = "idefics3"
    family_kwargs = ("pixel_attention_mask",)
    global_image_token_id: int | None = None
    """Id of ``<global-img>``; ``None``: read off the prompt (the tag before each row's last crop)."""
    selector_where = "the {family} vision tower after its {config.scale_factor}x{config.scale_factor} pixel shuffle"

    # ------------------------------------------------------------------------------ geometry
    @property
    def scale(self) -> int:
        return int(self.config.scale_factor)

    @property
    def feature_dim(self) -> int:
        """Dim of a pixel-shuffled token: what the connector's projection (and the selector) reads."""
        return self.config.vision_config.hidden_size * self.scale**2

    @property
    def token_grid(self) -> tuple[int, int]:
        """``(rows, cols)`` of one crop's shuffled tokens, raster order as the LLM reads them."""
        vision = self.config.vision_config
        side = vision.image_size // vision.patch_size // self.scale
        return side, side

    @property
    def tokens_per_crop(self) -> int:
        rows, cols = self.token_grid
        return rows * cols

    # ------------------------------------------------------------------------------ features
    def vision_features(self, pixel_values: Tensor, pixel_attention_mask: Tensor | None = None) -> tuple[Tensor, Tensor, list[int]]:
        """Shuffled features ``(crops, n, D)``, their validity ``(crops, n)`` and real crops per batch row.

        The model's own steps up to the projection: padding crops (all-zero pixels) are dropped, the
        pixel mask becomes a patch mask for the tower, and that patch mask goes through the same
        pixel shuffle so every shuffled token knows whether any of its patches is real.
        """
        if pixel_values.dim() != 5:
            raise UserError(self.family, "pixel_values", f"expected (batch, crops, 3, H, W), got shape {tuple(pixel_values.shape)}")
        batch, slots = pixel_values.shape[:2]
        pixels = pixel_values.to(dtype=self.inner.dtype).view(batch * slots, *pixel_values.shape[2:])
        real = (pixels == 0.0).sum(dim=(-1, -2, -3)) != pixels.shape[1:].numel()
        pixels = pixels[real].contiguous()
        if pixel_attention_mask is None:
            pixel_mask = torch.ones(pixels.shape[0], *pixels.shape[2:], dtype=torch.bool, device=pixels.device)
        else:
            pixel_mask = pixel_attention_mask.view(batch * slots, *pixel_attention_mask.shape[2:])[real].contiguous()
        patch = self.config.vision_config.patch_size
        subgrid = pixel_mask.unfold(dimension=1, size=patch, step=patch).unfold(dimension=2, size=patch, step=patch)
        patch_mask = (subgrid.sum(dim=(-1, -2)) > 0).bool()
        out = self.inner.vision_model(pixel_values=pixels, patch_attention_mask=patch_mask, return_dict=True)
        self.record_encoder_output("image", out)
        connector = self.inner.connector
        features = connector.pixel_shuffle(out.last_hidden_state, self.scale)
        valid = connector.pixel_shuffle(patch_mask.flatten(1)[..., None].float(), self.scale).amax(dim=-1) > 0
        return features, valid, real.view(batch, slots).sum(dim=1).tolist()

    @torch.no_grad()
    def selector_features(
        self, pixel_values: Tensor, pixel_attention_mask: Tensor | None = None, **processor_outputs: Any
    ) -> list[Tensor]:
        """One ``(n, D)`` tensor per real *crop* (grid crops and global images, in pixel order): what the selector sees.

        Padding tokens are left out, so a tensor is shorter than ``n`` only for padded crops; each
        full crop has grid :attr:`token_grid`. :meth:`crop_layout` groups crops into images.
        """
        features, valid, _ = self.vision_features(pixel_values, pixel_attention_mask)
        return [crop[keep] for crop, keep in zip(features, valid)]

    def selector_grids(
        self, pixel_values: Tensor, pixel_attention_mask: Tensor | None = None, **processor_outputs: Any
    ) -> list[tuple[int, int] | None]:
        """The token grid of each crop in :meth:`selector_features` (``None`` for a padded crop)."""
        _, valid, _ = self.vision_features(pixel_values, pixel_attention_mask)
        return [self.token_grid if bool(v.all()) else None for v in valid]

    def crop_layout(self, input_ids: Tensor | None = None, inputs_embeds: Tensor | None = None) -> tuple[list[int], list[int]]:
        """Crops per batch row and crops per image (reading order), read off the prompt.

        Every ``tokens_per_crop`` placeholders of a row are one crop; an image ends with the crop
        whose run follows the ``<global-img>`` tag (compared as ids, or as embeddings when only
        ``inputs_embeds`` are given).
        """
        n = self.tokens_per_crop
        slots = placeholder_slots(input_ids, inputs_embeds, self.config.image_token_id, self.embed_token)
        keys = input_ids if input_ids is not None else inputs_embeds
        per_row, tags = [], []
        for row in range(slots.shape[0]):
            found = slots[row].nonzero().squeeze(1)
            if len(found) % n:
                raise UserError(
                    self.family, "input_ids",
                    f"row {row} holds {len(found)} <image> tokens, not a multiple of {n} per crop; "
                    "build prompts with the model's processor",
                )  # fmt: skip
            per_row.append(len(found) // n)
            tags.append([keys[row, max(int(start) - 1, 0)] for start in found[::n]])
        if self.global_image_token_id is not None:
            tag = torch.tensor(self.global_image_token_id, device=keys.device)
            global_tag = tag if input_ids is not None else self.embed_token(self.global_image_token_id).to(keys)
        else:
            global_tag = next((row[-1] for row in tags if row), None)
        ends = [global_tag is not None and torch.equal(tag, global_tag) for row in tags for tag in row]
        return per_row, group_crops(ends)

    # ------------------------------------------------------------------------------ encoding
    def encode_images(
        self,
        pixel_values: Tensor,
        image_sizes: Any,
        keep: Budget | None,
        threshold: float | None,
        *,
        pixel_attention_mask: Tensor | None = None,
        crops_per_row: list[int] | None = None,
        **family: Any,
    ) -> list[PrunedImage]:
        """Tower -> pixel shuffle -> selector per crop -> projection of kept tokens, one item per *crop*.

        Crops are the unit :func:`~token_reduction.vlm.sequence.shorten_placeholders` matches to
        placeholder runs (each behind its own tag); :meth:`prepare` regroups them into images.
        """
        features, valid, per_row = self.vision_features(pixel_values, pixel_attention_mask)
        if crops_per_row is not None and crops_per_row != per_row:
            raise UserError(
                self.family, "pixel_values",
                f"holds {per_row} real crops per row but the prompt's <image> tokens need {crops_per_row}; "
                "pass the processor's pixel_values and input_ids together",
            )  # fmt: skip
        mask, features = run_selector(self.selector, features, valid, keep, threshold, self.token_grid)
        projected = self.inner.connector.modality_projection(features[mask])
        return [PrunedImage(chunk, self.tokens_per_crop) for chunk in projected.split(mask.sum(dim=1).tolist())]

    def prepare(
        self,
        input_ids: Tensor | None,
        pixel_values: Tensor | None = None,
        image_sizes: Tensor | None = None,
        attention_mask: Tensor | None = None,
        **kwargs: Any,
    ) -> PrunedInputs:
        """The shared ``prepare`` on crops, then regrouped: ``last.images`` holds one :class:`PrunedCrops` per image."""
        per_image = None
        if pixel_values is not None and (input_ids is not None or kwargs.get("inputs_embeds") is not None):
            kwargs["crops_per_row"], per_image = self.crop_layout(input_ids, kwargs.get("inputs_embeds"))
        prepared = super().prepare(input_ids, pixel_values, image_sizes, attention_mask, **kwargs)
        if prepared.images and per_image is not None:
            prepared.images = PrunedCrops.group(prepared.images, per_image)
            prepared.mm_encoder_outputs["image"].pooler_output = [image.features for image in prepared.images]
        return prepared


class PrunedSmolVLM(PrunedIdefics3):
    """:class:`PrunedLlava` for ``SmolVLMForConditionalGeneration``: Idefics3's layout and connector.

    SmolVLM's videos reach the model as frames in ``pixel_values``, each a one-crop image behind
    ``<global-img>``, so they are pruned frame by frame like images.
    """

    family = "smolvlm"
