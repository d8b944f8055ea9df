"""``token-reduction extract``: run a frozen encoder over images once and cache the tokens.

Training the selector only ever reads this cache, so the (large) vision encoder runs once per image.
The run is resumable: kill it at any point and rerun the same command; images already stored or
skipped are not redone, and every image ends up in the cache exactly once (all its crops together).

Each sample (one crop) is recorded as ``{"id", "image", "crop", "crop_box", "source_size"}`` plus
``kind``/``split``/``source`` from the image's ``NAME.json`` sidecar when present: ``image`` is the
path relative to the images root; ``id`` is ``image`` (whole image) or ``image#base`` / ``image#r0c1``
(AnyRes); ``crop`` is ``"full"``, ``"base"`` or ``[row, col]``; ``crop_box`` is ``[x0, y0, x1, y1]``
of the original image the crop shows (past the edges where it shows padding); ``source_size`` is
the original ``[width, height]`` after EXIF rotation. Optional extras, each ``(num_tokens,)``:
``text`` (fraction of each patch covered by sidecar text boxes) and ``attention`` (``--store-attention``).

Devices and dtypes: ``--dtype`` is the cache's storage precision. On CUDA the encoder also computes
in it (as the VLMs do); on the CPU it computes in float32 and only the stored tokens are rounded.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Sequence

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from token_reduction.data.cache import CacheWriter
from token_reduction.data.manifest import CacheError, Manifest
from token_reduction.encoders import Encoder, as_torch_dtype, load_encoder
from token_reduction.encoders.anyres import check_pinpoints, parse_pinpoints
from token_reduction.extract_inputs import TEXT_BOX_MODES, ImageDataset, PreparedImage, find_images, first_item, wants_text_boxes

STORAGE_NAMES = {torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float32: "float32"}


def _device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} requested but CUDA is not available; use --device cpu")
    return device


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
) -> Manifest:
    """Encode every image under ``images`` into the feature cache ``out``; returns its manifest.

    ``encoder`` is a spec for :func:`~token_reduction.encoders.load_encoder` or a loaded
    :class:`Encoder` (then ``layer``/``device`` are its own). ``pinpoints`` (AnyRes only) are
    ``(height, width)`` pairs or ``"336x672,672x336"``; ``None`` uses the encoder family's default.
    """
    if batch_size < 1 or shard_size < 1 or num_workers < 0:
        raise ValueError(f"batch_size ({batch_size}) and shard_size ({shard_size}) must be >= 1, num_workers ({num_workers}) >= 0")
    if text_boxes not in TEXT_BOX_MODES:
        raise ValueError(f"text_boxes must be one of {TEXT_BOX_MODES}, got {text_boxes!r}")
    storage = as_torch_dtype(dtype)
    root, inputs = find_images(images)
    if max_images is not None:
        inputs = inputs[: max(int(max_images), 0)]
    if isinstance(encoder, str):
        target = _device(device)
        compute = storage if target.type == "cuda" else torch.float32
        encoder = load_encoder(encoder, layer=layer, device=target, dtype=compute, attention=store_attention)
    elif layer is not None and layer != encoder.layer:
        raise ValueError(f"layer={layer} given but the encoder was loaded with layer {encoder.layer}")
    elif store_attention and not encoder.attention:
        raise ValueError(f"store_attention=True but {encoder.name!r} was loaded without attention=True")
    points = None
    if anyres:
        if isinstance(pinpoints, str):
            pinpoints = parse_pinpoints(pinpoints)
        points = check_pinpoints(pinpoints or encoder.default_pinpoints or [], encoder.image_size)
    elif pinpoints:
        raise ValueError("pinpoints only apply with anyres=True (--anyres)")
    text = wants_text_boxes(inputs, text_boxes)
    template = _template(encoder, storage, root, str(images), points, text, store_attention)
    writer = CacheWriter(out, template, shard_size=shard_size)  # refuses a cache of other features
    _check_same_tiling(writer.manifest, template, out)
    done = writer.done_images
    todo = [item for item in inputs if item.rel not in done]
    dataset = ImageDataset(todo, encoder.transform, encoder.patch_size, points, text)
    loader = DataLoader(dataset, batch_size=1, collate_fn=first_item, num_workers=num_workers)
    bar = tqdm(total=len(inputs), initial=len(inputs) - len(todo), unit="img", desc="extract", disable=not progress, dynamic_ncols=True)
    try:
        pending: list[PreparedImage] = []
        for item in loader:
            if item.error is not None:
                writer.skip(item.rel, item.error)
                bar.update(1)
                continue
            pending.append(item)
            if sum(len(p.samples) for p in pending) >= batch_size:
                _encode_and_write(encoder, pending, batch_size, writer, bar)
                pending = []
        if pending:
            _encode_and_write(encoder, pending, batch_size, writer, bar)
    except BaseException:
        try:  # keep what finished, so the rerun resumes after it
            writer.flush()
        except Exception:  # noqa: BLE001 - the original error matters more
            pass
        raise
    finally:
        bar.close()
    return writer.close()


def _check_same_tiling(existing: Manifest, template: Manifest, out: str | Path) -> None:
    """Tiling is not part of the features' shape, so CacheWriter cannot see it; a resume must not mix tilings."""
    for key in ("anyres", "pinpoints"):
        if existing.info.get(key) != template.info.get(key):
            raise CacheError(
                f"{out} was extracted with {key}={existing.info.get(key)!r} but this run has {template.info.get(key)!r}; "
                "rerun with the same options or choose another --out (nothing was changed)"
            )


