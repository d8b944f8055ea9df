"""Images to extract as a LightningDataModule: each rank gets a disjoint block, nothing repeated.

Lightning's usual distributed sampler pads the last ranks with repeated samples to equal lengths;
an extraction must store every image exactly once, so :class:`RankBlockSampler` splits the
remaining work into contiguous blocks whose sizes differ by at most one and never pads.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import lightning as L
import torch
from torch.utils.data import DataLoader, DistributedSampler

from token_reduction.encoders.base import ImageTransform
from token_reduction.extraction.inputs import ImageDataset, ImageInput, as_list
from token_reduction.extraction.writer import CacheOutput


def block_bounds(total: int, world: int, rank: int) -> tuple[int, int]:
    """``[start, stop)`` of ``rank``'s block: ``total`` split into ``world`` blocks, sizes differing by <= 1."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is outside a world of {world}")
    size, extra = divmod(total, world)
    start = rank * size + min(rank, extra)
    return start, start + size + (rank < extra)


class RankBlockSampler(DistributedSampler):
    """This rank's contiguous, unpadded block of ``range(total)``, in order.

    A :class:`DistributedSampler` subclass, so Lightning uses it as is instead of wrapping it.
    Contiguous blocks keep the merged cache in input order for a fresh run (rank 0's shards come
    first); an empty block is fine (that rank only joins the final merge).
    """

    def __init__(self, total: int, num_replicas: int = 1, rank: int = 0) -> None:
        # no super().__init__(): it wants a dataset and a process group, and would pad the blocks
        self.total, self.num_replicas, self.rank = total, num_replicas, rank
        self.start, self.stop = block_bounds(total, num_replicas, rank)
        self.shuffle, self.drop_last, self.seed, self.epoch = False, False, 0, 0
        self.num_samples = self.total_size = self.stop - self.start

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.stop))

    def __len__(self) -> int:
        return self.stop - self.start


class ImageDataModule(L.LightningDataModule):
    """Serves the images of ``inputs`` that ``output`` does not hold yet, split across ranks.

    ``prepare_data`` (global rank 0 only, before any other rank goes on) creates the cache or folds
    a killed run's per-rank manifests into ``manifest.json``; ``setup`` (every rank) reads which
    images are done; the predict loader yields lists of :class:`PreparedImage`, ``images_per_batch``
    at a time, decoded in ``num_workers`` worker processes.
    """

    def __init__(
        self,
        inputs: Sequence[ImageInput],
        transform: ImageTransform,
        patch_size: int,
        pinpoints: Sequence[tuple[int, int]] | None = None,
        text: bool = False,
        images_per_batch: int = 32,
        num_workers: int = 0,
        output: CacheOutput | None = None,
    ) -> None:
        super().__init__()
        self.prepare_data_per_node = False  # one rank prepares the (shared) output
        self.inputs = list(inputs)
        self.transform, self.patch_size = transform, patch_size
        self.pinpoints = list(pinpoints) if pinpoints else None
        self.text = text
        self.images_per_batch = max(1, int(images_per_batch))
        self.num_workers = num_workers
        self.output = output
        self.done: set[str] = set()
        self.todo: list[ImageInput] = list(self.inputs)
        self.rank_inputs: list[ImageInput] = list(self.inputs)

    def prepare_data(self) -> None:
        if self.output is not None:
            self.output.prepare()

    def setup(self, stage: str) -> None:
        self.done = self.output.done() if self.output is not None else set()
        self.todo = [item for item in self.inputs if item.rel not in self.done]
        world, rank = self._world()
        start, stop = block_bounds(len(self.todo), world, rank)
        self.rank_inputs = self.todo[start:stop]

    def _world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        return batch  # ragged CPU items; EncoderModule moves one stacked tensor per encoder call instead

    def predict_dataloader(self) -> DataLoader:
        world, rank = self._world()
        dataset = ImageDataset(self.todo, self.transform, self.patch_size, self.pinpoints, self.text)
        return DataLoader(
            dataset,
            batch_size=self.images_per_batch,
            sampler=RankBlockSampler(len(self.todo), world, rank),
            collate_fn=as_list,
            num_workers=self.num_workers,
        )
