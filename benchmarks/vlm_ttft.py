"""Full-size VLMs on the CPU: time to first token, stage by stage, at every keep ratio.

Each case builds one model at its real size with random weights (no download) and times whole
calls - the unpatched model and the pruned one at keep 1.0 / 0.5 / 0.25 / 0.1 and adaptive - as
a user runs them: ``model(**inputs, logits_to_keep=1)`` returns the first token's logits and the
KV cache. Hooks inside the same calls split each into vision tower, selector, projector and LLM
prefill (:mod:`benchmarks.stages`); the rest ("other") is embedding, placeholder bookkeeping and
the wrapper. Configurations alternate order round by round; ratios are medians of per-round ratios.

Cases (``--full-cpu``): LLaVA-OneVision-0.5B at 384x384 (base + 1 AnyRes tile) and at a high
resolution (base + 2 tiles), Qwen2.5-VL-3B and Qwen3-VL-2B at 384x384 (their own resolution) and
Gemma 3 4B (every image resized to its 896x896 canvas). The selector is the shipped default
(``lightning_configs/siglip_so400m_384.yaml``'s trunk) with random weights; on the first case the
paper-width selector (width = feature dim, depth 3) is timed at keep 1.0 beside it.
"""

from __future__ import annotations

import gc
from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch

from .stages import STAGES, attached, cache_bytes, output_cache, peak_memory
from .timing import median, paired_ratio, spread, timed
from .trunks import PAPER, default_trunk, make_selector

KEEPS = (1.0, 0.5, 0.25, 0.1)
TTFT_TARGETS = {"keep 1": 0.95, "keep 0.25": 2.0}  # TTFT vs unpatched (LLaVA-OneVision, 384x384)
PREFILL_TARGETS = {"keep 0.5": 1.8, "keep 0.1": 6.0}


@dataclass(frozen=True)
class Case:
    family: str  # llava_onevision | qwen2_5_vl | qwen3_vl | gemma3
    size: tuple[int, int]  # image pixels (height, width)
    label: str
    rounds: int
    paper_selector: bool = False  # also time the paper-width selector at keep 1.0


FULL_CPU_CASES = (
    Case("llava_onevision", (384, 384), "384x384: base + 1 AnyRes tile", 2, paper_selector=True),
    Case("llava_onevision", (384, 768), "384x768: base + 2 AnyRes tiles", 1),
    Case("qwen2_5_vl", (384, 384), "384x384 at its own resolution", 1),
    Case("qwen3_vl", (384, 384), "384x384 at its own resolution", 1),
    Case("gemma3", (896, 896), "any image: resized to the 896x896 canvas", 1),
)
TITLES = {"llava_onevision": "LLaVA-OneVision-0.5B", "qwen2_5_vl": "Qwen2.5-VL-3B", "qwen3_vl": "Qwen3-VL-2B", "gemma3": "Gemma 3 4B"}


def smoke_cases() -> tuple[Case, ...]:
    return (
        Case("llava_onevision", (16, 16), "16x16 toy", 1, paper_selector=True),
        Case("llava_onevision", (16, 32), "16x32 toy", 1),
        Case("qwen2_5_vl", (32, 32), "32x32 toy", 1),
        Case("qwen3_vl", (32, 32), "32x32 toy", 1),
        Case("gemma3", (64, 64), "toy canvas", 1),
    )


def tiny_shapes(family: str) -> Any:
    from .llava_prefill import Shapes

    image = {"llava_onevision": 16, "gemma3": 64}.get(family, 32)
    return Shapes(
        vision_hidden=32, vision_layers=2, vision_heads=4, vision_intermediate=64, patch=4, image=image,
        llm_hidden=32, llm_layers=2, llm_heads=4, llm_kv_heads=2, llm_intermediate=64, vocab=151936 if family != "gemma3" else 262208,
    )  # fmt: skip


# ------------------------------------------------------------------------------ model + inputs
def build(family: str, shapes: Any, device: torch.device, dtype: torch.dtype) -> Any:
    from . import prefill_families
    from .llava_prefill import build_model

    if family == "llava_onevision":
        return build_model(shapes, device, dtype)
    return prefill_families.BUILDERS[family][0](shapes, device, dtype)


