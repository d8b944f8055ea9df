"""Gemma 3 and Gemma 4 glue: the LLM reads pooled vision tokens, attended bidirectionally per image.

**Gemma 3** runs SigLIP on each image (and each pan-and-scan crop, which the processor lays out
as one more ``<start_of_image>...<end_of_image>`` run), average-pools the patch grid down to
``mm_tokens_per_image`` tokens (256: 16x16), RMS-normalises and projects them. **Gemma 4** pools
inside its vision model (by patch positions, variable image sizes and token counts) and embeds
the pooled tokens with ``embed_vision``.

What pruning does, and why:

* **Where the selector looks: the pooled tokens**, one per soft token the LLM reads, in the vision
  width, with the pooled grid (Gemma 3: ``(16, 16)``; Gemma 4: each image's own ``(rows, cols)``).
  Selecting raw patches would need a rule for partly kept pooling windows; the pooled token is the
  unit the LLM pays for. Only the kept tokens' LLM embeddings are scattered, and they are computed
  by the model's own projection of all pooled tokens, so they are bit-identical to the unpruned ones.
* **Budget** per image (per crop with pan-and-scan). ``<start_of_image>``/``<end_of_image>`` are
  layout: never selected, never counted, always kept.
* **Bidirectional attention among an image's tokens** comes from ``token_type_ids`` (Gemma 3) /
  ``mm_token_type_ids`` (Gemma 4): the model turns each contiguous run of image-typed tokens into one
  block. Those ids are compacted with the kept tokens, so the kept tokens of one image stay one
  contiguous block and the attention pattern among survivors is the model's own.
* **Positions.** Both LLMs use 1-D RoPE over sequential positions (Gemma 4's "image positions",
  ``image_position_ids``, are the (x, y) patch coordinates the *vision tower* reads; the tower
  always runs on every patch, so they are untouched). So the shared rule applies: positions are
  rebuilt from the shortened mask, ``generate`` continues from the shortened length.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from transformers.modeling_outputs import BaseModelOutputWithPooling

from token_reduction.errors import UserError
from token_reduction.selection.base import Budget
from token_reduction.vlm.common import PrunedImage, PrunedInputs, PrunedLlava, PrunedVideo, run_selector, select_per_grid
from token_reduction.vlm.video import select_frames


def stacked_or_per_token(features: list[Tensor]) -> Tensor:
    """One tensor for models that read ``pooler_output`` as a tensor (Gemma 3).

    Images that kept the same count stack to ``(images, after, D)``, the model's own shape;
    otherwise each token is its own ``(1, D)`` entry: the model flattens the first two dims either
    way, and ``generate``'s beam expansion, which splits entries at image boundaries, still works.
    """
    if len({f.shape[0] for f in features}) == 1:
        return torch.stack(features)
    return torch.cat(features)[:, None]


class GemmaWrapper(PrunedLlava):
    """Shared by Gemma 3 and 4: no ``config.vision_feature_layer`` (Gemma reads the tower's last layer)."""

    selector_where = "the {family} pooled vision tokens"
    tokens_by_name = True

    @property
    def feature_dim(self) -> int:
        """Pooled tokens keep the tower's width."""
        return int(self.config.vision_config.hidden_size)


class PrunedGemma3(GemmaWrapper):
    """:class:`PrunedLlava` for ``Gemma3ForConditionalGeneration`` (pan-and-scan crops are images of their own)."""

    family = "gemma3"

    @property
    def side(self) -> int:
        return int(self.inner.multi_modal_projector.tokens_per_side)

    def pooled(self, pixel_values: Tensor) -> tuple[Tensor, Tensor]:
        """``(pooled, last_hidden_state)``: the ``(images, T, D)`` tokens the LLM reads, in the tower's width."""
        if pixel_values.dim() != 4:
            raise UserError(type(self).__name__, "pixel_values", f"expected shape (images, 3, H, W), got {tuple(pixel_values.shape)}")
        out = self.inner.vision_tower(pixel_values=pixel_values, return_dict=True)
        self.record_encoder_output("image", out)
        hidden = out.last_hidden_state
        projector = self.inner.multi_modal_projector
        batch, _, width = hidden.shape
        side = projector.patches_per_image
        grid = hidden.transpose(1, 2).reshape(batch, width, side, side).contiguous()  # as the projector does
        return projector.avg_pool(grid).flatten(2).transpose(1, 2), hidden

    @torch.no_grad()
    def selector_features(self, pixel_values: Tensor, **processor_outputs: Any) -> list[Tensor]:
        """One ``(mm_tokens_per_image, D)`` tensor of pooled tokens per image or crop."""
        return list(self.pooled(pixel_values)[0])

    def selector_grids(self, pixel_values: Tensor, **processor_outputs: Any) -> list[tuple[int, int]]:
        return [(self.side, self.side)] * pixel_values.shape[0]

    def encode_images(
        self, pixel_values: Tensor, image_sizes: Any, keep: Budget | None, threshold: float | None, **family: Any
    ) -> list[PrunedImage]:
        """Tower -> pooling -> selector -> the model's projection at the kept positions."""
        pooled, hidden = self.pooled(pixel_values)
        valid = torch.ones(pooled.shape[:2], dtype=torch.bool, device=pooled.device)
        mask, chosen = run_selector(self.selector, pooled, valid, keep, threshold, (self.side, self.side))
        projector = self.inner.multi_modal_projector
        tokens = projector(hidden)  # the model's own call: kept tokens are bit-identical
        merged = (chosen != pooled).any(dim=-1)  # merging methods wrote merged tokens here
        if bool(merged.any()):
            remade = torch.matmul(projector.mm_soft_emb_norm(chosen), projector.mm_input_projection_weight).type_as(tokens)
            tokens = torch.where(merged[..., None], remade, tokens)
        return [PrunedImage(row[kept], int(row.shape[0])) for row, kept in zip(tokens, mask)]

    def prepare(self, *args: Any, **kwargs: Any) -> PrunedInputs:
        """The shared prepare, with ``token_type_ids`` compacted as a per-token input and image outputs as one tensor.

        Per-token inputs passed by name (``prepare(**processor_outputs)``) join ``extra``.
        """
        prepared = super().prepare(*args, **kwargs)
        image = prepared.mm_encoder_outputs.get("image")
        if image is not None:
            fields = {name: value for name, value in image.items() if name != "pooler_output"}
            pooled = stacked_or_per_token([i.features for i in prepared.images])
            prepared.mm_encoder_outputs["image"] = BaseModelOutputWithPooling(pooler_output=pooled, **fields)
        return prepared


class PrunedGemma4(GemmaWrapper):
    """:class:`PrunedLlava` for ``Gemma4ForConditionalGeneration``: variable-size images, pooled in the tower."""

    family = "gemma4"
    family_kwargs = ("image_position_ids",)
    video_kwargs = ("pixel_values_videos", "video_position_ids", "num_frames_per_video")

    def pooled(self, pixel_values: Tensor, positions: Tensor) -> tuple[list[Tensor], list[tuple[int, int]]]:
        """Per image: the ``(rows * cols, D)`` pooled tokens the LLM reads (tower width) and their ``(rows, cols)`` grid."""
        if positions is None:
            raise UserError(type(self).__name__, "image_position_ids", "is required; pass the processor's image_position_ids")
        out = self.inner.vision_tower(pixel_values=pixel_values, pixel_position_ids=positions, return_dict=True)
        self.record_encoder_output("image", out)
        grids = self.grids(positions)
        tokens = list(out.last_hidden_state.split([r * c for r, c in grids]))
        return tokens, grids

    def grids(self, positions: Tensor) -> list[tuple[int, int]]:
        """Pooled ``(rows, cols)`` per image from its (x, y) patch positions (``-1`` marks padding).

        The tower pools ``k x k`` patches into token ``x // k + (width // k) * (y // k)``: row-major.
        """
        k = int(self.config.vision_config.pooling_kernel_size)
        grids = []
        for image in positions:
            real = image[(image != -1).all(dim=-1)]
            grids.append((int(real[:, 1].max()) // k + 1, int(real[:, 0].max()) // k + 1))
        return grids

    @torch.no_grad()
    def selector_features(self, pixel_values: Tensor, image_position_ids: Tensor, **processor_outputs: Any) -> list[Tensor]:
        """One ``(rows * cols, D)`` tensor of pooled tokens per image: exactly what the selector sees."""
        return self.pooled(pixel_values, image_position_ids)[0]

    def selector_grids(self, image_position_ids: Tensor, **processor_outputs: Any) -> list[tuple[int, int]]:
        return self.grids(image_position_ids)

    def encode_images(
        self,
        pixel_values: Tensor,
        image_sizes: Any,
        keep: Budget | None,
        threshold: float | None,
        image_position_ids: Tensor | None = None,
        **family: Any,
    ) -> list[PrunedImage]:
        """Tower (pooling inside) -> selector per grid -> ``embed_vision`` of every token -> kept tokens."""
        tokens, grids = self.pooled(pixel_values, image_position_ids)
        masks, chosen = select_per_grid(self.selector, tokens, grids, keep, threshold)
        # One embed_vision call over all images, as in the model: kept tokens are bit-identical.
        embedded = self.inner.embed_vision(inputs_embeds=torch.cat(chosen)).split([len(t) for t in tokens])
        return [PrunedImage(row[mask], int(row.shape[0])) for row, mask in zip(embedded, masks)]

    def encode_videos(
        self,
        keep: Budget | None,
        threshold: float | None,
        temporal: bool,
        pixel_values_videos: Tensor | None = None,
        video_position_ids: Tensor | None = None,
        num_frames_per_video: Tensor | None = None,
    ) -> list[PrunedVideo]:
        """Frames are pooled like images; one :class:`PrunedVideo` per *frame*, in placeholder order.

        Each frame is its own ``<start_of_image>...<end_of_image>`` run after its timestamp, so a
        frame keeps its own run (the shared shortening drops the tail of each item's placeholders);
        :meth:`prepare` regroups frames into videos for reporting. ``temporal=True`` selects across
        a video's frames (``TemporalSelection``) instead of per frame.
        """
        if video_position_ids is None or num_frames_per_video is None:
            raise UserError(type(self).__name__, "video_position_ids/num_frames_per_video", "are required with pixel_values_videos")
        out = self.inner.vision_tower(pixel_values=pixel_values_videos, pixel_position_ids=video_position_ids, return_dict=True)
        self.record_encoder_output("video", out)
        grids = self.grids(video_position_ids)
        frames = list(out.last_hidden_state.split([r * c for r, c in grids]))
        masks: list[Tensor] = []
        chosen: list[Tensor] = []
        start = 0
        for count in torch.as_tensor(num_frames_per_video).tolist():
            clip = slice(start, start + int(count))
            if len(set(grids[clip])) != 1:
                raise UserError(type(self).__name__, "pixel_values_videos", "frames of one video must share one size")
            options = (grids[start], temporal, self.temporal_options)
            mask, picked, _ = select_frames(self.selector, torch.stack(frames[clip]), keep, threshold, *options)
            masks.extend(mask.unbind(0))
            chosen.extend(picked.unbind(0))
            start += int(count)
        embedded = self.inner.embed_vision(inputs_embeds=torch.cat(chosen)).split([len(f) for f in frames])
        return [PrunedVideo(row[mask], int(row.shape[0]), newlines=0) for row, mask in zip(embedded, masks)]

    def prepare(self, *args: Any, **kwargs: Any) -> PrunedInputs:
        """The shared prepare; ``mm_token_type_ids`` passed by name (``prepare(**processor_outputs)``) are compacted too.

        Videos come back one per video (``frames_before``/``frames_after`` per frame), not per frame.
        """
        frames_per_video = kwargs.get("num_frames_per_video")
        prepared = super().prepare(*args, **kwargs)
        if prepared.videos and frames_per_video is not None:
            videos, start = [], 0
            for count in torch.as_tensor(frames_per_video).tolist():
                frames = prepared.videos[start : start + int(count)]
                videos.append(
                    PrunedVideo(
                        torch.cat([f.features for f in frames]), sum(f.before for f in frames),
                        frames_before=[f.before for f in frames], frames_after=[f.after for f in frames], newlines=0,
                    )
                )  # fmt: skip
                start += int(count)
            prepared.videos = videos
            # Gemma 4 concatenates a *list* of video outputs (the shared helper stacks them into one tensor).
            fields = {name: value for name, value in prepared.mm_encoder_outputs["video"].items() if name != "pooler_output"}
            pooled = [video.features for video in videos]
            prepared.mm_encoder_outputs["video"] = BaseModelOutputWithPooling(pooler_output=pooled, **fields)
        return prepared
