"""TokenSelector on the Hub, offline: local folders, a hand-made Hub cache with revisions, old exports, the card, errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import huggingface_hub
import pytest
import torch
from huggingface_hub import ModelCard
from safetensors.torch import save

from token_reduction import TokenSelector, TrunkConfig
from token_reduction.errors import UserError
from token_reduction.models.hub import SelectorNotFoundError, is_local

TRUNK = TrunkConfig(width=16, depth=1, heads=2, mlp_ratio=2.0)
REPO = "someone/tiny-selector"
COMMIT_MAIN, COMMIT_V1 = "a" * 40, "b" * 40
INFO = {
    "source": "final weights",
    "feature_source": "openai/clip-vit-large-patch14-336@layer-2",
    "data": {"cache_dir": "/data/cache", "samples": {"train": 90, "val": 10}},
    "metrics": {"val/loss": 0.4321, "val/cosine@25%/learned": 0.81},
}


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test here may reach the network: the Hub client runs in offline mode."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def make_selector(seed: int = 0, **kwargs) -> TokenSelector:
    torch.manual_seed(seed)
    selector = TokenSelector(12, TRUNK, grid=(4, 4), **kwargs)
    torch.nn.init.normal_(selector.head.weight, std=1.0)
    selector.standardize.set_statistics(torch.randn(12), torch.rand(12) + 0.5)  # the normalisation travels too
    return selector.eval()


def hub_cache(cache_dir: Path, repo_id: str, snapshots: dict[str, Path], refs: dict[str, str]) -> Path:
    """Lay folders out as huggingface_hub's cache does: ``models--owner--name/{snapshots/<commit>, refs/<name>}``."""
    repo = cache_dir / f"models--{repo_id.replace('/', '--')}"
    for commit, folder in snapshots.items():
        shutil.copytree(folder, repo / "snapshots" / commit)
    for ref, commit in refs.items():
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return cache_dir


def one_line_error(error: pytest.ExceptionInfo[BaseException]) -> str:
    message = str(error.value)
    assert "\n" not in message, message
    return message


def test_local_round_trip_gives_identical_outputs_and_writes_a_card(tmp_path: Path) -> None:
    selector = make_selector(threshold=0.3, redundancy=0.5)
    folder = selector.save_pretrained(tmp_path / "sel", extra=INFO)
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    loaded = TokenSelector.from_pretrained(folder)
    features = torch.randn(2, 16, 12)
    assert torch.equal(selector(features), loaded(features))
    assert (loaded.threshold, loaded.grid, loaded.redundancy, loaded.info) == (0.3, (4, 4), 0.5, INFO)
    assert not loaded.training
    assert TokenSelector.from_pretrained(str(folder), threshold=0.7).threshold == 0.7  # constructor overrides


def test_hub_repo_id_loads_from_the_cache_offline_at_a_revision(tmp_path: Path) -> None:
    main, v1 = make_selector(seed=1), make_selector(seed=2)
    cache = hub_cache(
        tmp_path / "hub",
        REPO,
        {COMMIT_MAIN: main.save_pretrained(tmp_path / "main", extra=INFO), COMMIT_V1: v1.save_pretrained(tmp_path / "v1")},
        {"main": COMMIT_MAIN, "v1": COMMIT_V1},
    )
    features = torch.randn(1, 16, 12)
    from_main = TokenSelector.from_pretrained(REPO, cache_dir=cache)  # HF_HUB_OFFLINE: served from the cache
    assert torch.equal(from_main(features), main(features)) and from_main.info == INFO
    for revision in ("v1", COMMIT_V1):
        tagged = TokenSelector.from_pretrained(REPO, revision=revision, cache_dir=cache, local_files_only=True)
        assert torch.equal(tagged(features), v1(features))
    with pytest.raises(SelectorNotFoundError, match="not in the local Hugging Face cache") as error:
        TokenSelector.from_pretrained(REPO, revision="v2", cache_dir=cache)
    assert one_line_error(error).startswith(f"hf://{REPO}@v2/")
    with pytest.raises(FileNotFoundError, match="someone/absent"):
        TokenSelector.from_pretrained("someone/absent", cache_dir=cache, local_files_only=True)


def test_vlm_load_selector_accepts_a_hub_repo_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from token_reduction.vlm import load_selector

    selector = make_selector()
    cache = hub_cache(tmp_path / "hub", REPO, {COMMIT_MAIN: selector.save_pretrained(tmp_path / "sel")}, {"main": COMMIT_MAIN})
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    loaded = load_selector(REPO)
    assert isinstance(loaded, TokenSelector) and torch.equal(loaded.standardize.std, selector.standardize.std)
    assert is_local("random") and is_local("./a/b") and is_local(tmp_path / "x") and not is_local(REPO)


