"""Smoke test of the benchmark suite: it runs end to end at toy sizes and writes its reports.

Only the files and their keys are checked, never a timing or a ratio (machines are noisy).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from benchmarks import run_suite

    out = tmp_path_factory.mktemp("bench") / "results.json"
    results = run_suite("smoke", device="cpu", out=out, work=out.parent / "work", log=lambda message: None)
    return results, out


def positive_number(value) -> bool:
    return isinstance(value, (int, float)) and value > 0


def test_suite_writes_json_and_markdown_with_every_benchmark(suite) -> None:
    from benchmarks import BENCHMARKS, FULL_CPU_BENCHMARKS

    _, out = suite
    written = json.loads(out.read_text())
    assert written["mode"] == "smoke"
    assert set(written["benchmarks"]) == set(BENCHMARKS) | set(FULL_CPU_BENCHMARKS)  # smoke runs every mode's benchmarks
    for name, entry in written["benchmarks"].items():
        assert entry["status"] == "ok", f"{name}: {entry.get('error')}"
        assert positive_number(entry["wall_s"])
        assert entry["tables"] and all(table["rows"] for table in entry["tables"])
    machine = written["machine"]
    assert machine["cpu"] and machine["torch"] and machine["device"] == "cpu" and positive_number(machine["cores"])
    assert written["date"]
    for target in written["targets"]:
        assert {"benchmark", "name", "target", "value", "value_text", "met"} <= set(target)
        assert isinstance(target["met"], bool)
    markdown = (out.parent / "RESULTS.md").read_text()
    assert markdown.startswith("# Benchmark results (smoke mode)")
    assert "## Targets" in markdown
    for entry in written["benchmarks"].values():
        assert entry["title"] in markdown
    assert not list(out.parent.glob(".*.tmp"))  # atomic writes leave no temp files


def test_each_benchmark_reports_positive_times(suite) -> None:
    results, out = suite
    b = results["benchmarks"]
    for m in b["selector_overhead"]["measurements"]:
        assert positive_number(m["tower_ms"])
        assert all(positive_number(s["ms"]) and positive_number(s["overhead_pct"]) for s in m["selectors"].values())
    assert set(b["selector_overhead"]["quality"]) == {key for key in b["selector_overhead"]["variants"]}
    assert all(positive_number(t) for t in b["training_loop"]["bare_loop_s"] + b["training_loop"]["lightning_loop_s"])
    assert positive_number(b["training_loop"]["tokens_per_s"]["lightning"])
    assert all(positive_number(v["samples_per_s"]) for v in b["data_path"]["loaders"].values())
    assert positive_number(b["data_path"]["train_step_samples_per_s"])
    assert positive_number(b["data_path"]["cache"]["bytes_per_image"])
    assert all(positive_number(e["extract_images_per_s"]) for e in b["extraction"]["encoders"].values())
    assert positive_number(b["llava_prefill"]["result"]["selector_s"])
    assert all(positive_number(t) for series in b["scaling"]["seconds"].values() for t in series)
    plot = Path(b["scaling"]["plot"])
    assert plot.is_file() and plot.read_bytes().startswith(b"\x89PNG")
    assert (out.parent / "results" / "llava_prefill.json").is_file()


def test_only_keeps_the_other_benchmarks(suite, tmp_path: Path) -> None:
    from benchmarks import run_suite

    results, out = suite
    copy = tmp_path / "results.json"
    copy.write_text(out.read_text())
    rerun = run_suite("smoke", only=["extraction"], device="cpu", out=copy, log=lambda message: None)
    assert set(rerun["benchmarks"]) == set(results["benchmarks"])
    assert json.loads(copy.read_text())["benchmarks"]["extraction"]["status"] == "ok"


def test_full_size_vlm_calls_are_split_into_stages(suite) -> None:
    """Every case times the unpatched model and each keep; the tower runs once per call and pruning shortens the LLM's input."""
    results, _ = suite
    entry = results["benchmarks"]["vlm_ttft"]
    assert [case["family"] for case in entry["cases"]] == ["llava_onevision", "llava_onevision", "qwen2_5_vl", "qwen3_vl", "gemma3"]
    for case in entry["cases"]:
        configs = case["configs"]
        assert {"unpatched", "keep 1", "keep 0.5", "keep 0.25", "keep 0.1", "adaptive"} <= set(configs)
        for name, config in configs.items():
            assert positive_number(config["ttft_s"]) and config["stage_calls"]["vision tower"] == 1, name
            assert (config["stage_calls"]["selector"] == 0) == (name == "unpatched"), name
            assert all(seconds >= 0 for seconds in config["stages_s"].values())
            assert config["kv_cache_mib"] > 0
        assert configs["keep 1"]["llm_tokens"] == configs["unpatched"]["llm_tokens"]
        dropped = [configs["unpatched"]["llm_tokens"] - configs[f"keep {k}"]["llm_tokens"] for k in ("1", "0.5", "0.25", "0.1")]
        assert dropped == sorted(dropped) and dropped[-1] > 0
        assert configs["keep 0.1"]["kv_cache_mib"] < configs["keep 1"]["kv_cache_mib"]
    assert "keep 1, paper-width selector" in entry["cases"][0]["configs"]
    assert {t["name"].split(" (")[0] for t in entry["targets"]} >= {"TTFT at keep 1 vs unpatched", "LLM prefill at keep 0.1 vs keep 1.0"}


