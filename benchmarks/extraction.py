"""Extraction: images/s of ``token_reduction.extraction.run.extract`` vs the encoder's forward alone.

Two encoders: ``pixels:16`` (no weights: the pipeline itself) and a tiny random ``transformers``
CLIP vision tower saved to a temporary folder like a hub checkpoint (no download). Each extract
call writes a fresh cache of the same default-set images (PNG decode, resize, encode, fp16
shards, manifest). Beside it, ``Encoder.encode`` alone runs on ready-made pixel tensors of the
same count and batch size; their ratio is the share of the pipeline's time spent encoding.
"""

from __future__ import annotations

import shutil
from itertools import count
from typing import Any

import torch

from token_reduction.encoders import load_encoder
from token_reduction.extraction.run import extract

from .timing import interleaved, median, paired_ratio, spread

BATCH = 32


def save_tiny_clip(folder: Any, image: int, patch: int, hidden: int, layers: int) -> Any:
    """A random CLIP vision tower + image processor, saved where ``load_encoder`` can read it."""
    from transformers import CLIPVisionConfig, CLIPVisionModel
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    torch.manual_seed(0)
    config = CLIPVisionConfig(
        image_size=image, patch_size=patch, hidden_size=hidden, intermediate_size=4 * hidden,
        num_hidden_layers=layers, num_attention_heads=4,
    )  # fmt: skip
    CLIPVisionModel(config).eval().save_pretrained(folder)
    CLIPImageProcessorPil(size={"shortest_edge": image}, crop_size={"height": image, "width": image}).save_pretrained(folder)
    return folder


def run(ctx: Any) -> dict[str, Any]:
    s = ctx.sizes
    images = ctx.images()
    n = min(s.extract_images, s.images)
    image, patch, hidden, layers = s.tiny_clip
    clip_dir = save_tiny_clip(ctx.work / "tiny-clip", image, patch, hidden, layers)
    encoders = {
        s.encoder: load_encoder(s.encoder, device=ctx.device),
        f"tiny CLIP ({image}px/{patch}, hidden {hidden}, {layers} layers)": load_encoder(str(clip_dir), device=ctx.device),
    }
    outputs = ctx.work / "extract-runs"
    serial = count()

    def extracting(encoder: Any):
        def call() -> None:
            extract(encoder, images, outputs / f"run-{next(serial)}", batch_size=BATCH, progress=False, max_images=n, num_workers=0)

        return call

    def encoding(encoder: Any):
        height, width = encoder.image_size
        pixels = torch.randn(n, 3, height, width, generator=torch.Generator().manual_seed(0)).to(encoder.device)

        def call() -> None:
            for start in range(0, n, BATCH):
                encoder.encode(pixels[start : start + BATCH])

        return call

    candidates = {}
    for name, encoder in encoders.items():
        candidates[f"extract {name}"] = extracting(encoder)
        candidates[f"encode {name}"] = encoding(encoder)
    samples = interleaved(candidates, s.rounds)
    shutil.rmtree(outputs, ignore_errors=True)

    rows, results = [], {}
    for name, encoder in encoders.items():
        ext, enc = samples[f"extract {name}"], samples[f"encode {name}"]
        share = paired_ratio(enc, ext)
        results[name] = {
            "images": n,
            "tokens": encoder.num_tokens,
            "dim": encoder.dim,
            "extract_images_per_s": n / median(ext),
            "encode_only_images_per_s": n / median(enc),
            "encoder_share_of_extract": share,
            "extract_s": ext,
            "encode_s": enc,
        }
        rows.append([
            name, f"{encoder.num_tokens} x {encoder.dim}", f"{n / median(ext):,.1f}", f"{spread(ext):.0%}",
            f"{n / median(enc):,.1f}", f"{100 * share:.0f}%",
        ])  # fmt: skip
    names = list(encoders)
    slower = paired_ratio(samples[f"extract {names[1]}"], samples[f"extract {names[0]}"])
    return {
        "title": "Feature extraction throughput",
        "summary": (
            f"`extract()` over {n} default-set images ({s.image_size or 336}px PNGs), batch {BATCH}, num_workers=0, "
            f"fp16 cache, {s.rounds} interleaved rounds; tiny CLIP extraction takes {slower:.2f}x the time of `{names[0]}`."
        ),
        "encoders": results,
        "clip_vs_pixels_time_ratio": slower,
        "tables": [
            {
                "title": "Images/s",
                "columns": ["encoder", "tokens x dim", "extract img/s", "spread", "encoder alone img/s", "encoder share of extract time"],
                "rows": rows,
            }
        ],
        "notes": [
            "The encoder-share column is (encode-only time) / (extract time), paired per round: the rest is PNG decoding, "
            "resizing/normalising, the finite check and fp16 shard + manifest writes.",
            "Image decoding runs in the main process (num_workers=0); `--num-workers` of the CLI overlaps it with encoding.",
        ],
        "targets": [],
    }
