"""`token-reduction demo` end to end on a tiny image set (one epoch): every promised file appears."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from token_reduction.cli import main
from token_reduction.demo_report import FRACTIONS
from token_reduction.models import TokenSelector


def test_demo_writes_metrics_curves_overlay_and_selector(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--num-images", "30", "--max-epochs", "1"]) == 0
    printed = capsys.readouterr().out
    assert "| kept | cosine learned" in printed and "text recall" in printed

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["fractions"] == list(FRACTIONS)
    for method in ("learned", "random"):
        cosine = metrics["curves"][method]["cosine"]
        assert len(cosine) == len(FRACTIONS) and all(-1.0 <= c <= 1.0 for c in cosine)
    recall = metrics["curves"]["learned"]["text_recall"]
    assert recall[-1] == pytest.approx(1.0)  # keeping everything keeps every text patch
    assert isinstance(metrics["learned_beats_random"], bool)
    assert (out / "curves.png").stat().st_size > 0 and (out / "overlay.png").stat().st_size > 0
    assert TokenSelector.from_pretrained(metrics["selector"]).dim == 768
    assert list(Path(metrics["tensorboard"]).rglob("events.out.tfevents.*"))


def test_demo_rerun_resumes_instead_of_starting_over(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--num-images", "30", "--max-epochs", "1"]
    assert main(args) == 0
    first = json.loads((out / "metrics.json").read_text())
    assert main(args) == 0  # cache complete, training finished: both are reused
    second = json.loads((out / "metrics.json").read_text())
    assert first["curves"] == second["curves"]
    assert len(list((out / "pixels-16" / "cache").glob("shard-*.safetensors"))) >= 1
