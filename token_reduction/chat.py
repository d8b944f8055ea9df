"""``token-reduction chat``: ask a LLaVA model about images while a selector prunes their tokens.

Prints the answer, then, per image, how many visual positions the LLM would have read without
pruning and how many it read::

    token-reduction chat --model llava-hf/llava-onevision-qwen2-0.5b-ov-hf --selector runs/selector \\
        --image page.png --prompt "What is the title?" --keep 0.25
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch


def add_chat_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``chat`` options to ``parser`` (the CLI's subcommand parser, or a standalone one)."""
    parser.add_argument("--model", required=True, help="LLaVA-NeXT or LLaVA-OneVision folder or hub id")
    parser.add_argument(
        "--selector", required=True, help="exported TokenSelector folder, or a method name (random, pooling, norm, tome)"
    )
    parser.add_argument("--image", required=True, action="append", help="image file; repeat the option for several images")
    parser.add_argument("--prompt", required=True, help="the question")
    parser.add_argument(
        "--keep", default=None, help="budget per crop: a fraction (0.5), a count (64), or omit for the selector's adaptive mode"
    )
    parser.add_argument("--threshold", type=float, default=None, help="keep-probability threshold for adaptive selectors")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="length limit of the answer")
    parser.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: CUDA when available)")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"], help="model weights dtype")
    return parser


def run_chat(args: argparse.Namespace) -> int:
    """Answer ``args.prompt`` about ``args.image``; 0 on success, 2 on bad input."""
    from PIL import Image

    from token_reduction.llava import build_prompt, load_pruned_llava, parse_keep

    missing = [path for path in args.image if not Path(path).is_file()]
    if missing:
        print(f"error: image file(s) not found: {', '.join(missing)}", file=sys.stderr)
        return 2
    try:
        keep = parse_keep(args.keep)
        pruned, processor = load_pruned_llava(args.model, args.selector, keep, args.threshold, args.device, args.dtype)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    images = [Image.open(path).convert("RGB") for path in args.image]
    prompt = build_prompt(processor, args.prompt, len(images))
    inputs = processor(images=images, text=prompt, return_tensors="pt").to(pruned.device)
    with torch.inference_mode():
        out = pruned.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False)
    prepared = pruned.last
    answer = processor.decode(out[0, prepared.input_ids.shape[1] :], skip_special_tokens=True).strip()
    print(answer)
    for index, (path, before, after) in enumerate(zip(args.image, prepared.tokens_before, prepared.tokens_after)):
        print(f"image {index} ({Path(path).name}): {before} -> {after} visual tokens ({after / before:.0%} kept)")
    return 0


def chat_main(argv: list[str] | None = None) -> int:
    """Entry point for ``token-reduction chat ...`` (``argv`` without the subcommand name)."""
    parser = argparse.ArgumentParser(
        prog="token-reduction chat", description="Ask a LLaVA model about images while a selector prunes their visual tokens."
    )
    return run_chat(add_chat_arguments(parser).parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(chat_main())
