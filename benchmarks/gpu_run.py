"""One GPU run, ready to go: 7B-shaped VLMs with pruning, and the selector's training throughput.

    python -m benchmarks.gpu_run                        # one H100/H200: about 5 minutes, no downloads
    python -m benchmarks.gpu_run --tiny --device cpu    # toy shapes: checks the script end to end

Builds LLaVA-OneVision-7B and Qwen2.5-VL-7B shapes with random weights (bfloat16, SDPA attention,
built on the GPU in seconds by :mod:`benchmarks.random_weights`) and measures, for a 384-448 px
and a high-resolution image each, at keep 1.0 / 0.5 / 0.25 / 0.2 / 0.1 and adaptive against the
unpatched model: time to first token (whole call, median of rounds), LLM prefill, decode tokens/s
(``generate`` of 64 new tokens), peak memory and the KV cache. Then it trains the shipped CLIP-L
selector config (``lightning_configs/clip_vit_l14_336.yaml``) on a synthetic CLIP-L/14-336-shaped
cache (576 x 1024 tokens) in bf16-mixed precision and reports samples/s after warm-up.

Everything it needs is in this repository and the installed packages; the results JSON names the
GPU, the versions and the date, and is rewritten atomically after every model, so a run cut short
keeps what it measured. ``--budget-s`` (default 480) skips what would start after the budget.
"""

from __future__ import annotations

import argparse
import gc
import json
import tempfile
import time
from dataclasses import asdict, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import lightning as L
import torch

from .llava_prefill import Shapes, build_model, make_inputs
from .prefill_families import BUILDERS
from .report import atomic_write_text
from .stages import attached, cache_bytes, output_cache, peak_memory
from .timing import machine_info, median, paired_ratio, synchronize, timed

OUT = Path(__file__).resolve().parent / "results" / "gpu_run.json"
KEEPS = (1.0, 0.5, 0.25, 0.2, 0.1)
NEW_TOKENS = 64
QWEN2_7B_LLM = dict(llm_hidden=3584, llm_layers=28, llm_heads=28, llm_kv_heads=4, llm_intermediate=18944, vocab=152064)
MODELS: dict[str, dict[str, Any]] = {
    "llava_onevision_7b": {"shapes": Shapes(**QWEN2_7B_LLM), "images": [(384, 384), (768, 768)]},
    "qwen2_5_vl_7b": {
        "shapes": Shapes(vision_hidden=1280, vision_layers=32, vision_heads=16, vision_intermediate=3420, patch=14, image=448, **QWEN2_7B_LLM),
        "images": [(448, 448), (896, 896)],
    },
}
TINY = Shapes(vision_hidden=32, vision_layers=2, vision_heads=4, vision_intermediate=64, patch=4, image=16,
              llm_hidden=32, llm_layers=2, llm_heads=4, llm_kv_heads=2, llm_intermediate=64, vocab=151936)  # fmt: skip


def build(name: str, shapes: Shapes, device: torch.device, dtype: torch.dtype) -> Any:
    if name.startswith("llava_onevision"):
        return build_model(shapes, device, dtype)
    return BUILDERS["qwen2_5_vl"][0](shapes, device, dtype)


