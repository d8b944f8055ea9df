"""The benchmark suite: every figure is a ratio against the right baseline, measured side by side.

``python -m benchmarks [--quick|--full|--smoke] [--only NAME,...] [--device cpu|cuda] [--out PATH]``
runs the benchmarks below in one process and writes ``results.json`` + ``RESULTS.md`` next to
``--out`` (plots and per-benchmark files go to ``results/`` beside it). See ``benchmarks/README.md``.

Benchmarks (one module each, each with ``run(ctx) -> dict``):

* ``selector_overhead`` - TokenSelector inference vs the vision tower (CLIP-L/14-336, SigLIP so400m),
  paper-faithful and narrow widths, plus the quality each width reaches (learned-vs-random gap);
* ``training_loop`` - Lightning's training loop vs a bare PyTorch loop over the same model and data;
* ``data_path`` - cached-feature streaming vs what the training step consumes; cache size on disk;
* ``extraction`` - images/s of ``extract`` (pixels and a tiny CLIP) vs the encoder alone;
* ``llava_prefill`` - LLaVA-OneVision prefill vs keep ratio (``benchmarks/llava_prefill.py``);
* ``scaling`` - selector and training-step cost vs token count, with a log-log plot.

``--full-cpu`` runs other benchmarks, at real size on the machine at hand (about 25 minutes on 2
cores), into ``results-full-cpu.json``:

* ``selector_cost`` - selector trunks (paper width down to 128) against full-depth CLIP-L/SigLIP
  towers, in float32 / bfloat16 / float16, joined with each trunk's held-out quality
  (``benchmarks/selector_quality.py``): the table the default selector trunk is chosen from;
* ``vlm_ttft`` - LLaVA-OneVision-0.5B, Qwen2.5-VL-3B, Qwen3-VL-2B, Gemma 3 4B at full depth: time to
  first token by stage at every keep ratio, peak memory, KV cache;
* ``batched_generate`` - ``generate`` of 8 prompts with images, 32 new tokens: tokens/s at keep 1.0
  vs 0.25 and the largest batch that fits a memory budget.
"""

from __future__ import annotations

import importlib
import os
import shutil
import tempfile
import time
import traceback
import warnings
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

BENCHMARKS = ("selector_overhead", "training_loop", "data_path", "extraction", "llava_prefill", "scaling")
FULL_CPU_BENCHMARKS = ("selector_cost", "vlm_ttft", "batched_generate")
MODES = ("smoke", "quick", "full", "full-cpu")
HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results.json"
FULL_CPU_OUT = HERE / "results-full-cpu.json"


def benchmarks_for(mode: str) -> tuple[str, ...]:
    """What a mode runs: ``full-cpu`` its own set, ``smoke`` every benchmark at toy sizes, the rest the original set."""
    if mode == "full-cpu":
        return FULL_CPU_BENCHMARKS
    return BENCHMARKS + FULL_CPU_BENCHMARKS if mode == "smoke" else BENCHMARKS


def default_out(mode: str) -> Path:
    return FULL_CPU_OUT if mode == "full-cpu" else DEFAULT_OUT


@dataclass(frozen=True)
class Sizes:
    """How big each benchmark runs in a mode. ``quick`` is for 2 CPU cores, ``smoke`` for tests."""

    mode: str
    encoder: str = "pixels:16"  # features of the cached training set (pixels: no download)
    images: int = 96  # default-set images to build and cache
    image_size: int | None = None  # default-set image side (None: the spec's)
    rounds: int = 3  # interleaved rounds per comparison (medians over these)
    # selector overhead
    tiny_towers: bool = False  # smoke: towers with toy widths instead of the real shapes
    tower_layers: int | None = 1  # layers actually built (None: full depth); the rest is extrapolated
    batches: tuple[int, ...] = (1, 8)
    batch_rounds: tuple[int, ...] = (3, 2)  # interleaved rounds per batch size (batch 8 costs seconds per call on CPU)
    quality_steps: int = 8  # optimiser steps per selector width for the quality column
    quality_batch: int = 8
    # training loop / data path
    train_trunk: tuple[int, int, int, float] = (96, 2, 4, 2.0)  # width, depth, heads, mlp ratio (demo.yaml)
    train_batch: int = 16
    train_steps: int = 8  # steps per measured round
    loader_min_samples: int = 256  # samples per loader measurement (whole passes)
    worker_counts: tuple[int, ...] = (0, 1, 2)
    # extraction
    extract_images: int = 32
    tiny_clip: tuple[int, int, int, int] = (224, 16, 64, 2)  # image, patch, hidden, layers
    # scaling
    scaling_tokens: tuple[tuple[str, int, tuple[int, int]], ...] = (
        ("CLIP-L/14-336", 576, (24, 24)),
        ("SigLIP-384", 729, (27, 27)),
        ("CLIP-L/14 @672", 2304, (48, 48)),
        ("AnyRes 5 x 576", 2880, (120, 24)),
    )
    scaling_dim: int = 1024
    scaling_rounds: int = 2
    threads: int | None = None  # torch intra-op threads (None: torch's default)


