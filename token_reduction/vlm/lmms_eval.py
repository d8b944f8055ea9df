"""lmms-eval model ``token_reduction``: any supported VLM whose images are pruned first.

Every family registered in :mod:`token_reduction.vlm.families` works (the checkpoint's
``model_type`` picks the wrapper, see :func:`~token_reduction.vlm.load_pruned_llava`).

lmms-eval is optional. :class:`TokenReductionLlava` follows lmms-eval's "simple" model API
(``generate_until`` over requests whose ``args`` are ``(context, gen_kwargs, doc_to_visual,
doc_id, task, split)``) without importing it, so it can be built and tested anywhere. When
lmms-eval *is* importable, importing this module also defines ``TokenReductionLmms`` (the same
class, subclassing ``lmms_eval.api.model.lmms``) and registers it as ``token_reduction`` in every
registry that version has. Run it through this module so the registration happens in-process::

    python -m token_reduction.vlm.lmms_eval --model token_reduction \\
        --model_args pretrained=llava-hf/llava-onevision-qwen2-0.5b-ov-hf,selector=runs/selector,keep=0.5 \\
        --tasks docvqa_val,textvqa_val,chartqa,ocrbench,gqa,mmstar --batch_size 1

``python -m token_reduction.vlm.lmms_eval`` hands every argument to lmms-eval's own CLI.
"""

from __future__ import annotations

import sys
from typing import Any, Iterable, Sequence

import torch

from token_reduction.vlm import build_prompt, load_pruned_llava, parse_keep

MODEL_NAME = "token_reduction"


def _as_bool(value: Any) -> bool:
    return value if isinstance(value, bool) else str(value).strip().lower() in ("1", "true", "yes")


