"""What pruning buys at inference: LLM prefill time and memory of a VLM vs keep ratio (LLaVA-OneVision by default).

Builds LLaVA-OneVision with real-size shapes and random weights (SigLIP so400m-patch14-384 tower,
a Qwen2-0.5B-sized LLM; no download), feeds it one image (384x384: base crop + one AnyRes tile,
or ``--anyres`` 768x768: base + 2x2 tiles) and measures, in one run:

* LLM prefill (embedding, placeholder scatter, all decoder layers, last-token logits, KV cache)
  time and peak memory at keep 1.0 / 0.5 / 0.25 / 0.1 (``torch.utils.benchmark.Timer``; memory from
  ``torch.cuda.max_memory_allocated`` on GPU, from the profiler's allocator trace on CPU);
* the selector's own time next to the vision tower's forward, i.e. its overhead;
* time to first token (vision + selector + projector + prefill) against the unpatched model.

Writes ``benchmarks/results/llava_prefill.json`` and prints a markdown table. ``--quick`` (for
CPUs) shrinks *depth only* (``--scale``, default 1/8 of the layers); widths, token counts and the
selector stay real, so prefill ratios keep their meaning but absolute times do not, and the
selector overhead is also reported extrapolated to the full-depth tower.

``--family`` measures another family the same way (its smallest checkpoint's shapes, one image:
``qwen2_5_vl``, ``internvl``, ``gemma3``; see ``benchmarks/prefill_families.py``), each into
``results/prefill_<family>.json``; ``--family all`` runs every one and ends with a table of the
prefill speed-up of each family at every keep. The selector then reads what that family's wrapper
shows it (``selector_features``: merged / shuffled / pooled tokens) and "vision" is the time to
produce those.

    python benchmarks/llava_prefill.py --device cuda            # full size, bf16
    python benchmarks/llava_prefill.py --quick --device cpu     # about a minute on a laptop
    python benchmarks/llava_prefill.py --quick --family all     # every family, ratios side by side
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.benchmark import Timer

from token_reduction.vlm import prune_visual_tokens
from token_reduction.vlm.common import run_selector
from token_reduction.models.backbone import TrunkConfig
from token_reduction.models.selector import TokenSelector
from token_reduction.selection.registry import get_method

try:  # a package module (the suite, tests) or a script next to it
    from benchmarks import prefill_families as families
    from benchmarks.trunks import default_trunk
except ImportError:  # pragma: no cover - `python benchmarks/llava_prefill.py` without the repo on sys.path
    import prefill_families as families  # type: ignore[no-redef]
    from trunks import default_trunk  # type: ignore[no-redef]

KEEPS = (1.0, 0.5, 0.25, 0.1)
RESULTS = Path(__file__).resolve().parent / "results" / "llava_prefill.json"
IMAGE_TOKEN, VIDEO_TOKEN = 151646, 151647
DEFAULT_FAMILY = "llava_onevision"
FAMILIES = (DEFAULT_FAMILY, *families.BUILDERS)


@dataclass
class Shapes:
    """LLaVA-OneVision-0.5B-like shapes; ``vision_layers``/``llm_layers`` shrink with ``--scale``."""

    vision_hidden: int = 1152
    vision_layers: int = 27
    vision_heads: int = 16
    vision_intermediate: int = 4304
    patch: int = 14
    image: int = 384
    llm_hidden: int = 896
    llm_layers: int = 24
    llm_heads: int = 14
    llm_kv_heads: int = 2
    llm_intermediate: int = 4864
    vocab: int = 151936

    def scaled(self, scale: float) -> "Shapes":
        depth = dict(vision_layers=max(1, round(self.vision_layers * scale)), llm_layers=max(1, round(self.llm_layers * scale)))
        return Shapes(**(asdict(self) | depth))

    @classmethod
    def of(cls, family: str) -> "Shapes":
        """Real-size shapes of ``family`` (LLaVA-OneVision-0.5B's, or :data:`prefill_families.SHAPES`)."""
        if family not in FAMILIES:
            raise ValueError(f"--family must be one of {', '.join(FAMILIES)} (or all), got {family!r}")
        return cls() if family == DEFAULT_FAMILY else cls(**families.SHAPES[family])


def build_model(shapes: Shapes, device: torch.device, dtype: torch.dtype) -> Any:
    """Random-weight LLaVA-OneVision, initialised directly on ``device`` in ``dtype``."""
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration, Qwen2Config, SiglipVisionConfig

    vision = SiglipVisionConfig(
        hidden_size=shapes.vision_hidden, num_hidden_layers=shapes.vision_layers, num_attention_heads=shapes.vision_heads,
        intermediate_size=shapes.vision_intermediate, patch_size=shapes.patch, image_size=shapes.image, vision_use_head=False,
    )  # fmt: skip
    text = Qwen2Config(
        hidden_size=shapes.llm_hidden, num_hidden_layers=shapes.llm_layers, num_attention_heads=shapes.llm_heads,
        num_key_value_heads=shapes.llm_kv_heads, intermediate_size=shapes.llm_intermediate, vocab_size=shapes.vocab,
        max_position_embeddings=32768, tie_word_embeddings=True,
    )  # fmt: skip
    config = LlavaOnevisionConfig(
        vision_config=vision, text_config=text, image_token_index=IMAGE_TOKEN, video_token_index=VIDEO_TOKEN,
        vision_feature_layer=-1, vision_feature_select_strategy="full", vision_aspect_ratio="anyres_max_9",
        image_grid_pinpoints=[[i * shapes.image, j * shapes.image] for i in range(1, 7) for j in range(1, 7)],
    )  # fmt: skip
    return families.build_random(LlavaOnevisionForConditionalGeneration, config, device, dtype)


def load_or_make_selector(path: str | None, width: int | None, dim: int) -> TokenSelector:
    """An exported selector, or a random one with ``lightning_configs/siglip_so400m_384.yaml``'s trunk (``width`` overrides its width)."""
    if path:
        return TokenSelector.from_pretrained(path)
    trunk = default_trunk()
    if width is not None:
        trunk = TrunkConfig(width=width, depth=trunk.depth, heads=8 if width % 8 == 0 else 4, mlp_ratio=trunk.mlp_ratio)
    return TokenSelector(dim, trunk).eval()


def seconds(fn: Callable[[], Any], repeats: int, warmup: bool = True) -> float:
    """Mean seconds per call over ``repeats`` calls (CUDA is synchronised by ``Timer``)."""
    if warmup:
        fn()
    return Timer(stmt="fn()", globals={"fn": fn}).timeit(repeats).median


def peak_bytes(fn: Callable[[], Any], device: torch.device) -> int:
    """Peak bytes allocated *during* ``fn`` on top of what was live before it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    with tempfile.TemporaryDirectory() as folder:
        trace = Path(folder) / "trace.json"
        prof.export_chrome_trace(str(trace))
        events = json.loads(trace.read_text())["traceEvents"]
    totals = [e["args"]["Total Allocated"] for e in events if e.get("name") == "[memory]" and "Total Allocated" in e.get("args", {})]
    return max(totals, default=0)


def make_inputs(pruned: Any, image_size: tuple[int, int], device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Processor-shaped inputs for one image: prompt text around the image's placeholders."""
    sizes = torch.tensor([image_size], device=device)
    (layout,) = pruned.layouts(sizes)
    side = pruned.config.vision_config.image_size // pruned.config.vision_config.patch_size
    generator = torch.Generator().manual_seed(0)
    prefix, suffix = torch.randint(0, 150000, (12,), generator=generator), torch.randint(0, 150000, (24,), generator=generator)
    ids = torch.cat([prefix, torch.full((layout.tokens_before(side * side),), IMAGE_TOKEN), suffix])[None].to(device)
    pixels = torch.randn(1, layout.num_crops, 3, *(2 * [pruned.config.vision_config.image_size]), generator=generator)
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "pixel_values": pixels.to(device, dtype),
        "image_sizes": sizes,
    }