def inputs_for(name: str, model: Any, shapes: Shapes, size: tuple[int, int], device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    from token_reduction.selection.registry import get_method
    from token_reduction.vlm import prune_visual_tokens

    if name.startswith("llava_onevision"):
        return make_inputs(prune_visual_tokens(model, get_method("random")), size, device, dtype)
    return BUILDERS["qwen2_5_vl"][1](shapes, device, dtype, size=size)


def measure_image(model: Any, pruned: Any, selector: Any, inputs: dict[str, Any], rounds: int, device: torch.device) -> dict[str, Any]:
    """TTFT / prefill / memory per configuration over alternating rounds, then decode tokens/s."""
    calls: dict[str, Callable[[], Any]] = {"unpatched": lambda: model(**inputs, logits_to_keep=1)}
    calls |= {f"keep {k:g}": (lambda k=k: pruned(**inputs, keep=k, logits_to_keep=1)) for k in KEEPS}
    calls["adaptive"] = lambda: pruned(**inputs, keep=None, logits_to_keep=1)
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in calls}
    tokens: dict[str, int] = {}
    with torch.inference_mode():
        for call in calls.values():  # warm-up: kernels, allocator
            call()
        for r in range(rounds):
            for name in calls if r % 2 == 0 else reversed(list(calls)):
                with attached(model, None if name == "unpatched" else selector, device) as clock:
                    wall, (out, peak) = timed(lambda name=name: peak_memory(calls[name], device), device)
                    stages = clock.read()
                samples[name].append({"ttft_s": wall, "prefill_s": stages["LLM"], "tower_s": stages["vision tower"],
                                      "selector_s": stages["selector"], "peak_bytes": peak or 0, "kv_bytes": cache_bytes(output_cache(out))})  # fmt: skip
                tokens[name] = int(inputs["attention_mask"].sum()) if name == "unpatched" else int(pruned.last.attention_mask.sum())
                del out
        decode = {name: decode_rate(model, pruned, selector, inputs, name, device) for name in ("unpatched", "keep 1", "keep 0.2")}
    base, full = [s["ttft_s"] for s in samples["unpatched"]], [s["prefill_s"] for s in samples["keep 1"]]
    rows = {}
    for name, series in samples.items():
        ttft, prefill = [s["ttft_s"] for s in series], [s["prefill_s"] for s in series]
        rows[name] = {
            "llm_tokens": tokens[name], "ttft_s": median(ttft), "ttft_speedup": paired_ratio(base, ttft),
            "prefill_s": median(prefill), "prefill_speedup": paired_ratio(full, prefill),
            "tower_s": median([s["tower_s"] for s in series]), "selector_s": median([s["selector_s"] for s in series]),
            "peak_mib": median([s["peak_bytes"] for s in series]) / 2**20, "kv_cache_mib": series[0]["kv_bytes"] / 2**20,
            "decode_tokens_per_s": decode.get(name),
        }  # fmt: skip
    return rows


def decode_rate(model: Any, pruned: Any, selector: Any, inputs: dict[str, Any], name: str, device: torch.device) -> float:
    """New tokens per second of the decode steps (every LLM forward after the prefill) of one ``generate``."""
    options = dict(max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False)
    call = (lambda: model.generate(**inputs, **options)) if name == "unpatched" else (lambda: pruned.generate(**inputs, keep=float(name.split()[1]), **options))
    with attached(model, None if name == "unpatched" else selector, device) as clock:
        timed(call, device)
        steps = clock.llm_calls[1:]
    return len(steps) / sum(steps) if steps else 0.0


def selector_training(device: torch.device, tiny: bool, work: Path) -> dict[str, Any]:
    """Samples/s of the shipped CLIP-L config's selector + reconstructor training on a CLIP-L-shaped cache."""
    import yaml

    from token_reduction.cache.datamodule import FeatureCacheDataModule
    from token_reduction.cache.feature_cache import CacheWriter
    from token_reduction.cache.manifest import Manifest
    from token_reduction.resources import find_config
    from token_reduction.training.module import TokenReductionModule

    config = yaml.safe_load(find_config("clip_vit_l14_336").read_text())
    grid, dim = ((4, 4), 32) if tiny else ((24, 24), 1024)
    samples, batch, steps, warmup = (32, 8, 4, 1) if tiny else (2048, config["data"]["batch_size"], 40, 10)
    template = Manifest(encoder="synthetic-clip-l14-336", layer=-2, num_tokens=grid[0] * grid[1], grid=grid, dim=dim, dtype="float16")
    writer = CacheWriter(work / "cache", template, shard_size=256)
    generator = torch.Generator().manual_seed(0)
    for start in range(0, samples, 64):
        count = min(64, samples - start)
        writer.add(torch.randn(count, grid[0] * grid[1], dim, generator=generator).half(), [{"id": f"s{start + i}", "image": f"s{start + i}"} for i in range(count)])
    writer.close()
    model_args = {k: v for k, v in config["model"].items()}
    if tiny:
        for part in ("selector", "reconstructor"):
            model_args[part] = dict(model_args[part], width=16, heads=4)
    module = TokenReductionModule(dim=dim, grid=grid, **model_args)
    data = FeatureCacheDataModule(str(work / "cache"), batch_size=batch, num_workers=0 if tiny else 8, verify="none")
    clock = StepClock(warmup)
    trainer = L.Trainer(
        accelerator=device.type if device.type != "cpu" else "cpu", devices=1, precision="bf16-mixed" if device.type == "cuda" else "32-true",
        max_steps=steps, limit_val_batches=0, num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[clock], default_root_dir=str(work / "run"),
    )  # fmt: skip
    trainer.fit(module, data)
    measured = steps - warmup
    return {
        "config": "lightning_configs/clip_vit_l14_336.yaml" + (" (toy widths)" if tiny else ""),
        "selector": model_args["selector"], "reconstructor": model_args["reconstructor"], "tokens": grid[0] * grid[1], "dim": dim,
        "batch": batch, "precision": trainer.precision, "steps_timed": measured,
        "samples_per_s": batch * measured / clock.seconds if clock.seconds else None,
    }  # fmt: skip