def test_folder_exported_by_the_previous_release_still_loads(tmp_path: Path) -> None:
    """Byte for byte what the old ``save_pretrained`` wrote (no README.md; an older config lacks newer fields)."""
    selector = make_selector()
    folder = tmp_path / "old"
    folder.mkdir()
    state = {k: v.detach().contiguous().cpu() for k, v in selector.state_dict().items()}
    (folder / "model.safetensors").write_bytes(save(state, metadata={"format": "pt"}))
    config = {
        "type": "token_reduction.TokenSelector",
        "dim": 12,
        "trunk": {"width": 16, "depth": 1, "heads": 2, "mlp_ratio": 2.0},
        "grid": [4, 4],
        "threshold": 0.4,
        "info": {"source": "final weights", "feature_source": "synthetic@layerNone", "training": {"dim": 12}},
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    loaded = TokenSelector.from_pretrained(folder)
    features = torch.randn(2, 16, 12)
    assert torch.equal(loaded(features), selector(features))
    assert loaded.threshold == 0.4 and loaded.redundancy == 0.0 and loaded.duplicate_similarity is None
    assert loaded.info["feature_source"] == "synthetic@layerNone"
    assert torch.equal(loaded.standardize.mean, selector.standardize.mean)
    assert not (folder / "README.md").exists()  # loading never writes


def test_model_card_parses_and_names_feature_source_grid_data_and_metrics(tmp_path: Path) -> None:
    folder = make_selector().save_pretrained(tmp_path / "sel", extra=INFO)
    card = ModelCard.load(folder / "README.md")
    assert card.data.library_name == "token_reduction" and card.data.license == "apache-2.0"
    assert "token-reduction" in card.data.tags
    text = card.text
    assert "openai/clip-vit-large-patch14-336" in text and "Layer: -2" in text
    assert "4 x 4 grid (16 tokens" in text
    assert "`/data/cache`" in text and "90 train, 10 val" in text
    assert "| `val/loss` | 0.4321 |" in text
    assert 'TokenSelector.from_pretrained("path/to/this/folder")' in text and "prune_visual_tokens(model, selector" in text
    # Re-exporting replaces the card; without metrics it says so instead of inventing numbers.
    make_selector().save_pretrained(folder, extra={"source": "final weights"})
    text = ModelCard.load(folder / "README.md").text
    assert "Not measured" in text and "val/loss" not in text and "unknown encoder" in text


def test_push_to_hub_uploads_weights_config_and_card(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    uploaded = tmp_path / "uploaded"

    class FakeApi:
        def __init__(self, token: str | None = None) -> None:
            self.token = token

        def create_repo(self, repo_id: str, **kwargs) -> object:
            return type("RepoUrl", (), {"repo_id": repo_id})()

        def upload_folder(self, *, repo_id: str, folder_path: Path, revision: str | None = None, **kwargs) -> str:
            shutil.copytree(folder_path, uploaded)
            return f"https://huggingface.co/{repo_id}/commit/{revision or 'main'}"

    monkeypatch.setattr(huggingface_hub.hub_mixin, "HfApi", FakeApi)
    selector = make_selector()
    selector.save_pretrained(tmp_path / "sel", extra=INFO)
    url = selector.push_to_hub(REPO, model_card_kwargs={"repo_id": REPO})
    assert url.endswith("/commit/main")
    assert sorted(p.name for p in uploaded.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert f'from_pretrained("{REPO}")' in (uploaded / "README.md").read_text()
    assert TokenSelector.from_pretrained(uploaded).info == INFO  # the provenance travels with the push


@pytest.mark.parametrize(
    ("write", "expected"),
    [
        (lambda d: None, "has no config.json, so it is not an exported TokenSelector"),
        (lambda d: (d / "config.json").write_text('{"model_type": "clip"}'), "config.json: type: is None"),
        (lambda d: (d / "config.json").write_text("{not json"), "config.json: is not valid JSON"),
        (lambda d: (d / "config.json").write_text('{"type": "token_reduction.TokenSelector", "trunk": {}}'), "config.json: dim: missing"),
        (
            lambda d: (d / "config.json").write_text('{"type": "token_reduction.TokenSelector", "dim": 12, "trunk": {"colour": 1}}'),
            "config.json: trunk: ",
        ),
        (lambda d: (d / "model.safetensors").write_bytes(b"garbage"), "model.safetensors: is not a readable safetensors file"),
        (
            lambda d: (d / "model.safetensors").write_bytes(save({"head.bias": torch.zeros(1)})),
            "model.safetensors: weights do not match config.json",
        ),
    ],
    ids=["empty", "other-type", "bad-json", "no-dim", "bad-trunk", "bad-weights", "other-weights"],
)
def test_a_folder_that_is_not_a_selector_is_a_one_line_user_error(tmp_path: Path, write, expected: str) -> None:
    folder = tmp_path / "sel"
    make_selector().save_pretrained(folder)
    if expected.startswith("has no"):
        shutil.rmtree(folder)
        folder.mkdir()
    write(folder)
    with pytest.raises(UserError, match="TokenSelector|export") as error:
        TokenSelector.from_pretrained(folder)
    message = one_line_error(error)
    assert message.startswith(str(folder)) and expected in message, message


def test_a_missing_folder_is_a_user_error_and_a_file_not_found_error(tmp_path: Path) -> None:
    for missing in (tmp_path / "missing", str(tmp_path / "missing"), "missing", "./runs/selector"):
        with pytest.raises(SelectorNotFoundError, match="no such folder") as error:
            TokenSelector.from_pretrained(missing)
        assert isinstance(error.value, FileNotFoundError) and one_line_error(error).startswith(str(missing))
