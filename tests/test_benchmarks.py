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
    from benchmarks import BENCHMARKS

    _, out = suite
    written = json.loads(out.read_text())
    assert written["mode"] == "smoke"
    assert set(written["benchmarks"]) == set(BENCHMARKS)
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