def _template(encoder: Encoder, storage: torch.dtype, root: Path, images: str, pinpoints: list | None, text: bool, attention: bool) -> Manifest:
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


def _encode_and_write(encoder: Encoder, pending: list[PreparedImage], batch_size: int, writer: CacheWriter, bar: Any) -> None:
    """Encode the crops of ``pending`` in chunks of ``batch_size``, then add each image whole."""
    pixels = torch.cat([p.pixels for p in pending])
    outputs: dict[str, list[torch.Tensor]] = {}
    for start in range(0, len(pixels), batch_size):
        for name, value in encoder.encode(pixels[start : start + batch_size]).items():
            outputs.setdefault(name, []).append(value.float().cpu())
    merged = {name: torch.cat(parts) for name, parts in outputs.items()}
    offset = 0
    for item in pending:
        n = len(item.samples)
        extras = {name: value[offset : offset + n] for name, value in merged.items() if name != "features"}
        if item.text is not None:
            extras["text"] = item.text
        writer.add(merged["features"][offset : offset + n], item.samples, extras)
        offset += n
        bar.update(1)


def add_extract_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``extract`` command's options (shared by the CLI entry point and :func:`extract_main`)."""
    parser.add_argument("--encoder", required=True, help="pixels:P[@S|@HxW], or a CLIP/SigLIP/LLaVA hub id or local folder")
    parser.add_argument("--images", required=True, help="a folder (searched recursively), a glob, or a text file with one image path per line (relative to that file)")
    parser.add_argument("--out", required=True, help="cache folder to create, or to resume")
    parser.add_argument("--layer", type=int, default=None, help="hidden_states index (default: CLIP -2, SigLIP -1, LLaVA checkpoint: its own)")
    parser.add_argument("--batch-size", type=int, default=32, help="crops per encoder call (default 32)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    parser.add_argument("--dtype", default="fp16", choices=("fp16", "bf16", "fp32"), help="storage precision (default fp16)")
    parser.add_argument("--anyres", action="store_true", help="LLaVA-style AnyRes: a base view plus tiles per image")
    parser.add_argument("--pinpoints", default=None, help="AnyRes canvases as HxW list, e.g. 336x672,672x336 (default per encoder family)")
    parser.add_argument("--store-attention", action="store_true", help="also store a per-token attention score (CLS attention for CLIP, attention received for SigLIP)")
    parser.add_argument("--text-boxes", default="auto", choices=TEXT_BOX_MODES, help="store per-patch text coverage from NAME.json sidecars (default auto)")
    parser.add_argument("--shard-size", type=int, default=256, help="samples per safetensors shard (default 256)")
    parser.add_argument("--num-workers", type=int, default=min(4, os.cpu_count() or 1), help="image decoding processes (default min(4, CPUs))")
    parser.add_argument("--max-images", type=int, default=None, help="only the first N images (in sorted order)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def run_extract(args: argparse.Namespace) -> Manifest:
    """Run :func:`extract` with parsed command-line arguments."""
    return extract(
        args.encoder, args.images, args.out,
        layer=args.layer, batch_size=args.batch_size, device=args.device, dtype=args.dtype,
        anyres=args.anyres, pinpoints=args.pinpoints, store_attention=args.store_attention,
        text_boxes=args.text_boxes, shard_size=args.shard_size, num_workers=args.num_workers,
        progress=not args.no_progress, max_images=args.max_images,
    )


def extract_main(argv: list[str] | None = None) -> int:
    """``token-reduction extract ...``: 0 on success, 1 with a one-line error otherwise."""
    parser = add_extract_arguments(argparse.ArgumentParser(prog="token-reduction extract", description=__doc__.splitlines()[0]))
    args = parser.parse_args(argv)
    try:
        manifest = run_extract(args)
    except (CacheError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"interrupted: {args.out} keeps what was finished; rerun the same command to resume", file=sys.stderr)
        return 130
    images = len({s["image"] for shard in manifest.shards for s in shard.samples})
    print(f"{args.out}: {manifest.num_samples} samples from {images} images "
          f"({manifest.num_tokens} tokens x {manifest.dim}), {len(manifest.skipped)} skipped")
    return 0


if __name__ == "__main__":
    raise SystemExit(extract_main())