def sizes_for(mode: str) -> Sizes:
    if mode == "quick":
        return Sizes("quick")
    if mode == "full":
        return Sizes(
            "full", images=360, rounds=5, batch_rounds=(5, 5), tower_layers=None, quality_steps=300, quality_batch=16,
            train_steps=50, loader_min_samples=2048, extract_images=360, scaling_rounds=5,
        )  # fmt: skip
    if mode == "full-cpu":
        return Sizes("full-cpu", tower_layers=None)
    if mode == "smoke":
        return Sizes(
            "smoke", encoder="pixels:8@32", images=12, image_size=64, rounds=1, tiny_towers=True, tower_layers=1,
            batches=(1, 2), batch_rounds=(1, 1), quality_steps=1, quality_batch=4, train_trunk=(32, 1, 2, 2.0), train_batch=4, train_steps=2,
            loader_min_samples=8, worker_counts=(0, 1), extract_images=4, tiny_clip=(32, 8, 32, 1),
            scaling_tokens=(("tiny 4x4", 16, (4, 4)), ("tiny 5x5", 25, (5, 5)), ("tiny 8x8", 64, (8, 8)), ("tiny 5 x 16", 80, (20, 4))),
            scaling_dim=32, scaling_rounds=1, threads=1,
        )  # fmt: skip
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


class Context:
    """What the benchmarks share: sizes, device, a work folder, and the lazily built image set/cache."""

    def __init__(self, sizes: Sizes, device: str, out_dir: Path, work: Path, log: Callable[[str], None] = print) -> None:
        self.sizes = sizes
        self.device = torch.device(device)
        self.out_dir = out_dir  # artefacts (plots, per-benchmark JSON)
        self.work = work
        self.log = log
        self._images: Path | None = None
        self._cache: Path | None = None
        self.prepare_s: dict[str, float] = {}

    @property
    def smoke(self) -> bool:
        return self.sizes.mode == "smoke"

    @property
    def quick(self) -> bool:
        return self.sizes.mode != "full"

    def images(self) -> Path:
        """A small build of the embedded default image set (photos + rendered pages)."""
        if self._images is None:
            from token_reduction.images.default_set import build_default_set

            started = time.perf_counter()
            self._images = build_default_set(
                self.work / "images", num_images=self.sizes.images, size=self.sizes.image_size, progress=False
            )
            self.prepare_s["build_default_set"] = time.perf_counter() - started
        return self._images

    def cache(self) -> Path:
        """The images' ``pixels`` feature cache (fp16 shards), extracted once for every benchmark."""
        if self._cache is None:
            from token_reduction.extraction.run import extract

            images = self.images()
            started = time.perf_counter()
            target = self.work / "cache-pixels"
            extract(self.sizes.encoder, images, target, batch_size=32, device=self.device, progress=False)
            self._cache = target
            self.prepare_s["extract_cache"] = time.perf_counter() - started
        return self._cache


def _load(name: str) -> Any:
    return importlib.import_module(f"{__name__}.{name}")


def _run_benchmark(name: str, ctx: Context) -> dict[str, Any]:
    if name == "llava_prefill":
        return run_llava_prefill(ctx)
    return _load(name).run(ctx)


