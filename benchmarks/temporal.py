"""Temporal vs per-frame token selection on a synthetic clip, scored by reconstruction.

The clip is made offline from a photo bundled with scikit-image, with moving text rendered in
matplotlib's DejaVuSans.ttf:

* ``pan_zoom``: a 320x320 camera window pans left to right over the photo during the first half
  of the clip, then zooms in (window 320 -> 192 px) on where the pan ended; the caption
  "When less is enough" slides left to right along the bottom of the frame throughout;
* ``static_camera``: the same caption slides over a still camera (only the text moves).

Frames are encoded with ``pixels:16@224`` (14x14 = 196 tokens of 768 normalised pixels each).
At each budget (``keep`` per frame: 0.1, 0.25, 0.5) both modes spend the same total:

* **per frame**: the base method keeps ``keep`` of every frame on its own;
* **temporal**: :class:`~token_reduction.selection.temporal.TemporalSelection` with its defaults
  (product fusion, budgets by novelty, at least one token per frame), same base method;
* **temporal, even budgets** (ablation): the same with ``uniform_share=1``, i.e. per-frame
  budgets, so only the choice *within* each frame uses novelty.

Reconstruction (declared, identical for both modes): :func:`hold_reconstruction`, every dropped
token is the most recent kept token at its position, else its frame's mean kept token. Reported:
the mean cosine between reconstructed and original tokens over the whole clip (kept tokens count
as 1) and over the dropped tokens only. Bases: ``norm`` (feature norm) and ``random`` (mean over
seeds 0-2). Run ``python benchmarks/temporal.py [--quick]``; results go to
``benchmarks/results/temporal.json`` and a markdown table is printed.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from token_reduction.encoders import load_encoder
from token_reduction.selection import get_method
from token_reduction.selection.temporal import TemporalSelection, hold_reconstruction

KEEPS = (0.1, 0.25, 0.5)
ENCODER = "pixels:16@224"
CAPTION = "When less is enough"
RESULTS = Path(__file__).resolve().parent / "results" / "temporal.json"
WINDOW, ZOOMED, SIZE = 320, 192, 224


# ----------------------------------------------------------------------------------- the clip
def font(size: int) -> ImageFont.FreeTypeFont:
    import matplotlib

    return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"), size)


def photo(name: str) -> Image.Image:
    from skimage import data

    return Image.fromarray(getattr(data, name)()).convert("RGB")


def camera(kind: str, index: int, frames: int, width: int, height: int) -> tuple[float, float, float]:
    """``(left, top, side)`` of the camera window for frame ``index``."""
    top = (height - WINDOW) / 2
    if kind == "static_camera":
        return (width - WINDOW) / 2, top, WINDOW
    half = max(frames // 2, 1)
    span = width - WINDOW
    if index < half:  # pan
        return span * index / max(half - 1, 1), top, WINDOW
    progress = (index - half + 1) / max(frames - half, 1)  # zoom on the pan's end point
    side = WINDOW - (WINDOW - ZOOMED) * progress
    centre_x, centre_y = span + WINDOW / 2, top + WINDOW / 2
    return centre_x - side / 2, centre_y - side / 2, side


def make_clip(kind: str = "pan_zoom", frames: int = 16, source: str = "astronaut") -> list[Image.Image]:
    """The synthetic clip (see the module docstring): ``frames`` RGB images of ``SIZE`` x ``SIZE``."""
    picture = photo(source)
    typeface = font(22)
    text_width = ImageDraw.Draw(picture).textlength(CAPTION, font=typeface)
    clip = []
    for index in range(frames):
        left, top, side = camera(kind, index, frames, *picture.size)
        frame = picture.resize((SIZE, SIZE), Image.BICUBIC, box=(left, top, left + side, top + side))
        x = -text_width + (SIZE + text_width) * (index + 0.5) / frames  # slides across the frame
        ImageDraw.Draw(frame).text((x, SIZE - 40), CAPTION, font=typeface, fill="white", stroke_width=2, stroke_fill="black")
        clip.append(frame)
    return clip


# ---------------------------------------------------------------------------------- measuring
def clip_cosine(frames: torch.Tensor, keep_mask: torch.Tensor) -> tuple[float, float]:
    """Mean cosine of :func:`hold_reconstruction` vs the original: whole clip, dropped tokens only."""
    cos = F.cosine_similarity(hold_reconstruction(frames, keep_mask), frames, dim=-1)
    dropped = cos[~keep_mask]
    return float(cos.mean()), float(dropped.mean()) if dropped.numel() else 1.0


def measure(frames: torch.Tensor, grid: tuple[int, int], base_name: str, keep: float, seed: int) -> dict[str, Any]:
    def base() -> Any:
        return get_method(base_name, seed=seed) if base_name == "random" else get_method(base_name)

    generator = torch.Generator().manual_seed(seed)
    per_frame = base().select(frames, keep, grid=grid, generator=generator).keep_mask(frames.shape[1])
    method = TemporalSelection(base())
    temporal = method.select(frames, keep, grid=grid, generator=torch.Generator().manual_seed(seed)).keep_mask(frames.shape[1])
    even = TemporalSelection(base(), uniform_share=1.0)
    even_mask = even.select(frames, keep, grid=grid, generator=torch.Generator().manual_seed(seed)).keep_mask(frames.shape[1])
    whole_pf, dropped_pf = clip_cosine(frames, per_frame)
    whole_t, dropped_t = clip_cosine(frames, temporal)
    return {
        "kept_per_frame": int(per_frame.sum()), "kept_temporal": int(temporal.sum()),
        "cosine_per_frame": whole_pf, "cosine_temporal": whole_t,
        "cosine_dropped_per_frame": dropped_pf, "cosine_dropped_temporal": dropped_t,
        "cosine_temporal_even_budgets": clip_cosine(frames, even_mask)[0],
        "temporal_frame_budgets": method.last_budgets.tolist(),
    }  # fmt: skip


def run(quick: bool = False, output: Path | None = RESULTS) -> dict[str, Any]:
    """Measure every clip x base x budget; write ``output`` (JSON) unless it is ``None``."""
    torch.manual_seed(0)
    encoder = load_encoder(ENCODER)
    frames_count = 8 if quick else 16
    clips = [("pan_zoom", "astronaut")] if quick else [("pan_zoom", "astronaut"), ("pan_zoom", "coffee"), ("static_camera", "astronaut")]
    bases = {"norm": [0]} if quick else {"norm": [0], "random": [0, 1, 2]}
    start = time.perf_counter()
    rows = []
    for kind, source in clips:
        frames = encoder(encoder.preprocess(make_clip(kind, frames_count, source)))["features"].float()
        step = F.cosine_similarity(frames[1:], frames[:-1], dim=-1).mean()
        for base_name, seeds in bases.items():
            for keep in KEEPS:
                runs = [measure(frames, encoder.grid, base_name, keep, seed) for seed in seeds]
                row: dict[str, Any] = {
                    "clip": kind, "photo": source, "base": base_name, "keep": keep, "seeds": seeds,
                    "frames": frames_count, "tokens_per_frame": int(frames.shape[1]),
                    "mean_cosine_to_previous_frame": float(step),
                }  # fmt: skip
                for key in ("kept_per_frame", "kept_temporal"):
                    row[key] = runs[0][key]
                for key in ("cosine_per_frame", "cosine_temporal", "cosine_temporal_even_budgets", "cosine_dropped_per_frame", "cosine_dropped_temporal"):
                    row[key] = float(np.mean([r[key] for r in runs]))
                row["temporal_frame_budgets"] = runs[0]["temporal_frame_budgets"]
                rows.append(row)
    results = {
        "encoder": ENCODER,
        "quick": quick,
        "reconstruction": "hold: most recent kept token at the same position, else the frame's mean kept token",
        "temporal": {"fusion": "product", "min_per_frame": 1, "uniform_share": 0.0},
        "rows": rows,
        "seconds": round(time.perf_counter() - start, 2),
        "machine": f"{platform.system()} {platform.machine()}, torch {torch.__version__}",
    }
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(results, indent=2) + "\n")
    return results


def markdown(results: dict[str, Any]) -> str:
    lines = [
        "| clip | base | keep | kept tokens | cosine per-frame | cosine temporal | temporal, even budgets | dropped-only per-frame | dropped-only temporal |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in results["rows"]:
        lines.append(
            f"| {row['clip']} ({row['photo']}) | {row['base']} | {row['keep']:.2f} | {row['kept_temporal']} / "
            f"{row['frames'] * row['tokens_per_frame']} | {row['cosine_per_frame']:.3f} | {row['cosine_temporal']:.3f} | "
            f"{row['cosine_temporal_even_budgets']:.3f} | "
            f"{row['cosine_dropped_per_frame']:.3f} | {row['cosine_dropped_temporal']:.3f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 frames, one clip, the norm base only")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    print(markdown(run(quick=args.quick, output=args.output)))


if __name__ == "__main__":
    main()
