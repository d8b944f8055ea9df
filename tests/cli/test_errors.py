"""Every anticipated mistake of every command ends in ONE line on stderr, ``error: ...``, and exit code 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from token_reduction.cli import main
from token_reduction.errors import TRACEBACK_ENV, CheckpointError

ROOT = Path(__file__).resolve().parents[2]


def fit_args(cache: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--config", "tiny_cpu", "--data.cache_dir", str(cache),
        "--trainer.default_root_dir", str(out), "--trainer.logger.init_args.save_dir", str(out),
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false", *extra,
    ]


def error_line(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run the command and return its single error line (failing if there is more than one line on stderr)."""
    capsys.readouterr()
    assert main(argv) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ")
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """One tiny fit, for the checkpoint faults: (its cache, its last.ckpt)."""
    from synthetic import write_synthetic_cache

    tmp = tmp_path_factory.mktemp("trained")
    cache = write_synthetic_cache(tmp / "cache")
    assert main(["fit", *fit_args(cache, tmp / "run", "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2")]) == 0
    (last,) = (tmp / "run").rglob("last.ckpt")
    return cache, last


def test_parse_errors_name_the_command_and_the_key(capsys: pytest.CaptureFixture[str], synthetic_cache: Path, tmp_path: Path) -> None:
    line = error_line(capsys, ["fit", *fit_args(synthetic_cache, tmp_path, "--trainer.max_epochs", "abc")])
    assert "token-reduction fit: trainer.max_epochs: expected int" in line and "'abc'" in line
    line = error_line(capsys, ["validate", *fit_args(synthetic_cache, tmp_path, "--model.no_such_key", "3")])
    assert "token-reduction validate: unrecognized arguments: --model.no_such_key" in line
    assert "--config: no such file, and not a shipped config" in error_line(capsys, ["test", "--config", "no_such_config"])
    assert "the following arguments are required: --images, --out" in error_line(capsys, ["extract", "--encoder", "pixels:8"])
    assert "--seeds 'x'" in error_line(capsys, ["demo", "--seeds", "x"])
    assert "token-reduction export" in error_line(capsys, ["export", "--out", str(tmp_path)])
    assert "token-reduction chat" in error_line(capsys, ["chat", "--model", "m", "--selector", "random", "--prompt", "p"])


def test_data_errors_name_the_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    missing = tmp_path / "no_cache"
    assert str(missing) in error_line(capsys, ["fit", *fit_args(missing, tmp_path)])
    assert str(missing) in error_line(capsys, ["evaluate", "--cache", str(missing), "--out", str(tmp_path / "eval")])
    assert str(tmp_path / "nope") in error_line(
        capsys, ["extract", "--encoder", "pixels:8@32", "--images", str(tmp_path / "nope"), "--out", str(tmp_path / "c")]
    )
    image = tmp_path / "absent.png"
    assert f"{image}: --image: no such image file" in error_line(
        capsys, ["chat", "--model", "m", "--selector", "random", "--image", str(image), "--prompt", "p"]
    )


def test_checkpoint_errors_name_the_file(capsys: pytest.CaptureFixture[str], trained: tuple[Path, Path], tmp_path: Path) -> None:
    cache, last = trained
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    for stage in ("fit", "validate", "test"):
        line = error_line(capsys, [stage, *fit_args(cache, tmp_path / stage, "--ckpt_path", str(truncated))])
        assert f"{truncated}: ckpt_path: not a readable checkpoint" in line
    line = error_line(capsys, ["fit", *fit_args(cache, tmp_path, "--ckpt_path", str(tmp_path / "absent.ckpt"))])
    assert f"{tmp_path / 'absent.ckpt'}: ckpt_path: no such file" in line
    from synthetic import write_synthetic_cache

    other = write_synthetic_cache(tmp_path / "other", dim=24)
    line = error_line(capsys, ["fit", *fit_args(other, tmp_path / "other_run", "--ckpt_path", str(last))])
    assert str(last) in line and "dim" in line and "24" in line
    assert f"{truncated}" in error_line(capsys, ["export", "--ckpt", str(truncated), "--out", str(tmp_path / "exported")])


def test_traceback_flag_and_variable_show_the_whole_error(
    capsys: pytest.CaptureFixture[str], trained: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache, _ = trained
    argv = ["fit", *fit_args(cache, tmp_path, "--ckpt_path", str(tmp_path / "absent.ckpt"))]
    with pytest.raises(CheckpointError):
        main([*argv, "--traceback"])
    monkeypatch.setenv(TRACEBACK_ENV, "1")
    with pytest.raises(CheckpointError):
        main(argv)
    monkeypatch.setenv(TRACEBACK_ENV, "0")
    assert main(argv) == 2


def test_config_by_name_from_another_folder(capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from token_reduction.resources import config_names, find_config

    monkeypatch.chdir(tmp_path)
    assert {"demo", "tiny_cpu", "trainer/multinode", "evaluate/neutral_reconstructor"} <= set(config_names())
    assert find_config("demo") == find_config("demo.yaml") == find_config("lightning_configs/demo.yaml")
    assert find_config("demo").read_text() == (ROOT / "lightning_configs" / "demo.yaml").read_text()
    assert main(["--help"]) == 0 and "tiny_cpu" in capsys.readouterr().out
