import re

import pytest
import torch

from token_reduction.cache.feature_cache import FeatureCache
from token_reduction.evaluation.neutral import (
    DEFAULT_CONFIG_PATH,
    NeutralConfig,
    NeutralReconstructor,
    load_neutral_config,
    load_or_train_neutral,
    random_fraction_mask,
)
from token_reduction.models.backbone import TrunkConfig
from token_reduction.selection import PoolingSelection, selection_from_mask


def test_yaml_config_is_complete_and_every_key_is_commented():
    config = load_neutral_config()
    assert isinstance(config, NeutralConfig) and config.steps >= 100
    lines = DEFAULT_CONFIG_PATH.read_text().splitlines()
    for i, line in enumerate(lines):
        if re.match(r"^\w+:", line):
            assert lines[i - 1].startswith("#"), f"key without a comment: {line}"


def test_config_errors_and_overrides(tmp_path):
    assert load_neutral_config(steps=7, width=None).steps == 7  # None means "not given"
    bad = tmp_path / "bad.yaml"
    bad.write_text(DEFAULT_CONFIG_PATH.read_text() + "\nlearning_rate: 1.0\n")
    with pytest.raises(ValueError, match="unknown key.*learning_rate"):
        load_neutral_config(bad)
    bad.write_text("steps: 3\n")
    with pytest.raises(ValueError, match="missing key"):
        load_neutral_config(bad)
    with pytest.raises(FileNotFoundError, match="--neutral-config"):
        load_neutral_config(tmp_path / "absent.yaml")
    with pytest.raises(ValueError, match="min_keep"):
        load_neutral_config(min_keep=0.0)


def test_merged_tokens_sit_at_representative_positions_and_the_rest_is_masked():
    torch.manual_seed(0)
    model = NeutralReconstructor(4, TrunkConfig(width=8, depth=1, heads=2), (4, 4))
    features = torch.randn(1, 16, 4)
    selection = PoolingSelection().select(features, 4, grid=(4, 4))
    masked, keep = model.masked_input(features, selection)
    representatives = selection.indices[0]
    assert keep[0].nonzero().flatten().tolist() == representatives.tolist()
    assert torch.allclose(masked[0, representatives], selection.tokens[0])  # identity standardiser
    others = ~keep[0]
    assert torch.allclose(masked[0, others], model.masked.embedding.expand(int(others.sum()), -1))


def test_subset_selection_keeps_original_tokens():
    model = NeutralReconstructor(4, TrunkConfig(width=8, depth=1, heads=2), (2, 2))
    features = torch.randn(2, 4, 4)
    keep = torch.tensor([[True, False, True, False], [False, False, False, True]])
    masked, mask = model.masked_input(features, selection_from_mask(features, keep))
    assert torch.equal(mask, keep)
    assert torch.allclose(masked[keep], features[keep])


def test_random_fraction_masks_cover_the_range():
    masks = random_fraction_mask(2000, 20, 0.05, 1.0, torch.Generator().manual_seed(0))
    kept = masks.sum(1)
    assert kept.min() == 1 and kept.max() == 20
    assert abs(kept.float().mean().item() / 20 - 0.525) < 0.02


def test_trained_once_then_reused_and_retrained_when_settings_change(eval_cache, tmp_path, tiny_neutral):
    cache = FeatureCache(eval_cache)
    train = [i for i, s in enumerate(cache.samples) if s["split"] == "train"]
    config = load_neutral_config(**tiny_neutral)
    messages = []
    model, info = load_or_train_neutral(cache, train, config, tmp_path / "neutral", log=messages.append)
    assert not info["reused"] and (tmp_path / "neutral" / "model.safetensors").exists()
    assert torch.isfinite(torch.tensor(info["final_loss"]))
    assert not torch.allclose(model.standardize.std, torch.ones(8)), "statistics come from the cache"
    again, info = load_or_train_neutral(cache, train, config, tmp_path / "neutral", log=messages.append)
    assert info["reused"] and any("reusing" in m for m in messages)
    for (name, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name
    twin, _ = load_or_train_neutral(cache, train, config, tmp_path / "twin")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), twin.state_dict().values())), "seeded"
    changed = load_neutral_config(**(tiny_neutral | {"steps": 3}))
    _, info = load_or_train_neutral(cache, train, changed, tmp_path / "neutral", log=messages.append)
    assert not info["reused"] and any("retraining" in m for m in messages)
