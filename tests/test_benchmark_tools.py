"""The benchmarks' measuring tools: fast random weights, stage clocks, peak memory, KV cache size, the GPU script."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.llava_prefill import Shapes  # noqa: E402
from benchmarks import prefill_families  # noqa: E402

TINY = Shapes(
    vision_hidden=32, vision_layers=2, vision_heads=4, vision_intermediate=64, patch=4, image=32,
    llm_hidden=32, llm_layers=2, llm_heads=4, llm_kv_heads=2, llm_intermediate=64, vocab=151936,
)  # fmt: skip


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl", "internvl", "gemma3"])
def test_fast_random_weights_keep_every_buffer_of_the_normal_build(family: str) -> None:
    """Skipping transformers' initialisation must not skip a buffer (positions, rotary frequencies)."""
    from benchmarks.random_weights import build_random

    shapes = Shapes(**{**TINY.__dict__, "image": 64}) if family == "gemma3" else TINY
    fast = prefill_families.BUILDERS[family][0](shapes, torch.device("cpu"), torch.float32)
    slow = type(fast)(fast.config).eval()  # transformers' own initialisation
    fast_buffers, slow_buffers = dict(fast.named_buffers()), dict(slow.named_buffers())
    assert fast_buffers.keys() == slow_buffers.keys()
    assert all(torch.equal(fast_buffers[name], slow_buffers[name]) for name in fast_buffers)
    parameters = list(fast.parameters())
    assert all(torch.isfinite(p).all() for p in parameters)
    assert 0.01 < torch.cat([p.flatten() for p in parameters]).std() < 0.03  # N(0, 0.02) draws, not memory garbage
    again = build_random(type(fast), fast.config, "cpu", torch.float32)
    assert all(torch.equal(a, b) for a, b in zip(again.parameters(), parameters))  # seeded


def test_stage_clock_splits_a_call_and_counts_each_stage_once() -> None:
    from benchmarks.stages import STAGES, attached, cache_bytes, output_cache
    from token_reduction.models.backbone import TrunkConfig
    from token_reduction.models.selector import TokenSelector
    from token_reduction.vlm import prune_visual_tokens

    model = prefill_families.BUILDERS["qwen2_5_vl"][0](TINY, torch.device("cpu"), torch.float32)
    inputs = prefill_families.qwen_inputs(TINY, torch.device("cpu"), torch.float32, size=(32, 64))
    assert inputs["image_grid_thw"].tolist() == [[1, 8, 16]] and int((inputs["mm_token_type_ids"] == 1).sum()) == 32
    selector = TokenSelector(32, TrunkConfig(width=16, depth=1, heads=4)).eval()
    pruned = prune_visual_tokens(model, selector)
    with torch.inference_mode(), attached(model, selector, "cpu") as clock:
        out = pruned(**inputs, keep=0.5, logits_to_keep=1, use_cache=True)
        seconds = clock.read()
    assert clock.calls == {"vision tower": 1, "selector": 1, "projector": 1, "LLM": 1}
    assert set(seconds) == set(STAGES) and all(value > 0 for value in seconds.values())
    assert "select" not in vars(selector)  # detached: the selector is itself again
    layers = output_cache(out).layers
    expected = sum(layer.keys.numel() * 4 + layer.values.numel() * 4 for layer in layers)
    assert cache_bytes(output_cache(out)) == expected and layers[0].keys.shape[-2] == int(pruned.last.attention_mask.sum())


def test_peak_memory_sees_a_temporary_allocation() -> None:
    from benchmarks.stages import cpu_peak_supported, peak_memory

    if not cpu_peak_supported():
        pytest.skip("no /proc/self/clear_refs here")
    result, peak = peak_memory(lambda: float(torch.ones(64 * 2**20 // 4).sum()), "cpu")  # 64 MiB, freed before return
    assert result == 64 * 2**20 // 4 and peak >= 48 * 2**20


def test_gpu_script_runs_end_to_end_at_toy_size(tmp_path: Path) -> None:
    """``python -m benchmarks.gpu_run --tiny --device cpu``: every model, keep and the training throughput, in one JSON."""
    from benchmarks import gpu_run

    out = tmp_path / "gpu.json"
    assert gpu_run.main(["--tiny", "--device", "cpu", "--rounds", "1", "--out", str(out)]) == 0
    written = json.loads(out.read_text())
    assert set(written["models"]) == set(gpu_run.MODELS) and not written["skipped"]
    for model in written["models"].values():
        for rows in model["images"].values():
            assert {"unpatched", "adaptive", *(f"keep {k:g}" for k in gpu_run.KEEPS)} == set(rows)
            assert rows["keep 0.2"]["llm_tokens"] < rows["keep 1"]["llm_tokens"] == rows["unpatched"]["llm_tokens"]
            assert all(rows[name]["decode_tokens_per_s"] > 0 for name in ("unpatched", "keep 1", "keep 0.2"))
    assert written["selector_training"]["samples_per_s"] > 0 and written["machine"]["device"] == "cpu"
    with pytest.raises(SystemExit):
        gpu_run.main(["--device", "cuda", "--out", str(tmp_path / "no.json")]) if not torch.cuda.is_available() else pytest.skip("CUDA here")
