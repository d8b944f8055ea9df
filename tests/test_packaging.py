"""The wheel carries what the commands need: built, installed in a fresh virtualenv, run from another folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("setup.py", "setup.cfg", "README.md", "token_reduction", "lightning_configs", "data/default_set.json", "data/README.md")


def run(*command: str | Path, cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHONPATH", "TOKEN_REDUCTION"))}
    done = subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built from a copy of the sources a fresh clone has (no built data, no caches)."""
    source = tmp_path_factory.mktemp("source")
    for name in SOURCES:
        target = source / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, target, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(ROOT / name, target)
    out = tmp_path_factory.mktemp("wheel")
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", out, source, cwd=source)
    (built,) = out.glob("token_reduction-*.whl")
    return built


def test_wheel_carries_configs_and_the_default_set_spec(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {p.relative_to(ROOT).as_posix() for p in (ROOT / "lightning_configs").rglob("*.yaml")}
    assert {f"token_reduction/{c}" for c in configs} <= names
    assert {"token_reduction/data/default_set.json", "token_reduction/py.typed"} <= names
    assert not [n for n in names if n.startswith("token_reduction/data/default/") or n.endswith("build_default_set.py")]


def test_installed_wheel_runs_from_another_folder(wheel: Path, tmp_path: Path) -> None:
    """A virtualenv that sees the installed dependencies but gets token_reduction only from the wheel."""
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    run(python, "-m", "pip", "install", "--no-deps", "--no-index", "-q", wheel, cwd=tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    located = run(python, "-c", (
        "import token_reduction, token_reduction.resources as r, token_reduction.images.default_set as d;"
        "print(token_reduction.__file__); print(r.find_config('demo')); print(r.find_config('trainer/multinode'));"
        "print(d.load_spec()['num_images'])"
    ), cwd=elsewhere).splitlines()
    site = str(venv)
    assert all(line.startswith(site) for line in located[:3]), located  # the wheel's copy, not the checkout
    assert int(located[3]) > 0
    assert "--config" in run(venv / "bin" / "token-reduction", "demo", "--help", cwd=elsewhere)
    printed = run(venv / "bin" / "token-reduction", "fit", "--config", "tiny_cpu", "--print_config", "--data.cache_dir",
                  str(write_cache(tmp_path)), cwd=elsewhere)
    assert "max_epochs: 8" in printed and "width: 64" in printed  # tiny_cpu.yaml, found by name


def write_cache(tmp_path: Path) -> Path:
    from synthetic import write_synthetic_cache

    return write_synthetic_cache(tmp_path / "cache")
