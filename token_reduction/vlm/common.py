"""Family-independent machinery for feeding LLaVA fewer visual tokens.

The pipeline for one call is the same for LLaVA-NeXT and LLaVA-OneVision:

1. run the vision tower on every crop (base image + AnyRes tiles) and take the selected-layer
   features after ``vision_feature_select_strategy``: exactly the tokens the projector would see;
2. ask the selector which of them to keep, per crop (tokens that AnyRes unpadding would discard
   anyway are passed as ``padding_mask`` so the budget is spent on real image content);
3. project only the kept tokens and lay them out as the model would (base tokens, then the tiles'
   rows with one ``image_newline`` per row that still holds a token);
4. shorten each image's run of ``<image>`` placeholders to its kept count, re-pad the batch and
   hand the result to the unmodified model through ``mm_encoder_outputs``, which transformers'
   ``forward`` and ``generate`` both accept (``generate`` uses it for the prefill step only).

Nothing in the wrapped model is patched. This module holds what does not depend on the family:
the :class:`PrunedLlava` wrapper (:mod:`token_reduction.vlm.selector` calls the selector); :mod:`token_reduction.vlm.sequence`
rebuilds the token sequence (its names are re-exported here).
``llava_next.py`` encodes images over LLaVA-NeXT's AnyRes geometry; ``llava_onevision.py`` adds OneVision's
differences, including videos (frames pruned on the pooled grid the LLM reads, per frame or across
frames; see :mod:`token_reduction.vlm.video`). Videos follow the same steps with their own
``<video>`` placeholders and ``mm_encoder_outputs["video"]``.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import Tensor, nn

from token_reduction.selection.base import Budget, SelectionMethod
from token_reduction.vlm.selector import (  # noqa: F401  (re-exported: families import them from here)
    accepts_threshold,
    check_selector,
    run_selector,
    select_per_grid,
    validate_keep,
)
from token_reduction.vlm.sequence import (  # noqa: F401  (re-exported: families import them from here)
    PrunedImage,
    PrunedInputs,
    PrunedVideo,
    drop_placeholders,
    encoder_outputs,
    infer_padding_side,
    mark_dropped,
    placeholder_slots,
    shorten_placeholders,
)

UNSET: Any = object()
"""Sentinel for per-call arguments: "use the value given to :func:`prune_visual_tokens`"."""

# ---------------------------------------------------------------------------------- the wrapper
class PrunedLlava:
    """A LLaVA model whose visual context passes through a token selector before the projector.

    Call it like the model (``pruned(**inputs)``, ``pruned.generate(**inputs)``) with the
    processor's outputs; ``keep=`` and ``threshold=`` override the defaults per call. The model
    itself is left untouched. ``last`` holds the :class:`PrunedInputs` of the latest call, whose
    ``tokens_before``/``tokens_after`` say how many visual positions each image had and kept
    (``videos`` hold the same per video and per frame).
    Subclasses implement :meth:`encode_images` for their family (see ``llava_next.py``,
    ``llava_onevision.py``) and, for families with video input, :meth:`encode_videos` (``temporal=``
    picks per-frame or across-frame selection, per wrapper or per call).

    Hooks for families (class attributes, all optional): :attr:`family_kwargs`,
    :attr:`video_kwargs`, :attr:`vision_kwargs`, :attr:`generate_only_kwargs`,
    :attr:`token_kwargs`, :attr:`tokens_by_name`, :attr:`selector_where`; :meth:`decided_drops`; and
    :meth:`record_encoder_output` from inside :meth:`encode_images`.
    """

    family = "llava"
    family_kwargs: tuple[str, ...] = ()
    """Processor outputs that only the image encoding reads (e.g. OneVision's ``batch_num_images``)."""
    video_kwargs: tuple[str, ...] = ()
    """Processor outputs that carry videos, pruned by :meth:`encode_videos` (OneVision: ``pixel_values_videos``)."""
    vision_kwargs: tuple[str, ...] = ()
    """Per-call vision options the unpatched model honours (NeXT: ``vision_feature_layer``,
    ``vision_feature_select_strategy``). Split from the call and passed by name to both
    :meth:`encode_images` and :meth:`encode_videos`; ``None`` values are dropped (config default)."""
    generate_only_kwargs: tuple[str, ...] = ()
    """Of :attr:`vision_kwargs`, those the model's ``forward`` ignores while its ``generate`` honours
    them (OneVision's ``vision_aspect_ratio`` in transformers 5): a forward call hands them to the
    model untouched instead of encoding with them, so both calls match the unpatched model."""
    token_kwargs: tuple[str, ...] = ("shift_labels", "token_type_ids", "mm_token_type_ids")
    """Per-token ``(B, L)`` inputs that are compacted with ``input_ids`` when given."""
    selector_where = "the {family} vision tower (vision_feature_layer={config.vision_feature_layer})"
    tokens_by_name = False
    """Whether :attr:`token_kwargs` passed to :meth:`prepare` by name (``prepare(**processor_outputs)``) join ``extra``."""

    def __init__(
        self,
        model: nn.Module,
        selector: SelectionMethod,
        keep: Budget | None = None,
        threshold: float | None = None,
        padding_side: str | None = None,
        temporal: bool = False,
        temporal_options: dict[str, Any] | None = None,
    ) -> None:
        if "mm_encoder_outputs" not in inspect.signature(model.forward).parameters:
            raise RuntimeError(
                f"{type(model).__name__}.forward has no `mm_encoder_outputs` argument; "
                "visual token pruning needs transformers >= 5 (LLaVA-NeXT / LLaVA-OneVision)"
            )
        self.model = model
        self.inner = model.model
        self.selector = selector
        self.keep = validate_keep(keep)
        self.threshold = threshold
        self.padding_side = padding_side
        self.temporal = bool(temporal)
        """Videos: select across frames (:class:`~token_reduction.selection.temporal.TemporalSelection`) instead of per frame."""
        self.temporal_options: dict[str, Any] = dict(temporal_options or {})
        """Keyword arguments of ``TemporalSelection`` (``fusion``, ``min_per_frame``, ``uniform_share``)."""
        check_selector(selector, self.feature_dim, self.selector_where.format(family=self.family, config=self.config))
        if isinstance(selector, nn.Module):
            selector.to(self.device).eval()
        self.last: PrunedInputs | None = None
        self._fields: dict[str, dict[str, Any]] = {}

    # ------------------------------------------------------------------------------ properties
    @property
    def config(self) -> Any:
        return self.model.config

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def feature_dim(self) -> int:
        """Dim of the features the projector reads (selected layers concatenated)."""
        return self.feature_dim_for(self.config.vision_feature_layer)

    def feature_dim_for(self, layer: int | list[int]) -> int:
        """Dim of the features ``vision_feature_layer=layer`` gives (one layer, or several concatenated)."""
        return self.config.vision_config.hidden_size * (1 if isinstance(layer, int) else len(layer))

    def feature_options(
        self, vision_feature_layer: int | list[int] | None = None, vision_feature_select_strategy: str | None = None
    ) -> tuple[int | list[int], str]:
        """The layer and strategy of this call (config defaults for ``None``), checked against the selector."""
        layer = self.config.vision_feature_layer if vision_feature_layer is None else vision_feature_layer
        strategy = vision_feature_select_strategy or self.config.vision_feature_select_strategy
        if strategy not in ("default", "full"):
            raise ValueError(f"vision_feature_select_strategy must be 'default' or 'full', got {strategy!r}")
        check_selector(self.selector, self.feature_dim_for(layer), f"the {self.family} vision tower (vision_feature_layer={layer})")
        return layer, strategy

    # ------------------------------------------------------------------------------ family hook
    def encode_images(
        self, pixel_values: Tensor, image_sizes: Tensor, keep: Budget | None, threshold: float | None, **family: Any
    ) -> list[PrunedImage]:
        """Pruned, projected, laid-out visual tokens of each image, in placeholder order."""
        raise NotImplementedError

    def encode_videos(self, keep: Budget | None, threshold: float | None, temporal: bool, **video: Any) -> list[PrunedVideo]:
        """Pruned, projected, laid-out visual tokens of each video, in placeholder order."""
        raise NotImplementedError(f"{type(self).__name__} does not prune videos")

    def has_videos(self, family: dict[str, Any]) -> bool:
        """Whether ``family`` (split processor outputs) carries video pixels."""
        return bool(self.video_kwargs) and family.get(self.video_kwargs[0]) is not None

    def encode_other_modalities(self, kwargs: dict[str, Any], encoder_outputs: dict[str, Any]) -> None:
        """Forward-only hook: encode non-image inputs the model cannot take next to ``mm_encoder_outputs``."""

    def record_encoder_output(self, modality: str, output: Any) -> None:
        """Keep the vision tower's own outputs of this call for the ``image_outputs``/``video_outputs`` the model returns.

        ``last_hidden_state``, ``hidden_states`` and ``attentions`` of ``output`` (the tower's, for
        every crop, as the unpatched model returns them); ``pooler_output`` stays the kept tokens.
        """
        names = ("last_hidden_state", "hidden_states", "attentions")
        self._fields[modality] = {name: getattr(output, name, None) for name in names}

    def embed_token(self, token_id: int) -> Tensor:
        """The input embedding of ``token_id``: how the model finds placeholders in ``inputs_embeds``."""
        embeddings = self.model.get_input_embeddings()
        return embeddings(torch.full((), token_id, dtype=torch.long, device=embeddings.weight.device))

    def prepare(
        self,
        input_ids: Tensor | None,
        pixel_values: Tensor | None = None,
        image_sizes: Tensor | None = None,
        attention_mask: Tensor | None = None,
        *,
        position_ids: Tensor | None = None,
        labels: Tensor | None = None,
        keep: Budget | None = UNSET,
        threshold: float | None = UNSET,
        temporal: bool = UNSET,
        padding_side: str | None = None,
        inputs_embeds: Tensor | None = None,
        extra: dict[str, Tensor] | None = None,
        **family: Any,
    ) -> PrunedInputs:
        """Encode and prune the images and videos, then shorten the text to match (no LLM call).

        ``inputs_embeds`` (with or without ``input_ids``) are shortened alike; ``extra`` holds other
        per-token tensors (``shift_labels``, token types) to compact with the tokens.
        """
        if input_ids is None and inputs_embeds is None:
            raise ValueError("pass input_ids or inputs_embeds: they hold the <image> placeholders to shorten")
        keep = self.keep if keep is UNSET else validate_keep(keep)
        threshold = self.threshold if threshold is UNSET else threshold
        temporal = self.temporal if temporal is UNSET else bool(temporal)
        video = {name: family.pop(name) for name in self.video_kwargs if name in family}
        options = {name: value for name in self.vision_kwargs if (value := family.pop(name, None)) is not None}
        if self.tokens_by_name:
            extra = dict(extra or {}) | {name: family.pop(name) for name in self.token_kwargs if family.get(name) is not None}
        if pixel_values is None and not self.has_videos(video):
            raise ValueError("nothing to prune: pass pixel_values (images) or video pixels")
        self._fields = {}
        images = self.encode_images(pixel_values, image_sizes, keep, threshold, **family, **options) if pixel_values is not None else []
        videos = self.encode_videos(keep, threshold, temporal, **video, **options) if self.has_videos(video) else []
        prepared = shorten_placeholders(
            input_ids,
            attention_mask,
            self.config.image_token_id,
            images,
            pad_token_id=self.pad_token_id(),
            padding_side=padding_side or self.padding_side,
            position_ids=position_ids,
            labels=labels,
            videos=videos,
            video_token_id=getattr(self.config, "video_token_id", None) if videos else None,
            inputs_embeds=inputs_embeds,
            embed=self.embed_token if inputs_embeds is not None else None,
            extra=extra,
            fields=self._fields,
            **self.decided_drops(input_ids, inputs_embeds, images),
        )
        self.last = prepared
        return prepared

    def decided_drops(self, input_ids: Tensor | None, inputs_embeds: Tensor | None, images: list[PrunedImage]) -> dict[str, Tensor]:
        """Hook: ``dropped``/``layout`` for :func:`shorten_placeholders` when placeholder runs interleave layout tokens.

        Empty by default: each image's run of placeholders is contiguous and loses its tail.
        """
        return {}

    def pad_token_id(self) -> int:
        """Any id works under a zero attention mask; prefer the model's own pad id for readable outputs."""
        config = self.model.generation_config
        eos = config.eos_token_id[0] if isinstance(config.eos_token_id, (list, tuple)) else config.eos_token_id
        found = (config.pad_token_id, self.config.get_text_config().pad_token_id, eos)
        return next((int(c) for c in found if c is not None), 0)

    def _split(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        names = self.family_kwargs + self.video_kwargs + self.vision_kwargs
        return {name: kwargs.pop(name) for name in names if name in kwargs}

    def _token_inputs(self, kwargs: dict[str, Any], labels: bool) -> dict[str, Any]:
        """Per-token inputs popped from ``kwargs`` for :meth:`prepare` (new keywords only when given)."""
        inputs: dict[str, Any] = {"position_ids": kwargs.pop("position_ids", None)}
        if labels:
            inputs["labels"] = kwargs.pop("labels", None)
        if kwargs.get("inputs_embeds") is not None:
            inputs["inputs_embeds"] = kwargs.pop("inputs_embeds")
        extra = {name: kwargs.pop(name) for name in self.token_kwargs if kwargs.get(name) is not None}
        if extra:
            inputs["extra"] = extra
        return inputs

    def generate_inputs(self, prepared: PrunedInputs, positions_given: bool) -> dict[str, Any]:
        """``model.generate`` keywords for ``prepared``.

        No labels; positions only when the caller gave some (``generate`` derives them from the
        mask otherwise, exactly as for the unpatched model); a shallow copy of each encoder output,
        since ``generate`` replaces ``pooler_output`` in place when it repeats rows for beams.
        """
        kwargs = prepared.model_kwargs()
        kwargs.pop("labels", None)
        kwargs.pop("shift_labels", None)
        if not positions_given:
            kwargs.pop("position_ids", None)
        kwargs["mm_encoder_outputs"] = {name: type(out)(**out) for name, out in prepared.mm_encoder_outputs.items()}
        return kwargs

    # ------------------------------------------------------------------------------------ calls
    def __call__(
        self,
        input_ids: Tensor | None = None,
        pixel_values: Tensor | None = None,
        image_sizes: Tensor | None = None,
        attention_mask: Tensor | None = None,
        *,
        keep: Budget | None = UNSET,
        threshold: float | None = UNSET,
        temporal: bool = UNSET,
        **kwargs: Any,
    ) -> Any:
        """The model's forward on the pruned sequence (plain pass-through without images or videos)."""
        family = self._split(kwargs)
        kwargs.update({name: family.pop(name) for name in self.generate_only_kwargs if name in family})
        if pixel_values is None and not self.has_videos(family):
            given = {name: value for name, value in family.items() if value is not None}
            return self.model(input_ids=input_ids, attention_mask=attention_mask, image_sizes=image_sizes, **given, **kwargs)
        inputs = self._token_inputs(kwargs, labels=True)
        prepared = self.prepare(
            input_ids, pixel_values, image_sizes, attention_mask, keep=keep, threshold=threshold, temporal=temporal, **inputs, **family
        )
        self.encode_other_modalities(kwargs, prepared.mm_encoder_outputs)
        return self.model(**prepared.model_kwargs(), **kwargs)

    forward = __call__

    @torch.no_grad()
    def generate(
        self,
        input_ids: Tensor | None = None,
        pixel_values: Tensor | None = None,
        image_sizes: Tensor | None = None,
        attention_mask: Tensor | None = None,
        *,
        keep: Budget | None = UNSET,
        threshold: float | None = UNSET,
        temporal: bool = UNSET,
        **kwargs: Any,
    ) -> Any:
        """``model.generate`` on the pruned prompt; returned ids start with the *shortened* prompt.

        Slice new tokens with ``out[:, pruned.last.input_ids.shape[1]:]`` (with ``inputs_embeds``
        and no ``input_ids``, ``generate`` returns only the new tokens, as for the unpatched model).
        """
        family = self._split(kwargs)
        if pixel_values is None and not self.has_videos(family):
            given = {name: value for name, value in family.items() if value is not None}
            return self.model.generate(input_ids=input_ids, attention_mask=attention_mask, **given, **kwargs)
        inputs = self._token_inputs(kwargs, labels=False)
        positions_given = inputs["position_ids"] is not None
        prepared = self.prepare(
            input_ids, pixel_values, image_sizes, attention_mask, keep=keep, threshold=threshold, temporal=temporal, **inputs, **family
        )
        return self.model.generate(**self.generate_inputs(prepared, positions_given), **kwargs)
