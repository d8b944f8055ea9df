"""``python -m benchmarks [--quick|--full|--full-cpu|--smoke] [--only NAME,...] [--device cpu|cuda] [--out PATH]``."""

from __future__ import annotations

import argparse
import os
import shlex
import sys

from benchmarks import BENCHMARKS, FULL_CPU_BENCHMARKS, default_out, run_suite


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", dest="mode", action="store_const", const="quick", help="reduced sizes for 2 CPU cores, < 5 min (default)")
    mode.add_argument("--full", dest="mode", action="store_const", const="full", help="real sizes, full-depth towers (GPU advised)")
    mode.add_argument(
        "--full-cpu", dest="mode", action="store_const", const="full-cpu",
        help="real-size VLMs, selector cost and batched generate on this CPU, ~25 min on 2 cores (writes results-full-cpu.json)",
    )  # fmt: skip
    mode.add_argument("--smoke", dest="mode", action="store_const", const="smoke", help="toy sizes, seconds: checks the suite runs")
    parser.add_argument("--only", default=None, help=f"comma-separated subset of: {','.join(BENCHMARKS)} (--full-cpu: {','.join(FULL_CPU_BENCHMARKS)})")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--out", default=None, help="results JSON (default benchmarks/results.json, --full-cpu: results-full-cpu.json); RESULTS.md and results/ go beside it")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default on CPU: 1, i.e. per-core figures; on CUDA: torch's)")
    parser.add_argument("--work", default=None, help="keep the images/cache/temporary files in this folder (default: a temp folder)")
    args = parser.parse_args(argv)
    only = [name.strip() for name in args.only.split(",") if name.strip()] if args.only else None
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    command = "python -m benchmarks " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    try:
        results = run_suite(args.mode or "quick", only=only, device=args.device, out=args.out, work=args.work, command=command.strip(), threads=args.threads)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print()
    for target in results["targets"]:
        verdict = "n/a" if target.get("met") is None else ("met" if target["met"] else "NOT MET")
        print(f"[{verdict:>7}] {target['benchmark']}: {target['name']}: {target['value_text']} (target {target['target']})")
    failed = [name for name, entry in results["benchmarks"].items() if entry.get("status") != "ok"]
    out = args.out or str(default_out(args.mode or "quick"))
    print(f"\nwrote {out} and {os.path.join(os.path.dirname(out) or '.', 'RESULTS.md')} in {results['wall_s']:.0f} s")
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