class TokenReductionLlava:
    """Generation-only lmms-eval model: ``generate_until`` with pruned visual tokens.

    Args (all strings when they come from ``--model_args``):
        pretrained: folder or hub id of a checkpoint whose ``model_type`` is registered in
            :mod:`token_reduction.vlm.families` (``token_reduction.vlm.supported()``).
        selector: exported ``TokenSelector`` folder, or a method name (``random``, ``pooling``, ...).
        keep: budget per crop: fraction ``0.5``, count ``64``, or ``none`` for adaptive.
        threshold: keep-probability threshold for adaptive selectors.
        device: ``cuda``, ``cuda:1``, ``cpu``; default CUDA when available.
        batch_size: requests generated together (left-padded).
        dtype: ``auto`` (bf16 on CUDA), ``float32``, ``bfloat16``, ``float16``.
        max_new_tokens: default when a task does not set it.
    """

    is_simple = True
    _rank, _world_size = 0, 1

    def __init__(
        self,
        pretrained: str,
        selector: str,
        keep: str | float | int | None = None,
        threshold: str | float | None = None,
        device: str | None = None,
        batch_size: int | str = 1,
        dtype: str = "auto",
        max_new_tokens: int | str = 256,
        **unused: Any,
    ) -> None:
        self.pretrained = pretrained
        super().__init__()  # lmms.__init__ when registered (sets rank, task_dict, caches); object otherwise
        if unused:
            raise ValueError(f"unknown model_args for {MODEL_NAME}: {sorted(unused)}")
        self.task_dict: dict[str, Any] = getattr(self, "task_dict", None) or {}
        self.batch_size = max(1, int(batch_size))
        self.max_new_tokens = int(max_new_tokens)
        self.pruned, self.processor = load_pruned_llava(
            pretrained,
            selector,
            keep=parse_keep(keep),
            threshold=float(threshold) if threshold not in (None, "", "none") else None,
            device=device,
            dtype=dtype,
        )
        self.tokens_before: list[int] = []
        self.tokens_after: list[int] = []

    @property
    def rank(self) -> int:
        return self._rank

    @property
    def world_size(self) -> int:
        return self._world_size

    @property
    def device(self) -> torch.device:
        return self.pruned.device

    # ------------------------------------------------------------------------------ lmms API
    def loglikelihood(self, requests: Sequence[Any]) -> list[tuple[float, bool]]:
        raise NotImplementedError(
            f"{MODEL_NAME} only implements generate_until: tasks with output_type loglikelihood or "
            "multiple_choice are not supported (docvqa_val, textvqa_val, chartqa, ocrbench, gqa and mmstar all generate)"
        )

    def generate_until_multi_round(self, requests: Sequence[Any]) -> list[str]:
        raise NotImplementedError(f"{MODEL_NAME} does not implement multi-round generation")

    def generate_until(self, requests: Sequence[Any]) -> list[str]:
        """One answer per request, in request order; requests with equal gen_kwargs are batched."""
        answers: list[str] = [""] * len(requests)
        for indices in self._batches(requests):
            prepared = [self._unpack(requests[i]) for i in indices]
            for i, answer in zip(indices, self._generate(prepared)):
                answers[i] = answer
        return answers

    # ------------------------------------------------------------------------------ internals
    def _unpack(self, request: Any) -> tuple[str, dict[str, Any], list[Any]]:
        context, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
        visuals = doc_to_visual(self.task_dict[task][split][doc_id]) if doc_to_visual is not None else []
        visuals = [v for v in (visuals or []) if v is not None]
        if any(not hasattr(v, "convert") for v in visuals):
            raise NotImplementedError(f"{MODEL_NAME} handles images only; task {task!r} gave {type(visuals[0]).__name__}")
        return context, dict(gen_kwargs or {}), [v.convert("RGB") for v in visuals]

    def _batches(self, requests: Sequence[Any]) -> Iterable[list[int]]:
        batch: list[int] = []
        for i, request in enumerate(requests):
            if batch and (len(batch) == self.batch_size or request.args[1] != requests[batch[0]].args[1]):
                yield batch
                batch = []
            batch.append(i)
        if batch:
            yield batch

    def _generate(self, batch: list[tuple[str, dict[str, Any], list[Any]]]) -> list[str]:
        if any(not images for _, _, images in batch) and len(batch) > 1:
            return [answer for item in batch for answer in self._generate([item])]
        gen_kwargs = batch[0][1]
        until = gen_kwargs.pop("until", None) or []
        until = [until] if isinstance(until, str) else list(until)
        prompts = [build_prompt(self.processor, context, len(images)) for context, _, images in batch]
        images = [images for _, _, images in batch] if batch[0][2] else None
        inputs = self.processor(images=images, text=prompts, return_tensors="pt", padding=True).to(self.device)
        out = self.pruned.generate(**inputs, **self._generation_kwargs(gen_kwargs))
        prompt_length = (self.pruned.last.input_ids if images else inputs["input_ids"]).shape[1]
        if images:
            self.tokens_before.extend(self.pruned.last.tokens_before)
            self.tokens_after.extend(self.pruned.last.tokens_after)
        texts = self.processor.batch_decode(out[:, prompt_length:], skip_special_tokens=True)
        return [self._cut(text, until) for text in texts]

    def _generation_kwargs(self, gen_kwargs: dict[str, Any]) -> dict[str, Any]:
        temperature = float(gen_kwargs.get("temperature", 0.0) or 0.0)
        sample = _as_bool(gen_kwargs.get("do_sample", False)) or temperature > 0
        kwargs: dict[str, Any] = {
            "max_new_tokens": int(gen_kwargs.get("max_new_tokens", self.max_new_tokens)),
            "do_sample": sample,
            "num_beams": int(gen_kwargs.get("num_beams", 1) or 1),
            "pad_token_id": self.processor.tokenizer.pad_token_id,
        }
        if sample:
            kwargs["temperature"] = temperature or 1.0
            if gen_kwargs.get("top_p") is not None:
                kwargs["top_p"] = float(gen_kwargs["top_p"])
        return kwargs

    @staticmethod
    def _cut(text: str, until: list[str]) -> str:
        for stop in until:
            if stop:
                text = text.split(stop)[0]
        return text.strip()


def register_with_lmms_eval() -> type | None:
    """Define ``TokenReductionLmms`` and register it with lmms-eval; ``None`` when lmms-eval is absent."""
    try:
        from lmms_eval.api.model import lmms
        from lmms_eval.api.registry import register_model
    except ImportError:
        return None
    cls = type("TokenReductionLmms", (TokenReductionLlava, lmms), {"__module__": __name__, "__doc__": TokenReductionLlava.__doc__})
    globals()["TokenReductionLmms"] = cls
    register_model(MODEL_NAME)(cls)  # the decorator registry, consulted first by every version
    class_path = f"{__name__}.TokenReductionLmms"
    try:  # newer lmms-eval resolves names through a manifest registry
        from lmms_eval.models import MODEL_REGISTRY_V2
        from lmms_eval.models.registry_v2 import ModelManifest

        MODEL_REGISTRY_V2.register_manifest(ModelManifest(model_id=MODEL_NAME, simple_class_path=class_path), overwrite=True)
    except (ImportError, AttributeError):
        pass
    return cls


def model_manifest() -> Any:
    """Entry point payload (group ``lmms_eval.models``) for installs that declare one."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_NAME, simple_class_path=f"{__name__}.TokenReductionLmms")


TokenReductionLmms = register_with_lmms_eval()


def main(argv: list[str] | None = None) -> int:
    """Register, then run lmms-eval's CLI with ``argv`` (default: this process's arguments)."""
    if TokenReductionLmms is None:
        print("lmms-eval is not installed: pip install lmms-eval", file=sys.stderr)
        return 1
    from lmms_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    cli_evaluate()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