def selector_call(pruned: Any, inputs: dict[str, torch.Tensor]) -> Callable[[], Any]:
    """One selector pass over what ``pruned`` shows it (``selector_features``), crops of one grid batched."""
    groups: dict[tuple[Any, ...], list[torch.Tensor]] = {}
    for features, grid in zip(pruned.selector_features(**inputs), pruned.selector_grids(**inputs)):
        groups.setdefault((tuple(grid), features.shape[0]), []).append(features)
    batches = [(torch.stack(crops), grid) for (grid, _), crops in groups.items()]
    return lambda: [run_selector(pruned.selector, f, torch.ones(f.shape[:2], dtype=torch.bool), 0.5, None, g) for f, g in batches]


def run(
    quick: bool = True,
    device: str = "cpu",
    *,
    family: str = DEFAULT_FAMILY,
    scale: float | None = None,
    anyres: bool = False,
    image_size: tuple[int, int] | None = None,
    selector: str | None = None,
    selector_width: int | None = None,
    repeats: int | None = None,
    output: str | os.PathLike[str] | None = RESULTS,
    shapes: Shapes | None = None,
) -> dict[str, Any]:
    """Measure everything once and return (and write, unless ``output`` is None) the results.

    ``shapes`` replaces ``family``'s real-size shapes (tests use tiny ones); ``scale`` then still
    applies. ``output`` left at :data:`RESULTS` means ``results/prefill_<family>.json`` for a
    family other than LLaVA-OneVision. ``anyres``/``image_size`` are LLaVA-OneVision's only.
    """
    torch.manual_seed(0)
    dev = torch.device(device)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    scale = scale if scale is not None else (0.125 if quick else 1.0)
    repeats = repeats or (2 if quick else 10)
    reference = shapes or Shapes.of(family)
    shapes = reference.scaled(scale)
    onevision = family == DEFAULT_FAMILY
    if not onevision and (anyres or image_size):
        raise ValueError(f"--anyres/--image-size: LLaVA-OneVision only; {family} measures one crop of Shapes.image pixels")
    started = time.perf_counter()
    if onevision:
        model, dim = build_model(shapes, dev, dtype), shapes.vision_hidden
    else:
        build, make = families.BUILDERS[family]
        model = build(shapes, dev, dtype)
        dim = prune_visual_tokens(model, get_method("random")).feature_dim  # what the family's wrapper shows a selector
    build_s = time.perf_counter() - started
    pruned = prune_visual_tokens(model, load_or_make_selector(selector, selector_width, dim))

    with torch.inference_mode():
        if onevision:
            side = 2 * shapes.image if anyres else shapes.image
            inputs = make_inputs(pruned, image_size or (side, side), dev, dtype)
            (layout,) = pruned.layouts(inputs["image_sizes"])
            crops, size, fixed = layout.num_crops, inputs["image_sizes"][0].tolist(), {}
            features = pruned.vision_features(inputs["pixel_values"], [layout.num_crops])
            valid = layout.valid_mask(features.shape[1], features.device)
            grid = shapes.image // shapes.patch
            vision = lambda: pruned.vision_features(inputs["pixel_values"], [layout.num_crops])  # noqa: E731
            select = lambda: run_selector(pruned.selector, features, valid, 0.5, None, (grid, grid))  # noqa: E731
        else:
            inputs = make(shapes, dev, dtype)
            crops, size, fixed = len(pruned.selector_grids(**inputs)), [shapes.image, shapes.image], families.fixed_positions(model, inputs)
            vision, select = (lambda: pruned.selector_features(**inputs)), selector_call(pruned, inputs)
        vision_s = seconds(vision, repeats)
        selector_s = seconds(select, repeats)
        baseline_s = seconds(lambda: model(**inputs, logits_to_keep=1), repeats)
        rows = []
        for keep in KEEPS:
            prepared = pruned.prepare(**inputs, **fixed, keep=keep)
            kwargs = prepared.model_kwargs() | {"logits_to_keep": 1, "use_cache": True}
            prefill = lambda kwargs=kwargs: model(**kwargs)  # noqa: E731
            prefill_s = seconds(prefill, repeats)
            # Vision + selector + projector: already warm, and nearly constant across keeps.
            encode_s = seconds(lambda keep=keep: pruned.prepare(**inputs, **fixed, keep=keep), 1 if quick else repeats, warmup=False)
            rows.append(
                {
                    "keep": keep,
                    "visual_tokens": sum(prepared.tokens_after),
                    "llm_tokens": int(prepared.attention_mask.sum()),
                    "prefill_s": prefill_s,
                    "prefill_peak_mib": peak_bytes(prefill, dev) / 2**20,
                    "encode_s": encode_s,
                    "ttft_s": encode_s + prefill_s,
                }
            )
    full = rows[0]
    for row in rows:
        row["prefill_speedup"] = full["prefill_s"] / row["prefill_s"]
        row["prefill_memory_ratio"] = row["prefill_peak_mib"] / full["prefill_peak_mib"] if full["prefill_peak_mib"] else None
        row["ttft_speedup_vs_unpatched"] = baseline_s / row["ttft_s"]
    full_depth_vision_s = vision_s * reference.vision_layers / shapes.vision_layers
    results = {
        "benchmark": "llava_prefill",
        "family": family,
        "quick": quick,
        "note": (
            f"QUICK MODE: depth reduced to {shapes.vision_layers}/{reference.vision_layers} vision and "
            f"{shapes.llm_layers}/{reference.llm_layers} LLM layers (widths, token counts and selector are real); absolute "
            "times are not representative, and TTFT pits the full-size selector against the shallow tower"
            if scale < 1
            else "full-size shapes"
        ),
        "device": str(dev) if dev.type == "cpu" else torch.cuda.get_device_name(dev),
        "dtype": str(dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(),
        "shapes": asdict(shapes),
        "selector": pruned.selector.config() | {"params": sum(p.numel() for p in pruned.selector.parameters())},
        "image_size": size,
        "crops": crops,
        "visual_tokens_unpruned": full["visual_tokens"],
        "repeats": repeats,
        "build_s": build_s,
        "vision_tower_s": vision_s,
        "selector_s": selector_s,
        "selector_overhead_pct": 100 * selector_s / vision_s,
        "selector_overhead_full_depth_tower_pct": 100 * selector_s / full_depth_vision_s,
        "unpatched_forward_s": baseline_s,
        "keeps": rows,
    }
    if output is not None:
        output = RESULTS.with_name(f"prefill_{family}.json") if Path(output) == RESULTS and not onevision else output
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(json.dumps(results, indent=2))
    return results


def title(family: str) -> str:
    return "LLaVA-OneVision" if family == DEFAULT_FAMILY else families.TITLES.get(family, family)


def summary(all_results: list[dict[str, Any]]) -> str:
    """Prefill speed-up vs keep 1.0 of every family measured, one row each."""
    keeps = [row["keep"] for row in all_results[0]["keeps"]]
    lines = ["| family | visual tokens | " + " | ".join(f"keep {k:g}" for k in keeps) + " |", "|---|---:|" + "---:|" * len(keeps)]
    for results in all_results:
        speedups = " | ".join(f"{row['prefill_speedup']:.2f}x" for row in results["keeps"])
        lines.append(f"| {title(results['family'])} | {results['visual_tokens_unpruned']} | {speedups} |")
    return "\n".join(lines)


def markdown(results: dict[str, Any]) -> str:
    """The ratios table (speed-up vs keep 1.0, memory ratio, time to first token) plus overheads."""
    lines = [
        f"{title(results.get('family', DEFAULT_FAMILY))} prefill, {results['device']} ({results['dtype']}), image {results['image_size']} "
        f"({results['crops']} crops, {results['visual_tokens_unpruned']} visual tokens). {results['note']}.",
        "",
        "| keep | visual tokens | LLM tokens | prefill (ms) | prefill speed-up | peak prefill mem (MiB) | mem ratio "
        "| TTFT speed-up vs unpatched |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results["keeps"]:
        ratio = f"{r['prefill_memory_ratio']:.2f}" if r["prefill_memory_ratio"] is not None else "n/a"
        lines.append(
            f"| {r['keep']:.2f} | {r['visual_tokens']} | {r['llm_tokens']} | {1000 * r['prefill_s']:.1f} | "
            f"{r['prefill_speedup']:.2f}x | {r['prefill_peak_mib']:.0f} | {ratio} | {r['ttft_speedup_vs_unpatched']:.2f}x |"
        )
    lines += [
        "",
        f"Selector: {1000 * results['selector_s']:.1f} ms vs vision tower {1000 * results['vision_tower_s']:.1f} ms "
        f"= {results['selector_overhead_pct']:.1f}% overhead"
        + (
            f" ({results['selector_overhead_full_depth_tower_pct']:.1f}% of the full-depth tower, extrapolated per layer)"
            if results["quick"]
            else ""
        ),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="reduced depth (see --scale), 2 repeats: for CPUs")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--scale", type=float, default=None, help="fraction of layers to build (default 1/8 with --quick, else 1)")
    parser.add_argument("--anyres", action="store_true", help="a 768x768 image (base + 2x2 tiles) instead of 384x384")
    parser.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"), default=None)
    parser.add_argument("--selector", default=None, help="exported selector folder (default: random, paper-sized)")
    parser.add_argument("--selector-width", type=int, default=None, help="width of the random selector (default: the shipped config's trunk; the feature dim for the paper's)")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--family", nargs="+", default=[DEFAULT_FAMILY], choices=[*FAMILIES, "all"], help="model families to measure")
    parser.add_argument("--output", default=None, help="results file (default: results/llava_prefill.json, prefill_<family>.json)")
    args = parser.parse_args(argv)
    names = list(FAMILIES) if "all" in args.family else list(dict.fromkeys(args.family))
    if args.output and len(names) > 1:
        parser.error("--output names one file; measure one --family at a time with it")
    measured = []
    for family in names:
        output = args.output or (RESULTS if family == DEFAULT_FAMILY else RESULTS.with_name(f"prefill_{family}.json"))
        results = run(
            args.quick, args.device, family=family, scale=args.scale, anyres=args.anyres, selector=args.selector,
            image_size=tuple(args.image_size) if args.image_size else None, selector_width=args.selector_width,
            repeats=args.repeats, output=output,
        )  # fmt: skip
        measured.append(results)
        print(markdown(results))
        print(f"\nwrote {output}\n")
    if len(measured) > 1:
        print("Prefill speed-up vs keep 1.0, by family:\n\n" + summary(measured))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
