"""Writing the feature cache from many ranks: one :class:`CacheWriter` per rank, one merge at the end.

* :class:`CacheOutput` is the cache being written (a local folder or an fsspec URL): the checks that
  run before anything is written, rank 0's preparation, the resume state every rank reads, and
  the final merge.
* :class:`RankCacheWriter` is :class:`~token_reduction.cache.feature_cache.CacheWriter` with rank ``r``'s own
  shard names (``shard-r{r:03d}-*``) and partial manifest (``manifest.rank{r:03d}.json``), written
  through :class:`~token_reduction.extraction.storage.Store` (atomic on every filesystem).
* :class:`CacheShardWriter` is the Lightning prediction-writer callback that feeds it.
"""

from __future__ import annotations

import sys
import warnings
from typing import Any, Sequence

import lightning as L
from lightning.pytorch.callbacks import BasePredictionWriter
from tqdm.auto import tqdm

from token_reduction.cache.feature_cache import CacheWriter, shard_file_name
from token_reduction.cache.manifest import MANIFEST_NAME, CacheError, Manifest
from token_reduction.extraction.merge import (
    copy_manifest,
    done_images,
    fold_partials,
    manifest_bytes,
    next_shard_index,
    partial_manifest_name,
    read_manifest_at,
)
from token_reduction.extraction.module import EncodedImage
from token_reduction.extraction.repair import damaged_shards, repair_note, without_shards
from token_reduction.extraction.storage import Store


class CacheOutput:
    """The cache an extraction writes: ``template`` describes its features, ``shard_size`` its shards."""

    def __init__(self, out: str, template: Manifest, shard_size: int = 256) -> None:
        self.store = Store(out)
        self.template = copy_manifest(template, empty=True)
        self.shard_size = shard_size

    @property
    def url(self) -> str:
        return self.store.url

    def existing(self) -> Manifest | None:
        """``manifest.json`` when the cache exists, after checking it holds the same features."""
        if not self.store.exists(MANIFEST_NAME):
            if any(not name.startswith(".") for name in self.store.names()):
                raise CacheError(f"{self.url} exists and is not a feature cache; choose an empty or new --out folder")
            return None
        existing = read_manifest_at(self.store)
        mismatch = existing.same_features_as(self.template)
        if mismatch:
            details = ", ".join(f"{k}: {getattr(existing, k)!r} vs {getattr(self.template, k)!r}" for k in mismatch)
            raise CacheError(f"{self.url} already holds a cache of different features ({details}); choose another --out folder (nothing was changed)")
        for key in ("anyres", "pinpoints"):  # tiling is not part of the features' shape, but a cache must not mix tilings
            if existing.info.get(key) != self.template.info.get(key):
                raise CacheError(
                    f"{self.url} was extracted with {key}={existing.info.get(key)!r} but this run has {self.template.info.get(key)!r}; "
                    "rerun with the same options or choose another --out (nothing was changed)"
                )
        old, new = existing.info.get("images_root"), self.template.info.get("images_root")
        if old is not None and new is not None and str(old).rstrip("/") != str(new).rstrip("/"):
            spec = str(existing.info.get("images") or old)  # the folder, glob or list file as first given
            given = spec if spec.rstrip("/") == str(old).rstrip("/") else f"{spec} (images root {old})"
            raise CacheError(
                f"{self.url.rstrip('/')}/{MANIFEST_NAME}: images_root: this cache holds images from {old}, not {new}; "
                f"give the original --images {given} to resume or repair it, or choose another --out for these images (nothing was changed)"
            )
        return existing

    def damaged(self, manifest: Manifest) -> dict[str, str]:
        """Shards of ``manifest`` that fail verification (file name -> reason); see :mod:`~token_reduction.extraction.repair`."""
        return damaged_shards(self.store, manifest)

    def prepare(self) -> Manifest:
        """Global rank 0, before any rank reads or writes: create the cache, or fold a killed run's partials
        in and drop damaged shards (their images are then encoded again), saying so in one line."""
        if self.existing() is None:
            self.store.makedirs()
            self.store.write_bytes(MANIFEST_NAME, manifest_bytes(self.template))
            return copy_manifest(self.template)
        merged = fold_partials(self.store)
        damaged = self.damaged(merged)
        if not damaged:
            return merged
        print(repair_note(self.url, merged, damaged), file=sys.stderr, flush=True)
        repaired = without_shards(merged, set(damaged))
        self.store.write_bytes(MANIFEST_NAME, manifest_bytes(repaired))  # first: a kill now leaves unlisted files, removed next run
        for name in damaged:
            self.store.remove(name)
        return repaired

    def done(self) -> set[str]:
        """Images already stored or skipped (read by every rank after :meth:`prepare`)."""
        return done_images(read_manifest_at(self.store))

    def rank_writer(self, rank: int) -> "RankCacheWriter":
        first = next_shard_index(read_manifest_at(self.store), rank)
        return RankCacheWriter(self.store, self.template, self.shard_size, rank, first)

    def finish(self, expected: Sequence[str]) -> Manifest:
        """Global rank 0, after every rank closed its writer: merge into ``manifest.json``.

        ``complete`` is set only when every image in ``expected`` is stored or skipped.
        """
        merged = fold_partials(self.store, expected)
        if not merged.complete:
            missing = sorted(set(expected) - done_images(merged))
            warnings.warn(f"{self.url}: {len(missing)} images were not written (e.g. {missing[0]!r}); rerun to finish", stacklevel=2)
        return merged

    def result(self) -> Manifest:
        return read_manifest_at(self.store)