def inputs_for(case: Case, model: Any, shapes: Any, device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    from token_reduction.selection.registry import get_method
    from token_reduction.vlm import prune_visual_tokens

    from . import prefill_families
    from .llava_prefill import make_inputs

    if case.family == "llava_onevision":
        return make_inputs(prune_visual_tokens(model, get_method("random")), case.size, device, dtype)
    make = prefill_families.BUILDERS[case.family][1]
    return make(shapes, device, dtype, size=case.size) if case.family.startswith("qwen") else make(shapes, device, dtype)


# --------------------------------------------------------------------------------- measuring
def measure_case(case: Case, model: Any, shapes: Any, device: torch.device, dtype: torch.dtype, tiny: bool, log: Callable[[str], None]) -> dict[str, Any]:
    """All configurations of one case, ``case.rounds`` alternating rounds; medians, ratios, stages, memory, KV cache."""
    from token_reduction.selection.registry import get_method
    from token_reduction.vlm import prune_visual_tokens

    inputs = inputs_for(case, model, shapes, device, dtype)
    dim = prune_visual_tokens(model, get_method("random")).feature_dim
    selector = make_selector(default_trunk(), dim, device, dtype, tiny)
    pruned = prune_visual_tokens(model, selector)
    configs: dict[str, Callable[[], Any]] = {"unpatched": lambda: model(**inputs, logits_to_keep=1, use_cache=True)}
    for keep in KEEPS:
        configs[f"keep {keep:g}"] = lambda keep=keep: pruned(**inputs, keep=keep, logits_to_keep=1, use_cache=True)
    configs["adaptive"] = lambda: pruned(**inputs, keep=None, logits_to_keep=1, use_cache=True)
    wrappers = {name: pruned for name in configs if name != "unpatched"} | {"unpatched": None}
    if case.paper_selector:
        paper = prune_visual_tokens(model, make_selector(PAPER, dim, device, dtype, tiny))
        configs["keep 1, paper-width selector"] = lambda: paper(**inputs, keep=1.0, logits_to_keep=1, use_cache=True)
        wrappers["keep 1, paper-width selector"] = paper
    names = list(configs)
    samples: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    kept: dict[str, int] = {}
    with torch.inference_mode():
        configs["keep 0.1"]()  # warm-up: tower, selector and a short prefill, without the cost of a full one
        for r in range(case.rounds):
            for name in names if r % 2 == 0 else list(reversed(names)):
                wrapper = wrappers[name]
                with attached(model, wrapper.selector if wrapper else None, device) as clock:
                    wall, (output, peak) = timed(lambda: peak_memory(configs[name], device), device)
                    stages = clock.read()
                calls = dict(clock.calls)
                samples[name].append({"ttft_s": wall, "stages": stages, "peak_bytes": peak, "kv_cache_bytes": cache_bytes(output_cache(output)), "calls": calls})
                if name not in kept:  # tokens the LLM read
                    kept[name] = int(wrapper.last.attention_mask.sum() if wrapper else inputs["attention_mask"].sum())
                del output
                gc.collect()
            log(f"      round {r + 1}/{case.rounds} done")
    visual = _visual_tokens(inputs, model)
    return _summarise(case, names, samples, kept, visual, selector, dim, dtype)


def _visual_tokens(inputs: dict[str, torch.Tensor], model: Any) -> int:
    image_token = getattr(model.config, "image_token_id", None)
    image_token = image_token if image_token is not None else model.config.image_token_index
    return int((inputs["input_ids"] == image_token).sum())


def _summarise(case: Case, names: list[str], samples: dict[str, list[dict[str, Any]]], kept: dict[str, int], visual: int, selector: Any, dim: int, dtype: torch.dtype) -> dict[str, Any]:
    base = [s["ttft_s"] for s in samples["unpatched"]]
    full_llm = [s["stages"]["LLM"] for s in samples["keep 1"]]
    rows = {}
    for name in names:
        ttft = [s["ttft_s"] for s in samples[name]]
        stage = {st: median([s["stages"][st] for s in samples[name]]) for st in STAGES}
        stage["other"] = max(0.0, median(ttft) - sum(stage.values()))
        llm = [s["stages"]["LLM"] for s in samples[name]]
        peaks = [s["peak_bytes"] for s in samples[name] if s["peak_bytes"] is not None]
        rows[name] = {
            "llm_tokens": kept[name],
            "visual_tokens": visual - (kept["unpatched"] - kept[name]),
            "ttft_s": median(ttft),
            "ttft_spread": spread(ttft),
            "ttft_speedup": paired_ratio(base, ttft),
            "stages_s": stage,
            "prefill_speedup": paired_ratio(full_llm, llm),
            "peak_mib": median(peaks) / 2**20 if peaks else None,
            "kv_cache_mib": samples[name][0]["kv_cache_bytes"] / 2**20,
            "stage_calls": samples[name][0]["calls"],
            "samples": samples[name],
        }
    return {
        "family": case.family,
        "title": TITLES.get(case.family, case.family),
        "image": list(case.size),
        "label": case.label,
        "rounds": case.rounds,
        "dtype": str(dtype).removeprefix("torch."),
        "feature_dim": dim,
        "selector": selector.config() | {"params": sum(p.numel() for p in selector.parameters())},
        "visual_tokens_unpruned": visual,
        "configs": rows,
    }


# ------------------------------------------------------------------------------------------- run
def run(ctx: Any) -> dict[str, Any]:
    from .llava_prefill import Shapes

    tiny = ctx.smoke
    dtype = torch.bfloat16 if ctx.device.type == "cuda" else torch.float32
    cases = smoke_cases() if tiny else FULL_CPU_CASES
    results: list[dict[str, Any]] = []
    built: dict[str, Any] = {}
    for case in cases:
        if case.family not in built:
            model = None  # the previous family's model must be gone before the next one is built (24 GB)
            built.clear()
            gc.collect()
            shapes = tiny_shapes(case.family) if tiny else Shapes.of(case.family)
            ctx.log(f"   building {TITLES.get(case.family, case.family)} ({'toy' if tiny else 'full'} size, random weights)")
            built[case.family] = (build(case.family, shapes, ctx.device, dtype), shapes)
        model, shapes = built[case.family]
        ctx.log(f"   {TITLES.get(case.family, case.family)}, {case.label}: {case.rounds} round(s)")
        result = measure_case(case, model, shapes, ctx.device, dtype, tiny, ctx.log)
        result["params"] = sum(p.numel() for p in model.parameters())
        result["shapes"] = asdict(shapes)
        results.append(result)
        ctx.log(f"      {case.label}: {sum(c['ttft_s'] for c in result['configs'].values()) * case.rounds:.0f} s of calls")
    model = None
    built.clear()
    gc.collect()
    return report(results, smoke=tiny)


def report(results: list[dict[str, Any]], smoke: bool) -> dict[str, Any]:
    from .vlm_ttft_report import entry

    return entry(results, smoke)