class StepClock(L.Callback):
    """Seconds of the training steps after the first ``warmup`` ones (device synchronised)."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.seconds, self._steps, self._started = warmup, 0.0, 0, 0.0

    def on_train_batch_start(self, trainer: Any, *_: Any) -> None:
        synchronize(trainer.strategy.root_device)
        self._started = time.perf_counter()

    def on_train_batch_end(self, trainer: Any, *_: Any) -> None:
        synchronize(trainer.strategy.root_device)
        self._steps += 1
        if self._steps > self.warmup:
            self.seconds += time.perf_counter() - self._started


def run(device: str, tiny: bool, out: Path, budget_s: float, rounds: int, dtype: torch.dtype | None = None) -> dict[str, Any]:
    from token_reduction.selection.registry import get_method
    from token_reduction.vlm import prune_visual_tokens

    from .trunks import default_trunk, make_selector

    dev = torch.device(device)
    dtype = dtype or (torch.bfloat16 if dev.type == "cuda" else torch.float32)
    started = time.perf_counter()
    results: dict[str, Any] = {
        "script": "python -m benchmarks.gpu_run" + (" --tiny" if tiny else ""),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(dev), "dtype": str(dtype).removeprefix("torch."), "tiny": tiny, "models": {}, "skipped": [],
    }  # fmt: skip
    for name, spec in MODELS.items():
        if time.perf_counter() - started > budget_s:
            results["skipped"].append(f"{name}: time budget ({budget_s:.0f} s) spent")
            continue
        shapes = replace(TINY, image=32, patch=4) if tiny and not name.startswith("llava") else (TINY if tiny else spec["shapes"])
        model = build(name, shapes, dev, dtype)
        dim = prune_visual_tokens(model, get_method("random")).feature_dim
        selector = make_selector(default_trunk(), dim, dev, dtype, tiny)
        pruned = prune_visual_tokens(model, selector)
        entry: dict[str, Any] = {"shapes": asdict(shapes), "params": sum(p.numel() for p in model.parameters()),
                                 "attention": getattr(model.config, "_attn_implementation", None), "images": {}}  # fmt: skip
        for size in [(shapes.image, 2 * shapes.image)] if tiny else spec["images"]:
            inputs = inputs_for(name, model, shapes, size, dev, dtype)
            entry["images"][f"{size[0]}x{size[1]}"] = measure_image(model, pruned, selector, inputs, rounds, dev)
        results["models"][name] = entry
        del model, pruned, selector
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        results["wall_s"] = time.perf_counter() - started
        atomic_write_text(out, json.dumps(results, indent=2) + "\n")
    if time.perf_counter() - started <= budget_s:
        with tempfile.TemporaryDirectory() as folder:
            results["selector_training"] = selector_training(dev, tiny, Path(folder))
    else:
        results["skipped"].append("selector_training: time budget spent")
    results["wall_s"] = time.perf_counter() - started
    atomic_write_text(out, json.dumps(results, indent=2) + "\n")
    return results


def markdown(results: dict[str, Any]) -> str:
    lines = [f"GPU run {results['date']} on {results['machine'].get('gpu', results['machine']['device'])}, {results['dtype']}"]
    for name, entry in results["models"].items():
        for image, rows in entry["images"].items():
            lines += ["", f"**{name}, {image}**", "", "| call | LLM tokens | TTFT ms | TTFT speed-up | prefill speed-up | decode tok/s | peak MiB |",
                      "|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
            for call, r in rows.items():
                decode = "" if r["decode_tokens_per_s"] is None else f"{r['decode_tokens_per_s']:.1f}"
                lines.append(f"| {call} | {r['llm_tokens']} | {1000 * r['ttft_s']:.1f} | {r['ttft_speedup']:.2f}x | {r['prefill_speedup']:.2f}x | {decode} | {r['peak_mib']:.0f} |")
    training = results.get("selector_training")
    if training:
        lines += ["", f"Selector training ({training['config']}, {training['precision']}, batch {training['batch']}): {training['samples_per_s']:.1f} samples/s"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_run", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="toy shapes (for a CPU check of the script)")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--budget-s", type=float, default=480.0, help="start nothing new after this many seconds")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], default=None, help="default: bfloat16 on CUDA, float32 on a CPU")
    args = parser.parse_args(argv)
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here (use --tiny --device cpu to check the script)")
    results = run(args.device, args.tiny, args.out, args.budget_s, args.rounds, getattr(torch, args.dtype) if args.dtype else None)
    print(markdown(results))
    print(f"\nwrote {args.out} in {results['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