def run_llava_prefill(ctx: Context) -> dict[str, Any]:
    """``benchmarks/llava_prefill.py`` (unchanged) as a suite entry: its results plus a table of its ratios."""
    bench = _load("llava_prefill")
    kwargs: dict[str, Any] = {}
    if ctx.smoke:  # the toy shapes of its own test
        kwargs = dict(
            shapes=bench.Shapes(vision_hidden=32, vision_layers=2, vision_heads=4, vision_intermediate=64, patch=4, image=16,
                                llm_hidden=32, llm_layers=2, llm_heads=4, llm_kv_heads=2, llm_intermediate=64, vocab=151936),
            selector_width=16, repeats=1,
        )  # fmt: skip
    results = bench.run(quick=ctx.quick, device=str(ctx.device), output=ctx.out_dir / "llava_prefill.json", **kwargs)
    rows = [
        [f"{r['keep']:.2f}", r["visual_tokens"], r["llm_tokens"], f"{1000 * r['prefill_s']:.1f}", f"{r['prefill_speedup']:.2f}x",
         f"{r['prefill_peak_mib']:.0f}", "n/a" if r["prefill_memory_ratio"] is None else f"{r['prefill_memory_ratio']:.2f}",
         f"{r['ttft_speedup_vs_unpatched']:.2f}x"]
        for r in results["keeps"]
    ]  # fmt: skip
    overhead = f"{results['selector_overhead_pct']:.1f}% of the tower as built"
    if results["quick"]:
        overhead += f", {results['selector_overhead_full_depth_tower_pct']:.1f}% of the full-depth tower (extrapolated per layer)"
    return {
        "title": "LLaVA-OneVision prefill vs keep ratio",
        "summary": (
            f"{results['device']} ({results['dtype']}), image {results['image_size']} ({results['crops']} crops, "
            f"{results['visual_tokens_unpruned']} visual tokens). {results['note']}."
        ),
        "result": results,
        "tables": [
            {
                "title": "Prefill time and peak memory vs keep 1.0; time to first token vs the unpatched model",
                "columns": ["keep", "visual tokens", "LLM tokens", "prefill ms", "prefill speed-up", "peak prefill MiB",
                            "memory ratio", "TTFT speed-up vs unpatched"],
                "rows": rows,
            }
        ],
        "notes": [
            f"Selector (width {results['selector']['trunk']['width'] or 'dim, the paper width'}, depth {results['selector']['trunk']['depth']}): "
            f"{1000 * results['selector_s']:.0f} ms vs vision tower {1000 * results['vision_tower_s']:.0f} ms = {overhead}.",
            "Measured by `benchmarks/llava_prefill.py` (`run(quick, device)`), which also writes `results/llava_prefill.json`. "
            "Its `torch.utils.benchmark.Timer` keeps the Timer default of ONE thread, so its absolute times are single-threaded "
            "(its ratios compare like with like).",
        ],
        "targets": [],
    }


WARNING_PATTERNS = (
    r".*does not have many workers.*",
    r".*self\.log\(\).*",
    r".*isinstance\(treespec, LeafSpec\).*",
    r".*max_steps.*reached.*",
    r".*GPU available.*",
)


def _quiet() -> dict[str, int]:
    """Keep the console for the suite's own progress lines (call inside ``warnings.catch_warnings``).

    Returns the Lightning loggers' previous levels, for :func:`_restore`.
    """
    import logging

    import lightning.pytorch  # noqa: F401 - it sets its loggers' levels on import: import first, then override

    previous = {}
    for name in list(logging.root.manager.loggerDict) + ["lightning", "lightning.pytorch", "lightning.fabric"]:
        if name.startswith(("lightning", "pytorch_lightning")):
            logger = logging.getLogger(name)
            previous[name] = logger.level
            logger.setLevel(logging.WARNING)
    for pattern in WARNING_PATTERNS:
        warnings.filterwarnings("ignore", message=pattern)
    return previous


