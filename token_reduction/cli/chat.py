"""``token-reduction chat``: ask a VLM about images or a short video while a selector prunes their tokens.

Prints the answer, then, per image, how many visual positions the LLM would have read without
pruning and how many it read; for a video, the same for the whole clip and then per frame::

    token-reduction chat --model llava-hf/llava-onevision-qwen2-0.5b-ov-hf --selector runs/selector \\
        --image page.png --prompt "What is the title?" --keep 0.25
    token-reduction chat --model llava-hf/llava-onevision-qwen2-0.5b-ov-hf --selector runs/selector \\
        --video clip.mp4 --frames 8 --temporal --prompt "What happens?" --keep 0.25

``--video`` takes a video file (needs PyAV: ``pip install av``) or a folder of frames.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from token_reduction.cli.reporting import ArgumentParser, reports_errors
from token_reduction.errors import UserError

PROG = "token-reduction chat"


def add_chat_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``chat`` options to ``parser`` (the CLI's subcommand parser, or a standalone one)."""
    parser.add_argument("--model", required=True, help="folder or hub id of a supported VLM (LLaVA, LLaVA-NeXT/OneVision, Qwen-VL, InternVL, Idefics3/SmolVLM, Gemma 3/4, Mistral3, ...)")
    parser.add_argument(
        "--selector", required=True, help="exported TokenSelector folder, a Hub repo id (owner/name), or a method name (random, pooling, norm, tome)"
    )
    parser.add_argument("--image", action="append", default=[], help="image file; repeat the option for several images")
    parser.add_argument(
        "--video", default=None, help="video file (needs PyAV: pip install av) or folder of frames; LLaVA-OneVision only"
    )
    parser.add_argument("--frames", type=int, default=8, help="frames sampled uniformly from --video (default 8)")
    parser.add_argument(
        "--temporal", action="store_true", help="video: spend the budget across frames by novelty instead of per frame"
    )
    parser.add_argument("--prompt", required=True, help="the question")
    parser.add_argument(
        "--keep",
        default=None,
        help="budget per crop / per frame: a fraction (0.5), a count (64), or omit for the selector's adaptive mode",
    )
    parser.add_argument("--threshold", type=float, default=None, help="keep-probability threshold for adaptive selectors")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="length limit of the answer")
    parser.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: CUDA when available)")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"], help="model weights dtype")
    return parser


def _share(before: int, after: int) -> str:
    return f"{after / before:.0%} kept" if before else "nothing to keep"


def run_chat(args: argparse.Namespace) -> int:
    """Answer ``args.prompt`` about ``args.image`` and/or ``args.video``; bad input raises :class:`UserError`."""
    from PIL import Image

    from token_reduction.vlm import build_prompt, load_pruned_llava, parse_keep
    from token_reduction.vlm.video import build_video_prompt, tokens_per_frame, video_inputs
    from token_reduction.extraction.video_frames import read_frames

    image_paths = list(args.image or [])
    video = getattr(args, "video", None)
    if not image_paths and video is None:
        raise UserError(PROG, "--image/--video", "give at least one --image or a --video")
    missing = [path for path in image_paths if not Path(path).is_file()]
    if missing:
        raise UserError(", ".join(missing), "--image", "no such image file")
    if video is not None and not Path(video).exists():
        raise UserError(video, "--video", "not found; pass a video file or a folder of frames")
    if getattr(args, "frames", 8) < 1:
        raise UserError(PROG, "--frames", "must be >= 1")
    keep = parse_keep(args.keep)
    frames = read_frames(video, args.frames) if video is not None else []
    pruned, processor = load_pruned_llava(
        args.model, args.selector, keep, args.threshold, args.device, args.dtype, temporal=getattr(args, "temporal", False)
    )
    if video is not None and not pruned.video_kwargs:
        raise UserError(args.model, "model_type", f"{pruned.family} takes no video input; use a LLaVA-OneVision model")
    images = [Image.open(path).convert("RGB") for path in image_paths]
    if video is None:
        prompt = build_prompt(processor, args.prompt, len(images))
        # One sample holding every image: OneVision treats 2+ images as a multi-image prompt.
        inputs = dict(processor(images=[images], text=[prompt], return_tensors="pt"))
    else:
        prompt = build_video_prompt(processor, args.prompt, 1, len(images))
        inputs = video_inputs(processor, frames, prompt, images, tokens_per_frame(pruned.config))
    inputs = {name: value.to(pruned.device) if isinstance(value, torch.Tensor) else value for name, value in inputs.items()}
    with torch.inference_mode():
        out = pruned.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False)
    prepared = pruned.last
    answer = processor.decode(out[0, prepared.input_ids.shape[1] :], skip_special_tokens=True).strip()
    print(answer)
    for index, (path, before, after) in enumerate(zip(image_paths, prepared.tokens_before, prepared.tokens_after)):
        print(f"image {index} ({Path(path).name}): {before} -> {after} visual tokens ({_share(before, after)})")
    for clip in prepared.videos:
        mode = "temporal" if clip.temporal else "per frame"
        print(
            f"video ({Path(video).name}, {len(clip.frames_before)} frames, {mode}): "
            f"{clip.before} -> {clip.after} visual tokens ({_share(clip.before, clip.after)})"
        )
        for index, (before, after) in enumerate(zip(clip.frames_before, clip.frames_after)):
            print(f"  frame {index}: {before} -> {after} visual tokens ({_share(before, after)})")
    return 0


@reports_errors(PROG)
def chat_main(argv: list[str] | None = None) -> int:
    """Entry point for ``token-reduction chat ...`` (``argv`` without the subcommand name)."""
    parser = ArgumentParser(
        prog=PROG,
        description="Ask a VLM about images or a short video while a selector prunes their visual tokens.",
    )
    return run_chat(add_chat_arguments(parser).parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(chat_main())
