"""LLaVA-1.5 glue (``model_type == "llava"``): one fixed-size crop per image, no layout tokens.

LLaVA-1.5 resizes every image to the tower's crop (336 px for CLIP ViT-L/14: 576 tokens), takes
the ``vision_feature_layer`` hidden states (a list of layers is concatenated), drops CLS under the
``"default"`` select strategy, projects every token and scatters them into as many ``<image>``
placeholders. There are no newlines or tiles, so pruning is the simplest case:

* **Where the selector looks:** the selected-layer tokens after the select strategy, before the
  projector, exactly what the projector would read (as for LLaVA-NeXT). Each image is one crop with
  its own budget, with a ``(side, side)`` grid when the tokens form the tower's square patch grid
  (``"full"`` keeps CLS in front, so no grid is passed then).
* **Order:** kept tokens stay in raster order; the image's placeholder run is cut to the kept count.
* **Positions** are sequential (plain 1-D RoPE), so the shared rule applies: positions are rebuilt
  from the shortened attention mask, caller-given ones are compacted.

``keep=1.0`` reproduces the model's own inputs exactly. Pixtral-12B is also ``model_type == "llava"``
but its Pixtral tower takes variable-size images laid out in rows; :class:`PrunedLlava15` hands such
models to :class:`token_reduction.vlm.mistral3.PrunedLlavaPixtral`, which keeps that row layout.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from token_reduction.errors import UserError
from token_reduction.selection.base import Budget
from token_reduction.vlm.common import PrunedImage, PrunedLlava, run_selector


def selected_layers(hidden_states: tuple[Tensor, ...], layer: int | list[int], strategy: str | None) -> Tensor:
    """The tokens LLaVA's projector reads: ``layer``'s hidden states (concatenated for a list), CLS dropped for ``"default"``."""
    layers = [layer] if isinstance(layer, int) else list(layer)
    states = [hidden_states[i] for i in layers]
    if strategy == "default":
        states = [state[:, 1:] for state in states]
    return torch.cat(states, dim=-1)


class PrunedLlava15(PrunedLlava):
    """:class:`PrunedLlava` for ``LlavaForConditionalGeneration`` with a CLIP/SigLIP-style tower (LLaVA-1.5)."""

    family = "llava"
    vision_kwargs = ("vision_feature_layer", "vision_feature_select_strategy")

    def __new__(cls, model: nn.Module, *args: Any, **kwargs: Any) -> "PrunedLlava15":
        vision = getattr(getattr(model, "config", None), "vision_config", None)
        if cls is PrunedLlava15 and getattr(vision, "model_type", None) == "pixtral":
            from token_reduction.vlm.mistral3 import PrunedLlavaPixtral

            return super().__new__(PrunedLlavaPixtral)
        return super().__new__(cls)

    # ------------------------------------------------------------------------------ features
    def vision_features(
        self,
        pixel_values: Tensor,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
    ) -> Tensor:
        """``(images, N, D)`` selected-layer features after the select strategy (call options win over the config)."""
        if pixel_values.dim() != 4:
            raise UserError(
                type(self).__name__, "pixel_values", f"expected shape (images, 3, H, W), got {tuple(pixel_values.shape)}"
            )
        layer, strategy = self.feature_options(vision_feature_layer, vision_feature_select_strategy)
        out = self.inner.vision_tower(pixel_values, output_hidden_states=layer, return_dict=True)
        self.record_encoder_output("image", out)
        return selected_layers(out.hidden_states, layer, strategy)

    def token_grid(self, num_tokens: int) -> tuple[int, int] | None:
        """``(side, side)`` when the tokens are exactly the tower's patch grid, else ``None`` (CLS kept)."""
        vision = self.config.vision_config
        side = vision.image_size // vision.patch_size
        return (side, side) if num_tokens == side * side else None

    @torch.no_grad()
    def selector_features(self, pixel_values: Tensor, **processor_outputs: Any) -> list[Tensor]:
        """One ``(N, D)`` tensor per image: exactly what the wrapper shows the selector."""
        options = {name: processor_outputs.get(name) for name in self.vision_kwargs}
        return list(self.vision_features(pixel_values, **options))

    def selector_grids(self, pixel_values: Tensor, **processor_outputs: Any) -> list[tuple[int, int] | None]:
        """The token grid of each image of :meth:`selector_features` (``None``: not a plain patch grid)."""
        _, strategy = self.feature_options(None, processor_outputs.get("vision_feature_select_strategy"))
        tower = getattr(self.inner.vision_tower, "vision_model", self.inner.vision_tower)
        positions = getattr(getattr(tower, "embeddings", None), "num_positions", None)
        if positions is None:  # an unknown tower: count its tokens on the first image
            positions = self.vision_features(pixel_values[:1], None, "full").shape[1]
        tokens = int(positions) - (1 if strategy == "default" else 0)
        return [self.token_grid(tokens)] * pixel_values.shape[0]

    # ------------------------------------------------------------------------------ encoding
    def encode_images(
        self,
        pixel_values: Tensor,
        image_sizes: Any,
        keep: Budget | None,
        threshold: float | None,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        **family: Any,
    ) -> list[PrunedImage]:
        """Tower -> selector -> projector, one :class:`PrunedImage` per image."""
        features = self.vision_features(pixel_values, vision_feature_layer, vision_feature_select_strategy)
        valid = torch.ones(features.shape[:2], dtype=torch.bool, device=features.device)
        mask, features = run_selector(self.selector, features, valid, keep, threshold, self.token_grid(features.shape[1]))
        # The whole batch goes through the projector in one call, as in the model: each kept token then
        # carries bit-for-bit the embedding the unpruned model gives it (a (N, D) and a (B, N, D)
        # matmul may round differently); the projector costs well under 1% of the LLM prefill.
        projected = self.inner.multi_modal_projector(features)
        return [PrunedImage(tokens[kept], int(tokens.shape[0])) for tokens, kept in zip(projected, mask)]
