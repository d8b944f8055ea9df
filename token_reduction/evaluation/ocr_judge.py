"""The downstream judge: can a real OCR engine still read a page from the tokens a method kept?

For every page of the evaluated split that has ground-truth words (the default set's sidecars), the
judge reads (a) the page with the dropped patches greyed out (the paper's Figure 1) and, for
``pixels:P`` caches, (b) the page decoded from the neutral reconstructor's output, and scores the
recognised words against the truth. The full page is the ceiling. OCR engines are slow, so the
evaluation only queues work here (:meth:`OcrJudge.add`) and all reads run at the end, in threads
(the engines release the GIL).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from token_reduction.cache.feature_cache import FeatureCache
from token_reduction.encoders.base import CLIP_MEAN, CLIP_STD
from token_reduction.encoders.pixels import pixel_patch_of, tokens_to_image
from token_reduction.evaluation.ocr import OcrEngine, grey_out, load_ocr_engine, word_recall
from token_reduction.extraction.inputs import read_sidecar

Run = Hashable


@dataclass
class OcrPage:
    """A page the judge can score: its image file and the words drawn on it."""

    path: Path
    words: list[str]


@dataclass
class _Job:
    run: Run | None  # None: the full-page ceiling
    index: int
    metric: str
    keep_mask: np.ndarray | None = None
    image: np.ndarray | None = None


@dataclass
class OcrJudge:
    """Collects what to read during an evaluation, then reads it all in :meth:`score`."""

    pages: dict[int, OcrPage]
    engine_name: str = "auto"
    workers: int = 2
    pixel_patch: int | None = None
    _jobs: list[_Job] = field(default_factory=list)

    @classmethod
    def for_cache(
        cls, cache: FeatureCache, indices: Sequence[int], engine: str = "auto", workers: int = 2,
        max_pages: int | None = None, seed: int = 0,
    ) -> "OcrJudge":
        """Find the pages with ground-truth words among ``indices`` (sidecars beside the images).

        ``max_pages`` keeps a seeded subset that takes pages from every group in turn.
        """
        root = cache.manifest.info.get("images_root")
        pages: dict[int, OcrPage] = {}
        for index in indices:
            sample = cache.samples[index]
            if root is None or sample.get("crop", "full") != "full" or not sample.get("image"):
                continue
            path = Path(root) / sample["image"]
            try:
                sidecar = read_sidecar(path)
            except (OSError, ValueError):
                continue
            words = (sidecar or {}).get("words") or []
            if path.is_file() and words:
                pages[index] = OcrPage(path, [str(w) for w in words])
        if max_pages is not None and len(pages) > max_pages:
            pages = {i: pages[i] for i in spread_subset(cache, list(pages), max_pages, seed)}
        judge = cls(pages, engine, workers, pixel_patch_of(cache.manifest.encoder))
        if pages:
            load_ocr_engine(engine)  # fail now, not after minutes of evaluation
        for index in pages:
            judge._jobs.append(_Job(None, index, "ocr_recall"))
        return judge

    def add(self, run: Run, indices: Sequence[int], keep_mask: Tensor, grid: tuple[int, int], decoded: Tensor | None = None) -> None:
        """Queue the pages of a batch: ``keep_mask`` ``(B, N)``; ``decoded``: reconstructed features in the cache's units."""
        images = None if decoded is None or self.pixel_patch is None else decode_pixels(decoded, grid, self.pixel_patch)
        for b, index in enumerate(indices):
            if index not in self.pages:
                continue
            mask = keep_mask[b].reshape(grid).cpu().numpy().astype(bool)
            self._jobs.append(_Job(run, index, "ocr_recall", keep_mask=mask))
            if images is not None:
                self._jobs.append(_Job(run, index, "ocr_recall_decoded", image=images[b]))

    def __len__(self) -> int:
        return len(self._jobs)

    def score(self, log: Callable[[str], None] = print) -> dict[tuple[Run | None, str], dict[int, float]]:
        """Run every queued read; ``{(run, metric): {index: word recall}}`` (run ``None`` = full page)."""
        if not self._jobs:
            return {}
        local = threading.local()
        loaded: dict[int, np.ndarray] = {}
        lock = threading.Lock()

        def page_array(index: int) -> np.ndarray:
            with lock:
                if index not in loaded:
                    with Image.open(self.pages[index].path) as image:
                        loaded[index] = np.asarray(image.convert("RGB"))
                return loaded[index]

        def read(job: _Job) -> float:
            if not hasattr(local, "engine"):
                local.engine = load_ocr_engine(self.engine_name)
            engine: OcrEngine = local.engine
            if job.image is not None:
                image = job.image
            else:
                image = page_array(job.index)
                image = image if job.keep_mask is None else grey_out(image, job.keep_mask)
            value = word_recall(engine.read(image), self.pages[job.index].words)
            return float("nan") if value is None else float(value)

        log(f"OCR: reading {len(self._jobs)} page views of {len(self.pages)} pages with {self.workers} worker(s)")
        with ThreadPoolExecutor(max_workers=max(1, self.workers)) as pool:
            values = list(pool.map(read, self._jobs))
        results: dict[tuple[Run | None, str], dict[int, float]] = {}
        for job, value in zip(self._jobs, values):
            results.setdefault((job.run, job.metric), {})[job.index] = value
        self._jobs = []
        return results


def spread_subset(cache: FeatureCache, indices: list[int], count: int, seed: int) -> list[int]:
    """``count`` of ``indices``, drawn round-robin over their ``group`` (shuffled with ``seed``)."""
    rng = np.random.default_rng(seed)
    groups: dict[str, list[int]] = {}
    for index in indices:
        groups.setdefault(str(cache.samples[index].get("group")), []).append(index)
    queues = [list(rng.permutation(members)) for _, members in sorted(groups.items())]
    chosen: list[int] = []
    while len(chosen) < count:
        for queue in queues:
            if queue and len(chosen) < count:
                chosen.append(int(queue.pop()))
    return sorted(chosen)


def decode_pixels(features: Tensor, grid: tuple[int, int], patch: int) -> list[np.ndarray]:
    """Turn ``pixels:P`` features ``(B, N, 3*P*P)`` (CLIP-normalised pixels) into uint8 RGB images."""
    pixels = tokens_to_image(features.float().cpu(), grid, patch)
    mean = torch.tensor(CLIP_MEAN)[None, :, None, None]
    std = torch.tensor(CLIP_STD)[None, :, None, None]
    images = ((pixels * std + mean).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)
    return [image.numpy() for image in images]
