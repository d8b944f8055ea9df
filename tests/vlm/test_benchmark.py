"""``benchmarks/llava_prefill.py`` end to end, on tiny shapes."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "llava_prefill.py"


def load_benchmark():
    spec = importlib.util.spec_from_file_location("llava_prefill", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


def test_benchmark_measures_every_keep_ratio_and_writes_json(tmp_path):
    bench = load_benchmark()
    tiny = bench.Shapes(
        vision_hidden=32, vision_layers=2, vision_heads=4, vision_intermediate=64, patch=4, image=16,
        llm_hidden=32, llm_layers=2, llm_heads=4, llm_kv_heads=2, llm_intermediate=64, vocab=151936,
    )  # fmt: skip
    out = tmp_path / "prefill.json"
    results = bench.run(quick=True, device="cpu", shapes=tiny, selector_width=16, anyres=True, repeats=1, output=out)
    assert json.loads(out.read_text())["keeps"] == results["keeps"]
    assert [row["keep"] for row in results["keeps"]] == list(bench.KEEPS)
    tokens = [row["visual_tokens"] for row in results["keeps"]]
    assert tokens[0] == results["visual_tokens_unpruned"] == 16 + 8 * 8 + 8  # base + 2x2 tiles + row newlines
    assert tokens == sorted(tokens, reverse=True) and tokens[-1] < tokens[0]
    assert results["keeps"][0]["prefill_speedup"] == 1.0 and results["selector_overhead_pct"] > 0
    assert all(row["prefill_peak_mib"] > 0 for row in results["keeps"])
    assert "| keep |" in bench.markdown(results)
