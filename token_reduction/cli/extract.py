"""``token-reduction extract``: the command line of :func:`token_reduction.extraction.run.extract`."""

from __future__ import annotations

import argparse
import os
import sys

from lightning.fabric.utilities.rank_zero import rank_zero_only

from token_reduction.cache.manifest import Manifest
from token_reduction.cli.reporting import ArgumentParser, UsageError, reports_errors
from token_reduction.extraction.inputs import TEXT_BOX_MODES
from token_reduction.extraction.run import __doc__ as EXTRACT_DOC
from token_reduction.extraction.run import extract

PROG = "token-reduction extract"


def add_extract_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``extract`` command's options (shared by the CLI entry point and :func:`extract_main`)."""
    parser.add_argument("--encoder", required=True, help="pixels:P[@S|@HxW]; a CLIP/SigLIP/LLaVA hub id or local folder; or a local VLM checkpoint folder PATH[@S|@HxW] of any supported family (Qwen, InternVL, Idefics3/SmolVLM, Gemma, Mistral3, ...)")
    parser.add_argument("--images", required=True, help="a folder (searched recursively), a glob, or a text file with one image path per line (relative to that file); local or an fsspec URL (s3://, gs://, ...)")
    parser.add_argument("--out", required=True, help="cache folder to create, or to resume; local or an fsspec URL (on several nodes: a shared folder or a bucket)")
    parser.add_argument("--layer", type=int, default=None, help="hidden_states index (default: CLIP -2, SigLIP -1, LLaVA checkpoint: its own)")
    parser.add_argument("--batch-size", type=int, default=32, help="crops per encoder call (default 32)")
    parser.add_argument("--device", default="auto", help="one device: auto, cpu, cuda or cuda:N (default auto); see --accelerator for more")
    parser.add_argument("--accelerator", default=None, help="Lightning accelerator (cpu, gpu, auto); with --devices/--strategy/--num-nodes instead of --device")
    parser.add_argument("--devices", default=None, help="Lightning devices per node: N, -1 (all) or a list 0,2 (default 1)")
    parser.add_argument("--strategy", default="auto", help="Lightning strategy: auto, ddp, ddp_spawn, ... (default auto: ddp for several devices)")
    parser.add_argument("--num-nodes", type=int, default=1, help="nodes (default 1); launch one process per device with torchrun or srun")
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
    accelerator = getattr(args, "accelerator", None)
    if accelerator is not None and args.device != "auto":
        raise UsageError(PROG, "--device/--accelerator", "give --device (one device) or --accelerator with --devices, not both")
    return extract(
        args.encoder, args.images, args.out,
        layer=args.layer, batch_size=args.batch_size, device=args.device, dtype=args.dtype,
        anyres=args.anyres, pinpoints=args.pinpoints, store_attention=args.store_attention,
        text_boxes=args.text_boxes, shard_size=args.shard_size, num_workers=args.num_workers,
        progress=not args.no_progress, max_images=args.max_images,
        accelerator=accelerator, devices=getattr(args, "devices", None),
        num_nodes=getattr(args, "num_nodes", 1), strategy=getattr(args, "strategy", "auto"),
    )


@reports_errors(PROG)
def extract_main(argv: list[str] | None = None) -> int:
    """``token-reduction extract ...``: 0 on success; an anticipated error is one line and exit code 2."""
    parser = add_extract_arguments(ArgumentParser(prog=PROG, description=EXTRACT_DOC.splitlines()[0]))
    args = parser.parse_args(argv)
    try:
        manifest = run_extract(args)
    except KeyboardInterrupt:
        print(f"interrupted: {args.out} keeps what was finished; rerun the same command to resume", file=sys.stderr)
        return 130
    if rank_zero_only.rank != 0:  # every rank returns the merged manifest; one of them reports it
        return 0
    images = len({s["image"] for shard in manifest.shards for s in shard.samples})
    print(f"{args.out}: {manifest.num_samples} samples from {images} images "
          f"({manifest.num_tokens} tokens x {manifest.dim}), {len(manifest.skipped)} skipped")
    return 0


if __name__ == "__main__":
    raise SystemExit(extract_main())
