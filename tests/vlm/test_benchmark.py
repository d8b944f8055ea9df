"""``benchmarks/llava_prefill.py`` end to end, on tiny shapes."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

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


def test_benchmark_measures_another_family_the_same_way(tmp_path, capsys):
    """``--family qwen2_5_vl``: its wrapper's merged tokens, true positions fixed across keeps, its own json."""
    bench = load_benchmark()
    tiny = bench.Shapes(
        vision_hidden=32, vision_layers=2, vision_heads=4, vision_intermediate=64, patch=4, image=32,
        llm_hidden=32, llm_layers=2, llm_heads=4, llm_kv_heads=2, llm_intermediate=64, vocab=151936,
    )  # fmt: skip
    results = bench.run(quick=True, device="cpu", family="qwen2_5_vl", shapes=tiny, selector_width=16, repeats=1, output=tmp_path / "q.json")
    assert results["family"] == "qwen2_5_vl" and results["selector"]["dim"] == 32  # the LLM width: merged tokens
    tokens = [row["visual_tokens"] for row in results["keeps"]]
    assert tokens == [16, 8, 4, 2]  # 8x8 patches merged 2x2, then kept per keep
    llm = [row["llm_tokens"] for row in results["keeps"]]
    assert [llm[0] - n for n in llm] == [16 - n for n in tokens]  # the prompt shrinks by exactly the dropped tokens
    assert results["keeps"][0]["prefill_speedup"] == 1.0 and all(row["prefill_peak_mib"] > 0 for row in results["keeps"])
    assert "Qwen2.5-VL prefill" in bench.markdown(results)
    summary = bench.summary([results, results])
    assert summary.count("| Qwen2.5-VL | 16 |") == 2 and "keep 0.1" in summary
    with pytest.raises(ValueError, match="--family must be one of"):
        bench.Shapes.of("no_such_family")
    with pytest.raises(SystemExit):
        bench.main(["--family", "internvl", "gemma3", "--output", str(tmp_path / "one.json")])
    assert "one file" in capsys.readouterr().err