class RankCacheWriter(CacheWriter):
    """A :class:`CacheWriter` for one rank: its own shard names and partial manifest, any filesystem.

    It starts empty (rank 0's :meth:`CacheOutput.prepare` folded earlier runs into
    ``manifest.json``) and numbers its shards from ``first_index`` so names never collide.
    """

    def __init__(self, store: Store, template: Manifest, shard_size: int, rank: int, first_index: int = 0) -> None:
        self.store = store
        self.root = store.url  # type: ignore[assignment]  # for messages; all I/O goes through the store
        self.shard_size = shard_size
        self.rank = rank
        self.first_index = first_index
        self.manifest = copy_manifest(template, empty=True)
        self.manifest.complete = False
        self._clear_buffers(self.manifest)

    @property
    def manifest_name(self) -> str:
        return partial_manifest_name(self.rank)

    def _shard_name(self) -> str:
        return shard_file_name(self.rank, self.first_index + len(self.manifest.shards))

    def _write_shard(self, name: str, payload: bytes) -> None:
        self.store.write_bytes(name, payload)

    def _write_manifest(self) -> None:
        self.store.write_bytes(self.manifest_name, manifest_bytes(self.manifest))


class CacheShardWriter(BasePredictionWriter):
    """Writes each rank's encoded images as atomic shards; rank 0 merges the manifests at the end.

    Hooks: ``setup`` opens this rank's :class:`RankCacheWriter` (after rank 0 prepared the cache in
    the DataModule's ``prepare_data``); ``write_on_batch_end`` adds every image whole (all its crops
    in one call) or records it as skipped; ``on_exception`` keeps what finished; ``teardown`` closes
    the writer, waits for every rank, lets rank 0 merge, and waits again so every rank can read
    the result. ``teardown`` runs even on a rank whose share was empty.
    """

    def __init__(self, output: CacheOutput, expected: Sequence[str] = (), progress: bool = True) -> None:
        super().__init__(write_interval="batch")
        self.output = output
        self.expected = list(expected)
        self.progress = progress
        self.writer: RankCacheWriter | None = None
        self.exception: BaseException | None = None
        self._bar: Any = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.writer = self.output.rank_writer(trainer.global_rank)
        self.exception = None
        datamodule = trainer.datamodule
        share = len(datamodule.rank_inputs) if hasattr(datamodule, "rank_inputs") else None
        resumed = len(getattr(datamodule, "done", ()))
        world = f" rank {trainer.global_rank}/{trainer.world_size}" if trainer.world_size > 1 else ""
        self._bar = tqdm(
            total=share, unit="img", desc=f"extract{world}", dynamic_ncols=True,
            disable=not (self.progress and trainer.is_global_zero),
            postfix={"already done": resumed} if resumed else None,
        )

    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: list[EncodedImage],
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        assert self.writer is not None, "setup() opens the writer"
        for item in prediction:
            if item.error is not None:
                self.writer.skip(item.rel, item.error)
            else:
                self.writer.add(item.features, item.samples, item.extras)
            self._bar.update(1)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self.exception = exception
        if self.writer is not None:
            try:  # keep what finished, so the rerun resumes after it
                self.writer.flush()
            except Exception:  # noqa: BLE001, S110 - the original error matters more
                pass
        self._close_bar()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._close_bar()
        if self.writer is None:
            return
        self.writer.close(complete=True)
        self.writer = None
        trainer.strategy.barrier("extract-written")
        if trainer.is_global_zero:
            self.output.finish(self.expected)
        trainer.strategy.barrier("extract-merged")

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_bar"] = None
        return state


__all__ = ["CacheError", "CacheOutput", "CacheShardWriter", "RankCacheWriter"]
