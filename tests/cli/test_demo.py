"""`token-reduction demo` end to end on a tiny image set (one epoch, two seeds): every promised file and check appears."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from token_reduction.cli import main
from token_reduction.cli.demo import DEMO_BASELINES
from token_reduction.models import TokenSelector

ARGS = ["--num-images", "30", "--max-epochs", "1", "--seeds", "0,1", "--ocr", "none", "--neutral-steps", "5"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("demo") / "out"
    import contextlib
    import io

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["demo", "--out", str(out), *ARGS]) == 0
    return out, printed.getvalue()


def test_demo_compares_learned_with_every_baseline_over_seeds(demo: tuple[Path, str]) -> None:
    out, printed = demo
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["seeds"] == [0, 1] and metrics["split"] == "test"
    assert set(metrics["methods"]) == {"learned", *DEMO_BASELINES}
    learned = metrics["table"]["learned"]["0.5"]["pages"]["text_recall"]
    assert learned["n"] == 2 and 0.0 <= learned["mean"] <= 1.0  # one value per training seed
    assert metrics["table"]["contrast"]["0.5"]["pages"]["text_recall"]["n"] == 1  # deterministic: scored once
    assert metrics["table"]["random"]["0.5"]["pages"]["text_recall"]["n"] == 2
    assert "-1.0" in metrics["table"]["learned"]  # adaptive mode
    for check in metrics["checks"]:
        assert isinstance(check["holds"], bool) and check["numbers"]
        assert ("yes" if check["holds"] else "NO ") + "  " + check["claim"] in printed  # the verdict is what was computed
    assert "text-patch recall" in printed and "| learned | 50% |" in printed
    assert (out / "curves.png").stat().st_size > 0
    for path in metrics["selectors"].values():
        assert TokenSelector.from_pretrained(path).dim == 768
    assert list(Path(metrics["tensorboard"]).rglob("events.out.tfevents.*"))
    assert metrics["elapsed_s"] > 0 and "demo finished in" in printed


def test_demo_rerun_resumes_instead_of_starting_over(demo: tuple[Path, str]) -> None:
    out, _ = demo
    first = json.loads((out / "metrics.json").read_text())
    stamps = {p: p.stat().st_mtime_ns for p in (out / "pixels-16").rglob("model.safetensors")}
    assert main(["demo", "--out", str(out), *ARGS]) == 0  # cache, training and evaluations are all reused
    second = json.loads((out / "metrics.json").read_text())
    assert first["table"] == second["table"]
    assert stamps and stamps == {p: p.stat().st_mtime_ns for p in (out / "pixels-16").rglob("model.safetensors")}
