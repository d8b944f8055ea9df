"""Write the suite's results: ``results.json`` and a markdown ``RESULTS.md``, each atomically.

Each file is written to a temporary file in the same folder and moved into place with
``os.replace``, so a reader (or a killed run) never sees a half-written file.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

MARKDOWN_NAME = "RESULTS.md"
COMPANIONS = ("results.json", "results-full-cpu.json")  # every mode's results in one folder share its RESULTS.md


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def load(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """Earlier results at ``path``, or ``None`` when there are none (or they are unreadable)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def write(results: Mapping[str, Any], out: str | os.PathLike[str]) -> tuple[Path, Path]:
    """``out`` (JSON) and ``RESULTS.md`` in the same folder.

    ``RESULTS.md`` holds one section per results file there (``results.json`` for ``--quick`` /
    ``--full`` / ``--smoke``, ``results-full-cpu.json`` for ``--full-cpu``), so running one mode
    does not erase the other's figures.
    """
    out = Path(out)
    json_path = atomic_write_text(out, json.dumps(results, indent=2, default=str) + "\n")
    documents = [results] + [doc for name in COMPANIONS if out.name != name and (doc := load(out.with_name(name)))]
    documents.sort(key=lambda doc: doc.get("mode") == "full-cpu")
    md_path = atomic_write_text(out.with_name(MARKDOWN_NAME), "\n".join(markdown(doc) for doc in documents))
    return json_path, md_path


# ------------------------------------------------------------------------------------ markdown
def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def table(columns: list[str], rows: list[list[Any]], align: list[str] | None = None) -> list[str]:
    align = align or ["---" if i == 0 else "---:" for i in range(len(columns))]
    lines = ["| " + " | ".join(_cell(c) for c in columns) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def _verdict(met: bool | None) -> str:
    return "n/a" if met is None else ("**met**" if met else "**not met**")


def profile_lines(profile: Mapping[str, Any]) -> list[str]:
    """A ``top``/``diff`` profile (see ``benchmarks.timing``) as a short table with a caption."""
    data = profile["data"]
    lines = [f"*{profile['title']}*", ""]
    if profile["kind"] == "top":
        share = data.get("ops_share_of_wall")
        caption = f"wall {data['wall_ms']:.1f} ms per call, profiled ops {data['ops_ms']:.1f} ms"
        if share is not None:
            caption += f" ({100 * share:.0f}% of wall; the rest is Python/framework code the op profiler does not see)"
        lines += [caption, ""]
        rows = [[f"`{op['op']}`", f"{op['self_ms']:.2f}", f"{100 * op['share']:.1f}%", f"{op['calls']:g}"] for op in data["top"]]
        lines += table(["op (torch.profiler key_averages)", "self ms/call", "share of op time", "calls"], rows)
    else:
        lines += [
            f"wall {data['wall_ms']['slow']:.1f} vs {data['wall_ms']['fast']:.1f} ms ({data['extra_wall_ms']:+.1f} ms) in one "
            f"profiled run each; op time {data['ops_ms']['slow']:.1f} vs {data['ops_ms']['fast']:.1f} ms. Ops the slower loop "
            f"calls more often than the other add {data['added_ops_ms']:+.1f} ms; the rest of the difference is Python/framework "
            "code (invisible to the op profiler) and run-to-run noise in the shared compute.",
            "",
        ]
        rows = [[f"`{op['op']}`", f"{op['extra_ms']:+.2f}", f"{op['extra_calls']:+g}"] for op in data["top"]]
        lines += table(["op called more often", "extra self ms", "extra calls"], rows) if rows else ["(no op is called more often)"]
    return lines + [""]


def markdown(results: Mapping[str, Any]) -> str:
    m = results["machine"]
    device = m.get("gpu", m["device"])
    lines = [
        f"# Benchmark results ({results['mode']} mode)",
        "",
        f"Measured {results['date']} on {m['cpu']} ({m['cores']} cores; {m['torch_threads']} torch thread(s): "
        f"{m.get('threads_reason', 'torch default')}), "
        f"device {device}; torch {m['torch']}, lightning {m['lightning']}, transformers {m['transformers']}, "
        f"Python {m['python']}. Load average (1, 5, 15 min) at start: {', '.join(f'{x:.2f}' for x in m.get('load_average_at_start', []))}; "
        f"at end: {', '.join(f'{x:.2f}' for x in m.get('load_average_at_end', []))} (other jobs share this machine).",
        "",
        f"Command: `{results['command']}` ({results['wall_s']:.0f} s in all). Every ratio compares two things measured "
        "side by side in this run, alternating them round by round, as the median of the per-round ratios; absolute "
        "times are medians too.",
        "",
    ]
    prepare = results.get("prepare_s") or {}
    if prepare:
        lines += [
            "Shared preparation, counted in the first benchmark that needed it: "
            + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in prepare.items())
            + ".",
            "",
        ]
    if results["mode"] not in ("full", "full-cpu"):
        lines += [
            f"**{results['mode'].upper()} MODE**: reduced sizes (see each section); figures marked *extrapolated* were "
            "not measured at full size. Run `python -m benchmarks --full` for measured full-size figures.",
            "",
        ]
    lines += ["## Targets", ""]
    rows = [
        [t["benchmark"], t["name"], t["target"], t["value_text"], _verdict(t.get("met"))]
        for t in results.get("targets", [])
    ]
    lines += table(["benchmark", "figure", "target", "measured", "verdict"], rows) + [""]
    for number, (name, entry) in enumerate(results["benchmarks"].items(), start=1):
        lines += [f"## {number}. {entry.get('title', name)} (`{name}`)", ""]
        if entry.get("status") != "ok":
            lines += [f"FAILED: `{entry.get('error')}`", ""]
            continue
        if entry.get("summary"):
            lines += [entry["summary"], ""]
        for tab in entry.get("tables", []):
            if tab.get("title"):
                lines += [f"**{tab['title']}**", ""]
            lines += table(tab["columns"], tab["rows"]) + [""]
        for note in entry.get("notes", []):
            lines.append(f"- {note}")
        if entry.get("notes"):
            lines.append("")
        for image in entry.get("images", []):
            lines += [f"![{image['title']}]({image['path']})", ""]
        for target in entry.get("targets", []):
            if target.get("met") is False:
                lines += [f"### Why {target['name']} misses its target ({target['target']})", ""]
                if target.get("explanation"):
                    lines += [target["explanation"], ""]
                for profile in target.get("profiles", []):
                    lines += profile_lines(profile)
        threads = entry.get("torch_threads", m["torch_threads"])
        lines += [f"<sub>{name}: {entry.get('wall_s', 0):.1f} s, measured {entry.get('date', results['date'])}, {threads} torch thread(s)</sub>", ""]
    return "\n".join(lines).rstrip() + "\n"
