"""Build the embedded default image set: ``python data/build_default_set.py --out data/default``.

A thin wrapper over :func:`token_reduction.images.default_set.build_default_set`; the defaults for
every option come from ``data/default_set.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from token_reduction.images.default_set import build_default_set, default_set_dir, load_index  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: data/default)")
    parser.add_argument("--num-images", type=int, default=None, help="total images (default: from the spec)")
    parser.add_argument("--size", type=int, default=None, help="square image side in pixels (default: from the spec)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: from the spec)")
    parser.add_argument("--spec", type=Path, default=None, help="spec JSON (default: data/default_set.json)")
    parser.add_argument("--force", action="store_true", help="rebuild even if a matching build exists")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    out = build_default_set(args.out or default_set_dir(), args.num_images, args.size, args.seed,
                            progress=not args.quiet, spec_path=args.spec, force=args.force)
    entries = load_index(out)
    kinds = Counter(e["kind"] for e in entries)
    splits = Counter(e["split"] for e in entries)
    print(f"{out}: {len(entries)} images in {time.perf_counter() - start:.1f}s")
    print("  kinds:  " + ", ".join(f"{k}={v}" for k, v in sorted(kinds.items())))
    print("  splits: " + ", ".join(f"{k}={v}" for k, v in sorted(splits.items())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