def test_batched_generate_counts_every_new_token_and_the_memory_per_request(suite) -> None:
    results, _ = suite
    entry = results["benchmarks"]["batched_generate"]
    for name, run in entry["runs"].items():
        assert run["new_tokens"] == 32 and positive_number(run["tokens_per_s"]), name
        assert positive_number(run["kv_cache_bytes"])
    full, pruned = entry["runs"]["keep 1, batch 8"], entry["runs"]["keep 0.25, batch 8"]
    assert pruned["llm_tokens_per_row"] < full["llm_tokens_per_row"] and pruned["kv_cache_bytes"] < full["kv_cache_bytes"]
    assert set(entry["fits"]) == {"keep 1", "keep 0.25"}


def test_selector_cost_times_every_trunk_and_reads_the_quality_file(suite) -> None:
    from benchmarks.selector_cost import VARIANTS

    results, _ = suite
    entry = results["benchmarks"]["selector_cost"]
    assert {row["variant"] for row in entry["rows"].values()} == set(VARIANTS)
    for row in entry["rows"].values():
        assert all(positive_number(pct) for pct in row["pct_of_tower"].values())
    assert entry["shipped"] in VARIANTS
    for measured in entry["measurements"]:
        assert {f"paper/{dtype}" for dtype in ("float32", "bfloat16", "float16")} <= set(measured["selectors"])


def test_results_md_keeps_each_modes_section(suite, tmp_path: Path) -> None:
    """A ``--full-cpu`` run beside a ``--quick`` one: RESULTS.md shows both."""
    from benchmarks import report

    results, out = suite
    quick = json.loads(out.read_text()) | {"mode": "quick"}
    full_cpu = quick | {"mode": "full-cpu"}
    report.write(quick, tmp_path / "results.json")
    report.write(full_cpu, tmp_path / "results-full-cpu.json")
    markdown = (tmp_path / "RESULTS.md").read_text()
    assert markdown.index("(quick mode)") < markdown.index("(full-cpu mode)")
    report.write(quick, tmp_path / "results.json")  # the quick run again: the full-cpu section stays
    assert "(full-cpu mode)" in (tmp_path / "RESULTS.md").read_text()


def test_rerender_rebuilds_tables_from_the_stored_samples(suite, tmp_path: Path) -> None:
    """``python -m benchmarks.rerender``: the same tables from the run's own samples, nothing measured again."""
    from benchmarks.rerender import main

    results, out = suite
    copy = tmp_path / "results.json"
    copy.write_text(out.read_text())
    assert main([str(copy)]) == 0
    again = json.loads(copy.read_text())["benchmarks"]
    for name in ("vlm_ttft", "selector_cost"):
        assert again[name]["tables"][0]["rows"] and "re-" in again[name]["notes"][-1]
    assert again["vlm_ttft"]["cases"] == json.loads(json.dumps(results["benchmarks"]["vlm_ttft"]["cases"]))


def test_the_shipped_selector_trunk_is_the_one_the_measurements_pick() -> None:
    """The CLIP and SigLIP configs carry one trunk, and it is what ``--full-cpu``'s selector_cost recommended."""
    from benchmarks.trunks import default_trunk, shipped_key

    assert default_trunk("clip_vit_l14_336") == default_trunk("siglip_so400m_384")
    recorded = json.loads((REPO / "benchmarks" / "results-full-cpu.json").read_text())["benchmarks"]["selector_cost"]
    assert recorded["recommended"] == shipped_key() == recorded["shipped"]
