"""Feature extraction on Lightning's machinery: 1 CPU, 1 GPU, N GPUs or N nodes, one code path.

``token-reduction extract`` (:func:`token_reduction.extraction.run.extract`) builds these pieces and calls
``Trainer.predict``:

* :class:`ImageDataModule` - the images still to do, a disjoint unpadded block per rank;
* :class:`EncoderModule` - the frozen encoder, whose ``predict_step`` encodes each image's crops;
* :class:`CacheShardWriter` - a prediction-writer callback: each rank writes its own atomic shards
  and partial manifest (``manifest.rank{r:03d}.json``), rank 0 merges them into ``manifest.json``;
* :class:`Store` - the output folder on a local disk or any fsspec URL (``s3://``, ``gs://``, ``memory://``).

:func:`read_progress` shows what a running or killed extraction has stored so far.
"""

from token_reduction.extraction.datamodule import (
    ImageDataModule,
    RankBlockSampler,
    block_bounds,
)
from token_reduction.extraction.merge import (
    merge_manifests,
    partial_manifest_name,
    read_progress,
)
from token_reduction.extraction.module import EncodedImage, EncoderModule
from token_reduction.extraction.storage import Store
from token_reduction.extraction.writer import (
    CacheOutput,
    CacheShardWriter,
    RankCacheWriter,
)

__all__ = [
    "CacheOutput",
    "CacheShardWriter",
    "EncodedImage",
    "EncoderModule",
    "ImageDataModule",
    "RankBlockSampler",
    "RankCacheWriter",
    "Store",
    "block_bounds",
    "merge_manifests",
    "partial_manifest_name",
    "read_progress",
]