def _restore(levels: dict[str, int]) -> None:
    import logging

    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def run_suite(
    mode: str = "quick",
    only: Sequence[str] | None = None,
    device: str = "cpu",
    out: str | Path | None = None,
    work: str | Path | None = None,
    log: Callable[[str], None] = print,
    command: str | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """Run the selected benchmarks, write ``out`` (JSON) and ``RESULTS.md`` beside it, return the results.

    With ``only``, results of the other benchmarks already in ``out`` (same mode and device) are kept.
    ``threads`` sets torch's intra-op threads for the run (default: the mode's, else torch's own).
    """
    from .timing import threads as using_threads

    sizes = sizes_for(mode)
    out = default_out(mode) if out is None else out
    count, reason = choose_threads(threads or sizes.threads, device, mode)
    with using_threads(count):
        return _run_suite(sizes, only, device, Path(out), work, log, command, reason)


def choose_threads(requested: int | None, device: str, mode: str = "quick") -> tuple[int, str]:
    """Intra-op threads for the run and why.

    On a CPU the default is ONE thread: figures are then per core, and they stay steady on a
    machine shared with other jobs, where OpenMP threads that cannot all be scheduled wait for each
    other at every op (on the 2-core development machine a training step took 0.33 s on one thread
    and 2.7-3.3 s on two while other jobs ran). ``--threads N`` measures with N. ``full-cpu``
    measures what a user of this machine gets, so it keeps torch's default.
    """
    default = torch.get_num_threads()
    if requested:
        return requested, "requested with --threads"
    if torch.device(device).type != "cpu":
        return default, "torch default"
    if mode == "full-cpu":
        return default, "torch default: what a user of this machine gets (full-cpu mode)"
    return 1, (
        f"the suite's CPU default (torch would use {default}): per-core figures, steady on a shared machine; "
        "--threads N to change"
    )


def _run_suite(
    sizes: Sizes,
    only: Sequence[str] | None,
    device: str,
    out: Path,
    work: str | Path | None,
    log: Callable[[str], None],
    command: str | None,
    threads_reason: str,
) -> dict[str, Any]:
    from transformers.utils import logging as hf_logging

    from . import report
    from .timing import machine_info

    mode = sizes.mode

    allowed = benchmarks_for(mode)
    names = list(only) if only else list(allowed)
    unknown = [n for n in names if n not in allowed]
    if unknown:
        raise ValueError(f"unknown benchmark(s) {unknown} for --{mode}; choose from {', '.join(allowed)}")
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda requested but CUDA is not available")
    started = time.perf_counter()
    results: dict[str, Any] = {
        "suite": "token_reduction benchmarks",
        "mode": mode,
        "command": command or f"python -m benchmarks --{mode}" + (f" --only {','.join(names)}" if only else "") + f" --device {device}",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(device) | {"threads_reason": threads_reason},
        "sizes": asdict(sizes),
        "benchmarks": {},
    }
    if only:
        previous = report.load(out)
        if previous and previous.get("mode") == mode and previous.get("machine", {}).get("device") == str(torch.device(device)):
            results["benchmarks"] = {k: v for k, v in previous.get("benchmarks", {}).items() if k in allowed}
    keep_work = work is not None
    work_dir = Path(work) if keep_work else Path(tempfile.mkdtemp(prefix="token_reduction_bench_"))
    work_dir.mkdir(parents=True, exist_ok=True)
    ctx = Context(sizes, device, out.parent / "results", work_dir, log)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    levels: dict[str, int] = {}
    try:
        with warnings.catch_warnings():
            levels = _quiet()
            for name in names:
                log(f"== {name} ({mode}, {device})")
                t0 = time.perf_counter()
                torch.manual_seed(0)
                try:
                    entry = _run_benchmark(name, ctx)
                    entry["status"] = "ok"
                except Exception as err:  # noqa: BLE001 - one failing benchmark must not lose the others
                    entry = {"title": name, "status": "error", "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}
                    log(entry["traceback"])
                entry["wall_s"] = time.perf_counter() - t0
                entry["date"] = results["date"]
                entry["torch_threads"] = torch.get_num_threads()
                results["benchmarks"][name] = entry
                log(f"   {name}: {entry['status']} in {entry['wall_s']:.1f} s")
                _finish(results, allowed, started)
                report.write(results, out)  # after every benchmark: a run cut short keeps what it measured
    finally:
        _restore(levels)
        if bars:
            hf_logging.enable_progress_bar()
        if not keep_work:
            shutil.rmtree(work_dir, ignore_errors=True)
    results["prepare_s"] = ctx.prepare_s
    _finish(results, allowed, started)
    report.write(results, out)
    return results


def _finish(results: dict[str, Any], allowed: Sequence[str], started: float) -> None:
    """Wall time, load average, benchmark order and the targets list, as of now."""
    try:
        results["machine"]["load_average_at_end"] = list(os.getloadavg())
    except OSError:
        pass
    results["wall_s"] = time.perf_counter() - started
    results["benchmarks"] = {k: results["benchmarks"][k] for k in allowed if k in results["benchmarks"]}
    results["targets"] = [
        {"benchmark": name, **{k: v for k, v in target.items() if k not in ("profiles", "explanation")}}
        for name, entry in results["benchmarks"].items()
        for target in entry.get("targets", [])
    ]
