"""DataModule that streams a feature cache to one or many (DDP) processes.

Samples are read row by row from memory-mapped safetensors shards, so the cache never has to fit
in RAM. The sampler is distributed-aware itself (each rank gets a disjoint, equal share) and
shuffles shard-windows, so reads stay local even on large caches.
"""

from __future__ import annotations

import hashlib
from typing import Any, Iterator, Sequence

import lightning as L
from lightning.pytorch.utilities import rank_zero_warn
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from token_reduction.cache.augment import colour_jitter
from token_reduction.cache.feature_cache import FeatureCache
from token_reduction.cache.manifest import CacheError

SPLITS = ("train", "val", "test")


class CachedFeatureDataset(Dataset):
    """Map-style view of some cache samples: ``{"features": (N, D) float32, "index": int, extras...}``."""

    def __init__(self, cache: FeatureCache, indices: Sequence[int], extras: Sequence[str] = ()) -> None:
        self.cache = cache
        self.indices = list(indices)
        self.names = ("features", *extras)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> dict[str, Any]:
        index = self.indices[position]
        item = {name: value.float() for name, value in self.cache.read(index, self.names).items()}
        item["index"] = index
        return item


class ShardWindowSampler(DistributedSampler):
    """Disjoint, equal per-rank shares with a shard-local shuffle.

    Subclassing :class:`DistributedSampler` tells Lightning the data is already split per rank
    (it would otherwise wrap it again). Each epoch the shard order is permuted, consecutive windows
    of ``window`` shards are pooled and shuffled, and ranks take every ``world``-th sample.

    ``start`` skips the first samples of this rank's share on the next pass only: a loader resumed
    mid-epoch sets it, so the samples already trained on are neither repeated nor read. ``len`` stays
    the whole share, as Lightning counts the resumed epoch's batches from its start.
    """

    def __init__(
        self,
        shard_ids: Sequence[int],
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        window: int = 8,
    ) -> None:
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside a world of {num_replicas}")
        self.shard_ids = torch.as_tensor(list(shard_ids), dtype=torch.long)
        self.num_replicas, self.rank = num_replicas, rank
        self.shuffle, self.seed, self.drop_last, self.window = shuffle, seed, drop_last, max(1, window)
        self.epoch = 0
        self.start = 0
        total = len(self.shard_ids)
        self.num_samples = total // num_replicas if drop_last else -(-total // num_replicas)
        self.total_size = self.num_samples * num_replicas

    def order(self) -> torch.Tensor:
        """The epoch's global order of dataset positions (before the per-rank split)."""
        positions = torch.arange(len(self.shard_ids))
        if not self.shuffle or len(positions) == 0:
            return positions
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        shards = torch.unique(self.shard_ids)
        shards = shards[torch.randperm(len(shards), generator=generator)]
        chunks = []
        for start in range(0, len(shards), self.window):
            members = positions[torch.isin(self.shard_ids, shards[start : start + self.window])]
            chunks.append(members[torch.randperm(len(members), generator=generator)])
        return torch.cat(chunks)

    def __iter__(self) -> Iterator[int]:
        order = self.order()
        if len(order) and len(order) < self.total_size:  # pad by repeating, like DistributedSampler
            repeats = -(-self.total_size // len(order))
            order = order.repeat(repeats)
        order = order[: self.total_size]
        start, self.start = self.start, 0
        return iter(order[self.rank : self.total_size : self.num_replicas][start:].tolist())

    def __len__(self) -> int:
        return self.num_samples


class ResumableDataLoader(DataLoader):
    """A training DataLoader that Lightning can checkpoint and resume mid-epoch.

    Lightning saves ``state_dict()`` of every training loader that has one (it never asks the
    sampler, so the loader is what must be stateful; having it also silences Lightning's "not
    resumable" warning). The state is the sampler's epoch and how many batches the main process
    has received this epoch: Lightning does not prefetch from a loader with a length, so that is
    what it has trained on, and batches that worker processes read ahead do not count. On resume
    (see :func:`token_reduction.training.resume.resume_train_loader`) the sampler skips those
    samples, so the rest of the epoch comes in the same order and nothing is read twice; each DDP
    rank skips the same count in its own share. ``len`` stays the whole epoch, as Lightning expects.
    Worker seeds come from the loader's own generator, reseeded per epoch, so making an iterator
    never draws from the global generator the model's Gumbel noise comes from.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._received = 0  # batches handed to the training loop since the epoch began
        self._resume: tuple[int, int] | None = None  # (epoch, batches) for the next iterator, from load_state_dict

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        epoch, self._received = self._resume or (None, 0)
        self._resume = None
        sampler = self.sampler
        if isinstance(sampler, ShardWindowSampler) and self.batch_size is not None:
            if epoch is not None:
                sampler.set_epoch(epoch)
            sampler.start = self._received * self.batch_size
        else:  # a sampler Lightning substituted (e.g. for overfit_batches) cannot skip: start over
            self._received = 0
        if self.generator is not None:
            self.generator.manual_seed(getattr(sampler, "seed", 0) * 1_000_003 + getattr(sampler, "epoch", 0))
        return self._count(super().__iter__())

    def _count(self, batches: Iterator[Any]) -> Iterator[Any]:
        for batch in batches:
            self._received += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        """Where this epoch stands; Lightning keeps it in the checkpoint's loop state."""
        return {"epoch": int(getattr(self.sampler, "epoch", 0)), "batches": self._received}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """The next iterator continues epoch ``epoch`` after its first ``batches`` batches."""
        self._resume = (int(state_dict["epoch"]), int(state_dict["batches"]))


def split_of(record: dict[str, Any], val_fraction: float, test_fraction: float, seed: int) -> str:
    """A sample's split: its recorded ``split`` if present, else a stable hash of its source image.

    Hashing the image (not the sample) keeps every AnyRes crop of one image in the same split.
    """
    split = record.get("split")
    if split is not None:
        if split not in SPLITS:
            raise CacheError(f"sample {record.get('id')!r}: field 'split' is {split!r}, expected one of {SPLITS}")
        return split
    key = f"{seed}:{record.get('image', record.get('id'))}".encode()
    u = int.from_bytes(hashlib.sha256(key).digest()[:8], "big") / 2**64
    if u < test_fraction:
        return "test"
    if u < test_fraction + val_fraction:
        return "val"
    return "train"


class FeatureCacheDataModule(L.LightningDataModule):
    """Reads and validates the cache manifest at construction, so its dims can configure the model."""

    def __init__(
        self,
        cache_dir: str,
        batch_size: int = 32,
        num_workers: int = 0,
        val_fraction: float = 0.1,
        test_fraction: float = 0.0,
        split_seed: int = 0,
        shuffle_seed: int = 0,
        shuffle_window: int = 8,
        verify: str = "checksum",
        statistics_samples: int = 1024,
        max_train_samples: int | None = None,
        pin_memory: bool = False,
        colour_augment: float = 0.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.cache = FeatureCache(cache_dir, verify=verify)
        manifest = self.cache.manifest
        self.feature_dim = manifest.dim
        self.num_tokens = manifest.num_tokens
        self.grid = tuple(manifest.grid)
        self.feature_source = f"{manifest.encoder}@layer{manifest.layer}"
        self.extras = tuple(name for name in manifest.extras if name == "text")
        self.split_indices: dict[str, list[int]] = {name: [] for name in SPLITS}
        for index, record in enumerate(self.cache.samples):
            self.split_indices[split_of(record, val_fraction, test_fraction, split_seed)].append(index)
        if max_train_samples is not None:
            self.split_indices["train"] = self.split_indices["train"][:max_train_samples]
        if not self.split_indices["train"]:
            raise CacheError(f"{cache_dir}: no sample falls in the training split (check 'split' fields / val_fraction)")
        if not 0.0 <= colour_augment <= 1.0:
            raise ValueError(f"data.colour_augment must be a probability in [0, 1], got {colour_augment}")
        if colour_augment and not manifest.encoder.startswith("pixels:"):
            raise ValueError(
                f"data.colour_augment: {cache_dir} holds {manifest.encoder} features; colour maps are affine only "
                "on pixels:P tokens, so set it to 0 for this cache"
            )

    def on_after_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        """Recolour training batches on the device (see :mod:`token_reduction.cache.augment`)."""
        if self.hparams.colour_augment and self.trainer is not None and self.trainer.training:
            batch["features"] = colour_jitter(batch["features"], self.hparams.colour_augment)
        return batch

    def feature_statistics(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel mean/std over an evenly spaced subset of training samples (deterministic)."""
        train = self.split_indices["train"]
        count = min(len(train), self.hparams.statistics_samples)
        picks = [train[round(i * (len(train) - 1) / max(1, count - 1))] for i in range(count)]
        total = torch.zeros(self.feature_dim, dtype=torch.float64)
        squares = torch.zeros(self.feature_dim, dtype=torch.float64)
        tokens = 0
        for index in picks:
            features = self.cache.read(index)["features"].double()
            total += features.sum(dim=0)
            squares += features.pow(2).sum(dim=0)
            tokens += features.shape[0]
        mean = total / tokens
        std = (squares / tokens - mean.pow(2)).clamp_min(0).sqrt()
        return mean.float(), std.float()

    def _world(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is None:
            return 1, 0
        return trainer.world_size, trainer.global_rank

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        indices = self.split_indices[split]
        dataset = CachedFeatureDataset(self.cache, indices, self.extras)
        world, rank = self._world()
        sampler = ShardWindowSampler(
            [self.cache.shard_of(i) for i in indices],
            num_replicas=world,
            rank=rank,
            shuffle=shuffle,
            seed=self.hparams.shuffle_seed,
            drop_last=shuffle,
            window=self.hparams.shuffle_window,
        )
        workers = self.hparams.num_workers
        # Training resumes mid-epoch exactly (see ResumableDataLoader); evaluation always runs whole.
        loader_class = ResumableDataLoader if split == "train" else DataLoader
        return loader_class(
            dataset,
            batch_size=self.hparams.batch_size,
            sampler=sampler,
            num_workers=workers,
            drop_last=shuffle and len(indices) // world >= self.hparams.batch_size,
            persistent_workers=workers > 0,
            pin_memory=self.hparams.pin_memory,
            # Iterators draw their worker seed from this, not from the global generator the model's noise uses.
            generator=torch.Generator().manual_seed(self.hparams.shuffle_seed),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    @property
    def evaluated_split(self) -> str:
        """What ``test``/``predict`` read: the test split, or the validation split when there is none."""
        return "test" if self.split_indices["test"] else "val"

    def test_dataloader(self) -> DataLoader:
        if self.evaluated_split != "test":
            rank_zero_warn(f"{self.hparams.cache_dir}: no test split (set data.test_fraction); testing on the validation split")
        return self._loader(self.evaluated_split, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.evaluated_split, shuffle=False)
