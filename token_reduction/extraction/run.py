"""Feature extraction: run a frozen encoder over images once and cache the tokens.

Training the selector only ever reads this cache, so the (large) vision encoder runs once per image.
The run is resumable: kill it at any point and rerun the same command; images already stored or
skipped are not redone, and every image ends up in the cache exactly once (all its crops together).
Rerunning also repairs: shards found missing, truncated or corrupt (sha256) are dropped and their
images encoded again (see :mod:`token_reduction.extraction.repair`). A cache keeps the images root
it was made from; another ``--images`` folder with the same ``--out`` is refused.

Each sample (one crop) is recorded as ``{"id", "image", "crop", "crop_box", "source_size"}`` plus
``kind``/``split``/``source`` from the image's ``NAME.json`` sidecar when present: ``image`` is the
path relative to the images root; ``id`` is ``image`` (whole image) or ``image#base`` / ``image#r0c1``
(AnyRes); ``crop`` is ``"full"``, ``"base"`` or ``[row, col]``; ``crop_box`` is ``[x0, y0, x1, y1]``
of the original image the crop shows (past the edges where it shows padding); ``source_size`` is
the original ``[width, height]`` after EXIF rotation. Optional extras, each ``(num_tokens,)``:
``text`` (fraction of each patch covered by sidecar text boxes) and ``attention`` (``--store-attention``).

Devices and dtypes: ``--dtype`` is the cache's storage precision. On CUDA the encoder also computes
in it (as the VLMs do); on the CPU it computes in float32 and only the stored tokens are rounded.

Scale: extraction is ``Trainer.predict`` (see :mod:`token_reduction.extraction`), so one command
runs on 1 CPU, 1 GPU (``--device cuda``), N GPUs (``--accelerator gpu --devices N``) or several
nodes (``--num-nodes``; torchrun and SLURM are detected by Lightning). Each rank encodes a disjoint
block of the images and writes its own shards and ``manifest.rank{r:03d}.json``; global rank 0
merges them into ``manifest.json`` at the end. ``--images`` and ``--out`` may be fsspec URLs
(``s3://``, ``gs://``, ...); training reads a local or mounted cache.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import warnings
from pathlib import Path
from typing import Any, Iterator, Sequence

import lightning as L
import torch

from token_reduction.cache.manifest import Manifest
from token_reduction.encoders import Encoder, as_torch_dtype, load_encoder
from token_reduction.encoders.anyres import check_pinpoints, parse_pinpoints
from token_reduction.extraction.inputs import TEXT_BOX_MODES, find_images, wants_text_boxes
from token_reduction.extraction.datamodule import ImageDataModule
from token_reduction.extraction.merge import done_images, partial_names
from token_reduction.extraction.module import EncoderModule
from token_reduction.extraction.writer import CacheOutput, CacheShardWriter

STORAGE_NAMES = {torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float32: "float32"}


def _device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} requested but CUDA is not available; use --device cpu")
    return device


def _placement(
    encoder: str | Encoder, device: str | torch.device, accelerator: str | None, devices: int | str | list[int] | None
) -> tuple[str, int | str | list[int]]:
    """Lightning ``(accelerator, devices)``: explicit values win, else they follow ``device`` (or a loaded encoder's)."""
    if accelerator is None:
        target = encoder.device if isinstance(encoder, Encoder) else _device(device)
        accelerator = {"cuda": "gpu"}.get(target.type, target.type)
        if devices is None and target.type == "cuda" and target.index is not None:
            devices = [target.index]
    if isinstance(devices, str) and devices.strip().lstrip("-").isdigit():
        devices = int(devices)
    return accelerator, 1 if devices is None else devices


@contextlib.contextmanager
def _quiet_trainer_setup() -> Iterator[None]:
    """Hide the Trainer's start-up notes (accelerators available, tips); warnings still show."""
    log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    level = log.level
    log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        log.setLevel(level)


def _images_per_batch(batch_size: int, pinpoints: list | None, tile: tuple[int, int], max_crops: int = 1) -> int:
    """Images per predict step, so one step encodes about ``batch_size`` crops (AnyRes: base + the most tiles;
    a VLM's processor: the most crops it cuts, ``max_crops``)."""
    if not pinpoints:
        return max(1, batch_size // max_crops)
    crops = 1 + max((h // tile[0]) * (w // tile[1]) for h, w in pinpoints)
    return max(1, batch_size // crops)


def extract(
    encoder: str | Encoder,
    images: str | Path,
    out: str | Path,
    *,
    layer: int | None = None,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    dtype: str = "fp16",
    anyres: bool = False,
    pinpoints: Sequence[Sequence[int]] | str | None = None,
    store_attention: bool = False,
    text_boxes: str = "auto",
    shard_size: int = 256,
    num_workers: int = 0,
    progress: bool = True,
    max_images: int | None = None,
    accelerator: str | None = None,
    devices: int | str | list[int] | None = None,
    num_nodes: int = 1,
    strategy: Any = "auto",
    trainer_kwargs: dict[str, Any] | None = None,
) -> Manifest:
    """Encode every image under ``images`` into the feature cache ``out``; returns its manifest.

    ``encoder`` is a spec for :func:`~token_reduction.encoders.load_encoder` or a loaded
    :class:`Encoder` (then ``layer``/``device`` are its own). ``pinpoints`` (AnyRes only) are
    ``(height, width)`` pairs or ``"336x672,672x336"``; ``None`` uses the encoder family's default.
    ``images`` and ``out`` may be local paths or fsspec URLs (``s3://``, ``gs://``, ``memory://``).

    Where it runs is Lightning's choice from ``accelerator``/``devices``/``num_nodes``/``strategy``
    (``Trainer`` arguments; ``trainer_kwargs`` adds others). Without ``accelerator`` they follow
    ``device`` (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"auto"``), one device. Under torchrun or
    SLURM every process calls this function; each returns the merged manifest.
    """
    if batch_size < 1 or shard_size < 1 or num_workers < 0:
        raise ValueError(f"batch_size ({batch_size}) and shard_size ({shard_size}) must be >= 1, num_workers ({num_workers}) >= 0")
    if text_boxes not in TEXT_BOX_MODES:
        raise ValueError(f"text_boxes must be one of {TEXT_BOX_MODES}, got {text_boxes!r}")
    storage = as_torch_dtype(dtype)
    root, inputs = find_images(images)
    if max_images is not None:
        inputs = inputs[: max(int(max_images), 0)]
    accelerator, devices = _placement(encoder, device, accelerator, devices)
    compute, home = None, None
    if isinstance(encoder, str):  # loaded on the CPU; Lightning moves it, EncoderModule casts it on GPUs
        encoder = load_encoder(encoder, layer=layer, device="cpu", dtype=torch.float32, attention=store_attention)
        compute = storage
    elif layer is not None and layer != encoder.layer:
        raise ValueError(f"layer={layer} given but the encoder was loaded with layer {encoder.layer}")
    elif store_attention and not encoder.attention:
        raise ValueError(f"store_attention=True but {encoder.name!r} was loaded without attention=True")
    else:
        home = encoder.device  # Lightning leaves the module on the CPU when done; the caller's encoder goes back
    points = None
    if anyres and hasattr(encoder, "encode_inputs"):
        raise ValueError(f"{encoder.name}: --anyres: this VLM's own processor cuts its crops; drop --anyres")
    if anyres:
        if isinstance(pinpoints, str):
            pinpoints = parse_pinpoints(pinpoints)
        points = check_pinpoints(pinpoints or encoder.default_pinpoints or [], encoder.image_size)
    elif pinpoints:
        raise ValueError("pinpoints only apply with anyres=True (--anyres)")
    text = wants_text_boxes(inputs, text_boxes)
    template = _template(encoder, storage, root, str(images), points, text, store_attention)
    output = CacheOutput(str(out), template, shard_size=shard_size)
    existing = output.existing()  # refuses a cache of other features or images, before anything is written
    names = [item.rel for item in inputs]
    if (existing is not None and existing.complete and not partial_names(output.store) and set(names) <= done_images(existing)
            and not output.damaged(existing)):  # every process sees the same shards, so all agree to stop here
        return existing  # nothing to do: no processes to start
    datamodule = ImageDataModule(
        inputs, encoder.transform, encoder.patch_size, points, text,
        images_per_batch=_images_per_batch(batch_size, points, encoder.image_size, getattr(encoder.transform, "max_crops", 1)),
        num_workers=num_workers, output=output,
    )
    writer = CacheShardWriter(output, names, progress=progress)
    options: dict[str, Any] = dict(
        accelerator=accelerator, devices=devices, num_nodes=num_nodes, strategy=strategy, precision="32-true",
        logger=False, enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=False,
        use_distributed_sampler=False, callbacks=[writer],
    )
    options.update(trainer_kwargs or {})
    with _quiet_trainer_setup():
        trainer = L.Trainer(**options)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
            trainer.predict(EncoderModule(encoder, batch_size, compute), datamodule=datamodule, return_predictions=False)
    except SystemExit:
        if isinstance(writer.exception, KeyboardInterrupt):  # Lightning turns Ctrl-C into SIGINT-ignored + exit(1)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt from None
        raise
    finally:
        if home is not None and home != encoder.device:
            encoder.to(home)
    return output.result()


def _template(encoder: Encoder, storage: torch.dtype, root: Path | str, images: str, pinpoints: list | None, text: bool, attention: bool) -> Manifest:
    extras = {}
    if text:
        extras["text"] = [encoder.num_tokens]
    if attention:
        extras["attention"] = [encoder.num_tokens]
    info: dict[str, Any] = {
        "family": encoder.family,
        "patch_size": encoder.patch_size,
        "anyres": pinpoints is not None,
        "pinpoints": [list(p) for p in pinpoints] if pinpoints else None,
        "images_root": str(root),
        "images": images,
    }
    if hasattr(encoder, "layer_index"):
        info.update(layer_index=encoder.layer_index, num_layers=encoder.num_layers, cls_dropped=encoder.drop_cls)
    if hasattr(encoder, "describe"):  # VLM checkpoints: family, model_type, canvas, how the features were taken
        info.update(encoder.describe())
    return Manifest(
        encoder=encoder.name,
        layer=encoder.layer,
        num_tokens=encoder.num_tokens,
        grid=encoder.grid,
        dim=encoder.dim,
        dtype=STORAGE_NAMES[storage],
        image_size=encoder.image_size,
        extras=extras,
        info=info,
    )
