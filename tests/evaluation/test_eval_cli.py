import argparse
import json

import pytest

from evaluation.eval_synthetic import TINY_NEUTRAL
from token_reduction.cli.evaluate import add_evaluate_arguments, default_methods, evaluate_main, parse_keep, parse_methods
from token_reduction.models.backbone import TrunkConfig
from token_reduction.models.selector import TokenSelector


def neutral_flags(tmp_path):
    """A tiny neutral config file (the CLI takes settings from YAML, not from flags)."""
    path = tmp_path / "neutral.yaml"
    settings = {"mlp_ratio": 2.0, "lr": 1e-3, "weight_decay": 0.0, "min_keep": 0.05, "max_keep": 1.0, "seed": 0} | TINY_NEUTRAL
    path.write_text("\n".join(f"{k}: {v}" for k, v in settings.items()))
    return ["--neutral-config", str(path), "--neutral-steps", "2", "--neutral", str(tmp_path / "neutral")]


def test_parsers():
    assert parse_keep("0.1, 0.25,64,1e-1") == [0.1, 0.25, 64, 0.1]
    assert isinstance(parse_keep("1")[0], int) and isinstance(parse_keep("1.0")[0], float)
    for bad in ("0", "1.5", "x", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_keep(bad)
    assert parse_methods("Learned, tome,") == ["learned", "tome"]
    baselines = ["random", "grid", "pooling", "norm", "contrast", "tome", "diversity"]
    assert default_methods(None, {"text": [4]}) == baselines
    assert default_methods("sel", {"attention": [4]}) == ["learned", *baselines, "attention", "visionzip"]


def test_standalone_parser_has_the_documented_options():
    args = add_evaluate_arguments(argparse.ArgumentParser()).parse_args(["--cache", "C", "--out", "O"])
    assert args.keep == [0.1, 0.2, 0.3, 0.5, 0.75] and args.split == "test" and args.seed == 0 and args.methods is None
    assert args.ocr == "auto" and args.ocr_keep == [0.2, 0.3, 0.5]


def test_runs_end_to_end(eval_cache, tiny_selector, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["--cache", str(eval_cache), "--selector", str(tiny_selector), "--methods", "learned,random,tome", "--keep", "0.5", "--out", str(out), "--seed", "3"]
    assert evaluate_main(argv + neutral_flags(tmp_path)) == 0
    results = json.loads((out / "results.json").read_text())
    assert [(r["method"], r["label"]) for r in results["rows"]] == [("learned", "0.5"), ("learned", "adaptive"), ("random", "0.5"), ("tome", "0.5")]
    assert results["seed"] == 3 and results["neutral"]["path"] == str(tmp_path / "neutral")
    assert "results.md" in capsys.readouterr().out


@pytest.mark.parametrize(
    "methods,extra,message",
    [
        ("random,bogus", [], "unknown selection method 'bogus'; known methods: learned, random, pooling, norm, attention, tome, visionzip"),
        ("learned,random", [], "--selector"),
        ("fastv", [], "inside the language model"),
        ("visionzip", [], "--store-attention"),
    ],
)
def test_user_errors_exit_2_with_a_clear_message(eval_cache, tmp_path, capsys, methods, extra, message):
    argv = ["--cache", str(eval_cache), "--methods", methods, "--out", str(tmp_path / "out"), *extra]
    assert evaluate_main(argv) == 2
    assert message in capsys.readouterr().err


def test_selector_of_another_dim_names_both_dims(eval_cache, tmp_path, capsys):
    wide = TokenSelector(12, TrunkConfig(width=8, depth=1, heads=2)).save_pretrained(tmp_path / "wide")
    argv = ["--cache", str(eval_cache), "--selector", str(wide), "--methods", "learned", "--out", str(tmp_path / "out")]
    assert evaluate_main(argv) == 2
    err = capsys.readouterr().err
    assert "dim 12" in err and "dim 8" in err


def test_missing_cache_is_a_clear_error(tmp_path, capsys):
    assert evaluate_main(["--cache", str(tmp_path / "nope"), "--out", str(tmp_path / "out")]) == 2
    assert "no such folder" in capsys.readouterr().err
