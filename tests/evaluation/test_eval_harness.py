import json

import pytest

from token_reduction.evaluation import evaluate
from token_reduction.models.backbone import TrunkConfig
from token_reduction.models.selector import TokenSelector
from token_reduction.selection import MissingExtraError

from evaluation.eval_synthetic import TINY_NEUTRAL, write_eval_cache

METHODS = ["learned", "random", "pooling", "norm", "tome"]


@pytest.fixture(scope="module")
def first_run(eval_cache, tiny_selector, tmp_path_factory):
    out = tmp_path_factory.mktemp("run1")
    overrides = dict(TINY_NEUTRAL)
    results = evaluate(eval_cache, METHODS, [0.25, 0.5, 4], selector=tiny_selector, out_dir=out, batch_size=3, neutral_overrides=overrides)
    return out, results, overrides


def test_writes_every_report(first_run):
    out, results, _ = first_run
    assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(results))
    for name in ("plot_recon_cosine", "plot_pooled_cosine", "plot_text_recall", "plot_time_ms", "adaptivity"):
        assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0, "scalars": 0}).Reload()
    tags = events.Tags()
    assert {"recon_cosine/tome", "text_recall/learned", "recon_cosine/learned_adaptive", "adaptivity_mean_kept/document"} <= set(tags["scalars"])
    assert [e.step for e in events.Scalars("pooled_cosine/random")] == [25, 50, 25]  # 4 of 16 tokens is 25 %
    assert {"plots/plot_recon_cosine", "plots/adaptivity"} <= set(tags["images"])
    assert "adaptivity/photo" in tags["histograms"]
    assert not list(out.glob(".*.tmp")), "atomic writes leave no temp files"
    markdown = (out / "results.md").read_text()
    assert "| method | keep |" in markdown and "| tome | 0.25 |" in markdown and "| learned | adaptive |" in markdown
    assert "| document |" in markdown and "| photo |" in markdown


def test_rows_cover_every_method_and_budget_with_exact_budgets(first_run):
    _, results, _ = first_run
    assert results["split"] == "test" and results["num_images"] == 8
    rows = {(row["method"], row["label"]): row for row in results["rows"]}
    assert set(rows) == {(m, k) for m in METHODS for k in ("0.25", "0.5", "4")} | {("learned", "adaptive")}
    for (method, label), row in rows.items():
        metrics = row["metrics"]
        if label != "adaptive":
            assert metrics["kept_fraction"] == pytest.approx(row["keep_fraction"]), (method, label)
        assert -1.0 <= metrics["recon_cosine"] <= 1.0 and metrics["recon_mse"] >= 0 and metrics["time_ms"] > 0
        assert 0.0 <= metrics["text_recall"] <= 1.0
        assert row["images"]["text_recall"] == 4, "recall is computed over the test documents only"
        assert row["images"]["recon_cosine"] == 8
    assert rows[("tome", "0.25")]["metrics"]["pooled_cosine"] == pytest.approx(1.0, abs=1e-4)
    assert rows[("pooling", "0.25")]["metrics"]["pooled_cosine"] == pytest.approx(1.0, abs=1e-4)


def test_adaptivity_report_per_kind(first_run):
    _, results, _ = first_run
    kinds = results["adaptivity"]["kinds"]
    assert set(kinds) == {"all", "document", "photo"}
    assert kinds["document"]["images"] == kinds["photo"]["images"] == 4 and kinds["all"]["images"] == 8
    for stats in kinds.values():
        assert sum(stats["histogram"]["counts"]) == stats["images"]
        assert 1 <= stats["min"] <= stats["mean"] <= stats["max"] <= 16 and stats["std"] >= 0
    adaptive = next(r for r in results["rows"] if r["label"] == "adaptive")
    assert adaptive["metrics"]["kept_fraction"] == pytest.approx(kinds["all"]["mean_fraction"])


def test_second_run_reuses_the_neutral_reconstructor(first_run, eval_cache, tmp_path):
    _, results, overrides = first_run
    assert not results["neutral"]["reused"]
    assert results["neutral"]["path"] == str(eval_cache / "neutral_reconstructor")
    again = evaluate(eval_cache, ["random", "norm"], [0.5], out_dir=tmp_path, neutral_overrides=overrides)
    assert again["neutral"]["reused"]
    first = {(r["method"], r["label"]): r["metrics"] for r in results["rows"]}
    for row in again["rows"]:  # same images, seed and reconstructor: same numbers
        for metric in ("recon_cosine", "pooled_cosine", "text_recall"):
            assert row["metrics"][metric] == pytest.approx(first[(row["method"], "0.5")][metric])


def test_empty_split_falls_back_to_all_samples_with_a_warning(tmp_path, tiny_neutral):
    cache = write_eval_cache(tmp_path / "nosplit", num_images=6, splits=False)
    with pytest.warns(UserWarning, match="no samples in split 'test'"):
        results = evaluate(cache, ["norm"], [0.5], out_dir=tmp_path / "out", neutral_overrides=tiny_neutral | {"steps": 2}, max_samples=4)
    assert results["split"] == "all" and results["num_images"] == 4
    assert results["adaptivity"] is None and not (tmp_path / "out" / "adaptivity.png").exists()


def test_attention_methods_run_when_the_cache_has_attention(tmp_path, tiny_neutral):
    cache = write_eval_cache(tmp_path / "att", attention=True, num_images=6)
    results = evaluate(cache, ["attention", "visionzip"], [0.5], out_dir=tmp_path / "out", neutral_overrides=tiny_neutral | {"steps": 2})
    assert [row["method"] for row in results["rows"]] == ["attention", "visionzip"]


def test_errors_come_before_any_work(eval_cache, tiny_selector, tmp_path):
    with pytest.raises(MissingExtraError, match="--store-attention"):
        evaluate(eval_cache, ["visionzip"], [0.5], out_dir=tmp_path)
    with pytest.raises(ValueError, match="needs a trained selector"):
        evaluate(eval_cache, ["learned"], [0.5], out_dir=tmp_path)
    with pytest.raises(ValueError, match="known methods"):
        evaluate(eval_cache, ["magic"], [0.5], out_dir=tmp_path)
    with pytest.raises(ValueError, match="fraction"):
        evaluate(eval_cache, ["norm"], [1.5], out_dir=tmp_path)
    wide = TokenSelector(12, TrunkConfig(width=8, depth=1, heads=2)).save_pretrained(tmp_path / "wide")
    with pytest.raises(ValueError, match="dim 12 .* dim 8"):
        evaluate(eval_cache, ["learned"], [0.5], selector=wide, out_dir=tmp_path)
    assert not (tmp_path / "results.json").exists()
