"""``python -m benchmarks.rerender RESULTS_JSON``: rebuild a finished run's tables without measuring again.

The full-size benchmarks keep every raw sample in their results JSON. This re-renders the
``vlm_ttft`` tables from those samples and re-joins the ``selector_cost`` times with the quality
files now in ``benchmarks/results/`` (training a trunk for its quality takes longer than timing it,
so a quality file added after the timing run - a wide trunk at its own learning rate - is joined
without timing the towers again). Times stay the run's own; the JSON and RESULTS.md are rewritten.
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from . import report as files
from .selector_cost import report as selector_cost_report
from .selector_overhead import TOWERS
from .trunks import VARIANTS
from .vlm_ttft_report import entry as vlm_ttft_entry


def rerender(path: Path) -> dict[str, Any]:
    results = json.loads(path.read_text())
    smoke = results["mode"] == "smoke"
    benchmarks = results["benchmarks"]
    stamp = f"Tables re-rendered {datetime.now(timezone.utc).isoformat(timespec='seconds')} from this run's samples (`python -m benchmarks.rerender`)."
    if benchmarks.get("vlm_ttft", {}).get("status") == "ok":
        old = benchmarks["vlm_ttft"]
        old.update(vlm_ttft_entry(old["cases"], smoke))
        old["notes"].append(stamp)
    if benchmarks.get("selector_cost", {}).get("status") == "ok":
        old = benchmarks["selector_cost"]
        towers = [next(t for t in TOWERS if t.key == m["tower"]) for m in old["measurements"]]
        variants = {key: VARIANTS[key] for key in dict.fromkeys(row.get("variant", key) for key, row in old["rows"].items())}
        half = sorted({name.split("/")[0] for m in old["measurements"] for name in m["selectors"] if not name.endswith("/float32")})
        old.update(selector_cost_report(smoke, towers, old["measurements"], variants, half, old["shipped"]))
        old["notes"].append(stamp.replace("Tables re-rendered", "Quality re-joined"))
    results["targets"] = [
        {"benchmark": name, **{k: v for k, v in target.items() if k not in ("profiles", "explanation")}}
        for name, entry in benchmarks.items()
        for target in entry.get("targets", [])
    ]
    files.write(results, path)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.rerender", description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="a results JSON, e.g. benchmarks/results-full-cpu.json")
    results = rerender(parser.parse_args(argv).results)
    cost = results["benchmarks"].get("selector_cost", {})
    print(f"rewrote {parser.parse_args(argv).results}; selector trunk recommended: {cost.get('recommended')}, shipped: {cost.get('shipped')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
