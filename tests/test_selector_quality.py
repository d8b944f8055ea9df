"""``python -m benchmarks.selector_quality`` at toy size: two tiny trunks, one short epoch, no OCR.

Checks the JSON's shape, that every quality figure is a share in [0, 1], that parameter counts
grow with width, the markdown tables, and that a rerun skips the variants already measured. Never a
timing (machines are noisy).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TOY = ["--num-images", "30", "--max-epochs", "1", "--neutral-steps", "5", "--ocr-pages", "0", "--baselines", "random,contrast",
       "--variants", "wide=32/1/4/2.0,narrow=16/1/2/2.0"]  # fmt: skip


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path, Path]:
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from benchmarks.selector_quality import main

    root = tmp_path_factory.mktemp("quality")
    out, work = root / "selector_quality.json", root / "work"
    results = main(["--out", str(out), "--work", str(work), *TOY], log=lambda message: None)
    return results, out, work


def shares(node) -> list[float]:
    """Every number under a metrics subtree (all are shares of tokens, words or decisions)."""
    if isinstance(node, dict):
        return [v for value in node.values() for v in shares(value)]
    if isinstance(node, list):
        return [v for value in node for v in shares(value)]
    return [node] if isinstance(node, (int, float)) and not isinstance(node, bool) else []


def test_every_variant_has_the_demo_measures_in_0_1(sweep) -> None:
    results, out, _ = sweep
    assert json.loads(out.read_text())["variants"].keys() == {"wide", "narrow"}
    for variant in results["variants"].values():
        metrics = variant["metrics"]
        assert set(metrics["text_recall"]) == {"0.2", "0.3", "0.5"}
        assert all(metrics["text_recall"][k] is not None for k in ("0.2", "0.3", "0.5"))
        assert metrics["worst_page_group_30"]["group"].startswith("pages/")
        assert metrics["adaptive"]["kept_fraction_photo"] is not None
        assert metrics["demo_checks"] and all(isinstance(c["holds"], bool) for c in metrics["demo_checks"])
        values = shares({k: v for k, v in metrics.items() if k != "demo_checks"}) + shares(variant["reduced_precision"])
        assert values and all(0.0 <= v <= 1.0 for v in values)
        precision = variant["reduced_precision"]
        for dtype in ("bfloat16", "float16"):  # a figure, or the error the CPU gave for that dtype
            assert "error" in precision[dtype] or 0.0 <= precision[dtype]["decisions_identical_30"] <= 1.0
        # the fp32 path through run_selector reproduces the harness's figure
        assert precision["float32"]["text_recall"]["0.3"] == pytest.approx(metrics["text_recall"]["0.3"], abs=1e-3)
        assert variant["flops_per_token"]["linear"] > 0 and variant["selectors"]["0"]
    assert set(results["baselines"]["methods"]) == {"random", "contrast"}


def test_parameters_and_flops_grow_with_width(sweep) -> None:
    results, _, _ = sweep
    ordered = sorted(results["variants"].values(), key=lambda v: v["width"])
    assert [v["name"] for v in ordered] == ["narrow", "wide"]
    assert ordered[0]["params"] < ordered[1]["params"]
    assert ordered[0]["flops_per_token"]["total"] < ordered[1]["flops_per_token"]["total"]


def test_markdown_tables_and_provenance(sweep) -> None:
    results, _, _ = sweep
    text = results["markdown"]
    assert "| variant | w/d/heads/mlp | params |" in text and "| narrow | 16/1/2/2 |" in text and "| wide | 32/1/4/2 |" in text
    assert "bf16 agreement @30%" in text and "| contrast |" in text
    assert results["command"].startswith("python -m benchmarks.selector_quality") and results["date"]
    assert results["machine"]["torch_threads"] >= 1 and "head" in results["git"]


def test_rerun_skips_measured_variants(sweep) -> None:
    from benchmarks.selector_quality import main

    results, out, work = sweep
    messages: list[str] = []
    again = main(["--out", str(out), "--work", str(work), *TOY], log=messages.append)
    assert sum("skipped" in m for m in messages) == 2
    assert again["variants"] == results["variants"]
    assert [run["measured"] for run in again["invocations"]] == [["narrow", "wide"], []]
