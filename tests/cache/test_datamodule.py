"""DataModule: deterministic splits, recorded splits honoured, disjoint equal DDP shares, mid-epoch resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from synthetic import write_synthetic_cache
from token_reduction.cache.datamodule import FeatureCacheDataModule, ShardWindowSampler


def test_dims_come_from_the_manifest(synthetic_cache: Path) -> None:
    data = FeatureCacheDataModule(str(synthetic_cache), batch_size=4)
    assert (data.feature_dim, data.num_tokens, data.grid) == (16, 16, (4, 4))
    batch = next(iter(data.train_dataloader()))
    assert batch["features"].shape == (4, 16, 16) and batch["features"].dtype == torch.float32
    assert batch["text"].shape == (4, 16)


def test_hash_split_is_deterministic_and_disjoint(synthetic_cache: Path) -> None:
    a = FeatureCacheDataModule(str(synthetic_cache), val_fraction=0.2, test_fraction=0.2)
    b = FeatureCacheDataModule(str(synthetic_cache), val_fraction=0.2, test_fraction=0.2)
    assert a.split_indices == b.split_indices
    sets = [set(v) for v in a.split_indices.values()]
    assert sum(map(len, sets)) == 48 and not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert all(sets)


def test_recorded_splits_win(tmp_path: Path) -> None:
    root = write_synthetic_cache(tmp_path / "c", splits=True)
    data = FeatureCacheDataModule(str(root), val_fraction=0.5)
    records = data.cache.samples
    assert all(records[i]["split"] == "test" for i in data.split_indices["test"])
    assert len(data.split_indices["test"]) == 8 and len(data.split_indices["val"]) == 8


@pytest.mark.parametrize("shuffle", [True, False])
def test_sampler_gives_ranks_disjoint_equal_shares(shuffle: bool) -> None:
    shard_ids = [i // 5 for i in range(23)]
    shares = [list(ShardWindowSampler(shard_ids, num_replicas=3, rank=r, shuffle=shuffle, drop_last=True, window=2)) for r in range(3)]
    assert all(len(s) == 7 for s in shares)
    flat = [i for s in shares for i in s]
    assert len(set(flat)) == len(flat) == 21


def test_sampler_reshuffles_per_epoch_but_is_reproducible() -> None:
    sampler = ShardWindowSampler([i // 4 for i in range(16)], shuffle=True, seed=1)
    first = list(sampler)
    sampler.set_epoch(1)
    second = list(sampler)
    sampler.set_epoch(0)
    assert list(sampler) == first and second != first and sorted(second) == list(range(16))


def test_train_loader_resumes_mid_epoch_with_the_batches_not_yet_seen(synthetic_cache: Path) -> None:
    """The loader's state (epoch, batches received) makes a new loader continue the epoch in the same order.

    Worker processes are covered through Lightning in tests/training/test_checkpointing.py.
    """

    def loader() -> DataLoader:
        train = FeatureCacheDataModule(str(synthetic_cache), batch_size=4).train_dataloader()
        train.sampler.set_epoch(1)
        return train

    whole = [batch["index"].tolist() for batch in loader()]
    interrupted = loader()
    batches = iter(interrupted)
    seen = [next(batches)["index"].tolist() for _ in range(3)]
    state = interrupted.state_dict()
    assert state == {"epoch": 1, "batches": 3} and seen == whole[:3]
    resumed = loader()
    resumed.sampler.set_epoch(0)  # the state, not the sampler it finds, decides the epoch
    resumed.load_state_dict(state)
    assert [batch["index"].tolist() for batch in resumed] == whole[3:]
    assert len(resumed) == len(whole) and resumed.state_dict() == {"epoch": 1, "batches": len(whole)}
    assert [batch["index"].tolist() for batch in resumed] == whole  # the next pass is whole again


def test_sampler_start_skips_within_each_rank_share() -> None:
    shard_ids = [i // 5 for i in range(24)]
    for rank in range(2):
        sampler = ShardWindowSampler(shard_ids, num_replicas=2, rank=rank, seed=3)
        share = list(sampler)
        sampler.start = 5
        assert list(sampler) == share[5:] and list(sampler) == share  # skips once, then whole shares again
