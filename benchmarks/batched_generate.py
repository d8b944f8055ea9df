"""Pruning's second payoff: throughput of batched ``generate``, and how many requests fit in memory.

LLaVA-OneVision-0.5B at full size (random weights), 8 prompts each with its own 384x384 image,
greedy ``generate`` of exactly 32 new tokens through the pruning wrapper at keep 1.0 and keep 0.25:
new tokens per second for the whole call, and split (hooks on the LLM) into the prefill and the
decode steps. Memory: the peak of the whole call at batch 8 and at batch 1 gives a per-request
cost; with it, the largest batch that fits :data:`BUDGET_GIB` on top of the weights. The KV cache
per request is exact (bytes of the returned cache).
"""

from __future__ import annotations

import gc
from typing import Any, Callable

import torch

from .stages import attached, cache_bytes, output_cache, peak_memory
from .timing import timed

BATCH = 8
NEW_TOKENS = 32
KEEPS = (1.0, 0.25)
BUDGET_GIB = 8.0  # memory for requests on top of the model's weights


def batch_inputs(pruned: Any, batch: int, size: tuple[int, int], device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """``batch`` prompts of the same shape, each with its own random image."""
    from .llava_prefill import make_inputs

    one = make_inputs(pruned, size, device, dtype)
    generator = torch.Generator().manual_seed(1)
    pixels = torch.randn(batch, *one["pixel_values"].shape[1:], generator=generator).to(device, dtype)
    return {
        "input_ids": one["input_ids"].repeat(batch, 1),
        "attention_mask": one["attention_mask"].repeat(batch, 1),
        "pixel_values": pixels,
        "image_sizes": one["image_sizes"].repeat(batch, 1),
    }


def measure(pruned: Any, model: Any, selector: Any, inputs: dict[str, torch.Tensor], keep: float, device: torch.device) -> dict[str, Any]:
    """One ``generate`` call: wall time, prefill/decode split, peak memory, KV cache."""
    call: Callable[[], Any] = lambda: pruned.generate(  # noqa: E731
        **inputs, keep=keep, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False,
        return_dict_in_generate=True,
    )  # fmt: skip
    with attached(model, selector, device) as clock:
        wall, (output, peak) = timed(lambda: peak_memory(call, device), device)
        llm = list(clock.llm_calls)
    batch = inputs["input_ids"].shape[0]
    new = output.sequences.shape[1] - pruned.last.input_ids.shape[1]
    decode_s = sum(llm[1:])
    result = {
        "keep": keep,
        "batch": batch,
        "new_tokens": new,
        "wall_s": wall,
        "tokens_per_s": batch * new / wall,
        "prefill_s": llm[0] if llm else None,
        "decode_s": decode_s,
        "decode_tokens_per_s": batch * (new - 1) / decode_s if decode_s else None,
        "llm_tokens_per_row": int(pruned.last.attention_mask.sum()) // batch,
        "peak_bytes": peak,
        "kv_cache_bytes": cache_bytes(output_cache(output)),
    }
    del output
    gc.collect()
    return result


def largest_batch(big: dict[str, Any], small: dict[str, Any], budget: float) -> dict[str, Any]:
    """Per-request memory from two batch sizes' peaks, and the largest batch within ``budget`` bytes."""
    if big["peak_bytes"] is None or small["peak_bytes"] is None:
        return {"per_request_bytes": None, "largest_batch": None}
    per_request = max(1.0, (big["peak_bytes"] - small["peak_bytes"]) / (big["batch"] - small["batch"]))
    fixed = max(0.0, small["peak_bytes"] - per_request * small["batch"])
    return {
        "per_request_bytes": per_request,
        "fixed_bytes": fixed,
        "largest_batch": int((budget - fixed) // per_request),
        "largest_batch_kv_only": int(budget // (big["kv_cache_bytes"] / big["batch"])),
    }


def run(ctx: Any) -> dict[str, Any]:
    from token_reduction.selection.registry import get_method
    from token_reduction.vlm import prune_visual_tokens

    from .llava_prefill import Shapes, build_model
    from .trunks import default_trunk, make_selector
    from .vlm_ttft import tiny_shapes

    tiny = ctx.smoke
    dtype = torch.bfloat16 if ctx.device.type == "cuda" else torch.float32
    shapes = tiny_shapes("llava_onevision") if tiny else Shapes()
    size = (shapes.image, shapes.image)
    ctx.log(f"   building LLaVA-OneVision ({'toy' if tiny else 'full'} size, random weights)")
    model = build_model(shapes, ctx.device, dtype)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    dim = prune_visual_tokens(model, get_method("random")).feature_dim
    selector = make_selector(default_trunk(), dim, ctx.device, dtype, tiny)
    pruned = prune_visual_tokens(model, selector)
    budget = (1 if tiny else BUDGET_GIB) * 2**30
    runs: dict[str, dict[str, Any]] = {}
    with torch.inference_mode():
        small = batch_inputs(pruned, 1, size, ctx.device, dtype)
        big = batch_inputs(pruned, BATCH, size, ctx.device, dtype)
        pruned.generate(**small, keep=0.25, max_new_tokens=2, do_sample=False)  # warm-up
        for keep in KEEPS:
            ctx.log(f"   keep {keep:g}: batch {BATCH} x {NEW_TOKENS} new tokens, then batch 1 for the memory slope")
            runs[f"keep {keep:g}, batch {BATCH}"] = measure(pruned, model, selector, big, keep, ctx.device)
            runs[f"keep {keep:g}, batch 1"] = measure(pruned, model, selector, small, keep, ctx.device)
    fits = {f"keep {k:g}": largest_batch(runs[f"keep {k:g}, batch {BATCH}"], runs[f"keep {k:g}, batch 1"], budget) for k in KEEPS}
    del model, pruned
    gc.collect()
    return report(runs, fits, weights, budget, shapes, tiny)


def report(runs: dict[str, dict[str, Any]], fits: dict[str, dict[str, Any]], weights: int, budget: float, shapes: Any, smoke: bool) -> dict[str, Any]:
    def mib(value: float | None) -> str:
        return "n/a" if value is None else f"{value / 2**20:,.0f}"

    rows = [
        [name, r["llm_tokens_per_row"], f"{r['wall_s']:.1f}", f"{r['tokens_per_s']:.2f}", f"{r['prefill_s']:.2f}",
         "n/a" if r["decode_tokens_per_s"] is None else f"{r['decode_tokens_per_s']:.1f}", mib(r["peak_bytes"]), mib(r["kv_cache_bytes"])]
        for name, r in runs.items()
    ]  # fmt: skip
    full, pruned = runs[f"keep 1, batch {BATCH}"], runs[f"keep 0.25, batch {BATCH}"]
    fit_rows = [
        [name, mib(f["per_request_bytes"]), mib(f.get("fixed_bytes")), f["largest_batch"], f.get("largest_batch_kv_only")]
        for name, f in fits.items()
    ]
    gain = pruned["tokens_per_s"] / full["tokens_per_s"]
    capacity = (fits["keep 0.25"]["largest_batch"] or 0) / max(1, fits["keep 1"]["largest_batch"] or 0)
    notes = [
        f"LLaVA-OneVision-0.5B shapes (LLM {shapes.llm_layers} layers of {shapes.llm_hidden}), float32 weights "
        f"{weights / 2**30:.2f} GiB, {BATCH} prompts of one {shapes.image}x{shapes.image} image each, greedy, exactly "
        f"{NEW_TOKENS} new tokens, through the pruning wrapper (keep 1.0 runs the selector too). One call per row: these "
        "calls take minutes on a CPU, so there are no repeated rounds here; the TTFT benchmark's rounds show the spread.",
        "Tokens/s: new tokens of the whole batch over the whole call (tower, selector, prefill, decode). Prefill = the "
        "first LLM forward; decode tokens/s = the other 31 steps.",
        f"Memory budget: {budget / 2**30:g} GiB for requests on top of the weights. Per request = (peak at batch {BATCH} - "
        "peak at batch 1) / 7, measured as the process's resident-set high-water mark during each call; the fixed part is the "
        "rest of the batch-1 peak. 'KV only' divides the budget by the KV cache per request alone, as a GPU server that "
        "frees activations between steps would.",
        f"keep 0.25 vs 1.0: {gain:.2f}x tokens/s at batch {BATCH}, {capacity:.2f}x the requests in the same memory.",
    ]
    if smoke:
        notes.insert(0, "SMOKE MODE: toy shapes and a 1 GiB budget; the numbers mean nothing.")
    return {
        "title": "Batched generate: throughput and requests per memory budget",
        "summary": f"{BATCH} prompts with images, {NEW_TOKENS} new tokens, keep 1.0 vs 0.25 (LLaVA-OneVision-0.5B, full size).",
        "runs": runs,
        "fits": fits,
        "throughput_gain": gain,
        "capacity_gain": capacity,
        "tables": [
            {"title": "generate calls", "columns": ["call", "LLM tokens per row", "wall s", "new tokens/s", "prefill s",
                                                   "decode tokens/s", "peak MiB", "KV cache MiB"], "rows": rows},
            {"title": f"Requests that fit in {budget / 2**30:g} GiB", "columns": ["keep", "MiB per request", "fixed MiB",
                                                                                "largest batch", "largest batch, KV only"], "rows": fit_rows},
        ],  # fmt: skip
        "notes": notes,
        "targets": [],
    }
