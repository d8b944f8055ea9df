"""Tables and targets of :mod:`benchmarks.vlm_ttft`, as a suite entry (see ``benchmarks/report.py``)."""

from __future__ import annotations

from typing import Any

from .timing import paired_ratio, spread
from .vlm_ttft import KEEPS, PREFILL_TARGETS, TTFT_TARGETS

TARGET_SELECTOR_PCT = 5.0


def _mib(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f}"


def selector_share(config: dict[str, Any]) -> float:
    """Selector time as a % of the tower's, paired within each call."""
    samples = config["samples"]
    return 100 * paired_ratio([s["stages"]["selector"] for s in samples], [s["stages"]["vision tower"] for s in samples])


def tower_spread(result: dict[str, Any]) -> float:
    """How much the vision tower's time varied over every call of a case, (max - min) / median.

    Every call runs the same tower on the same pixels, so this is the machine's own noise: ratios
    closer to 1 than this are not measured differences.
    """
    times = [s["stages"]["vision tower"] for c in result["configs"].values() for s in c["samples"]]
    return spread(times)


def case_table(result: dict[str, Any]) -> dict[str, Any]:
    rows = []
    for name, c in result["configs"].items():
        st = c["stages_s"]
        share = f" ({selector_share(c):.1f}%)" if st["selector"] > 0 else ""
        rows.append([
            name, c["visual_tokens"], c["llm_tokens"], f"{c['ttft_s']:.2f}", f"{c['ttft_speedup']:.2f}x", f"{st['vision tower']:.2f}",
            f"{st['selector']:.3f}{share}", f"{st['projector']:.3f}", f"{st['LLM']:.2f}", f"{c['prefill_speedup']:.2f}x",
            f"{st['other']:.2f}", _mib(c["peak_mib"]), f"{c['kv_cache_mib']:.1f}",
        ])  # fmt: skip
    return {
        "title": f"{result['title']}, {result['label']} ({result['visual_tokens_unpruned']} visual tokens; {result['rounds']} round(s), "
        f"{result['dtype']}, {result['params'] / 1e9:.2f}B parameters; the tower's time, the same work in every call, varied "
        f"{100 * tower_spread(result):.0f}%)",
        "columns": ["call", "visual tokens", "LLM tokens", "TTFT s", "TTFT speed-up", "tower s", "selector s (% of tower)",
                    "projector s", "LLM prefill s", "prefill speed-up", "other s", "peak MiB", "KV cache MiB"],
        "rows": rows,
    }  # fmt: skip


def overview_table(results: list[dict[str, Any]]) -> dict[str, Any]:
    rows = []
    for r in results:
        c = r["configs"]
        rows.append(
            [f"{r['title']}, {r['image'][0]}x{r['image'][1]}", r["visual_tokens_unpruned"]]
            + [f"{c[f'keep {k:g}']['ttft_speedup']:.2f}x" for k in KEEPS]
            + [f"{c['adaptive']['ttft_speedup']:.2f}x ({c['adaptive']['visual_tokens']} kept)"]
            + [f"{c[f'keep {k:g}']['prefill_speedup']:.2f}x" for k in KEEPS[1:]]
            + [f"{selector_share(c['keep 1']):.1f}%", f"{100 * tower_spread(r):.0f}% ({r['rounds']} round{'s' if r['rounds'] > 1 else ''})"]
        )
    return {
        "title": "Every case: TTFT speed-up vs the unpatched model, LLM prefill speed-up vs keep 1.0, selector time as % of the tower",
        "columns": ["model, image", "visual tokens", *[f"TTFT keep {k:g}" for k in KEEPS], "TTFT adaptive",
                    *[f"prefill keep {k:g}" for k in KEEPS[1:]], "selector / tower", "noise: tower time spread"],
        "rows": rows,
    }  # fmt: skip


def ceiling_explanation(result: dict[str, Any], keep: str) -> str:
    """Why TTFT cannot reach a target: the stages pruning does not shorten, against the whole call."""
    full = result["configs"]["unpatched"]
    pruned = result["configs"][keep]
    fixed = pruned["stages_s"]["vision tower"] + pruned["stages_s"]["selector"] + pruned["stages_s"]["projector"]
    tower_share = 100 * full["stages_s"]["vision tower"] / full["ttft_s"]
    return (
        f"Pruning only shortens the LLM's input. In the unpatched call the vision tower alone takes "
        f"{full['stages_s']['vision tower']:.2f} s of {full['ttft_s']:.2f} s ({tower_share:.0f}%); at {keep} the tower, selector and "
        f"projector still take {fixed:.2f} s, so even an LLM that cost nothing would give at most "
        f"{full['ttft_s'] / fixed:.2f}x. The stage columns of the table above are the profile: the LLM prefill itself falls "
        f"{pruned['prefill_speedup']:.2f}x. On this {result['title']} the LLM is small next to its tower; larger LLMs (the Qwen "
        "and Gemma rows, and the 7B shapes of `benchmarks/gpu_run.py`) give pruning more to save."
    )


def targets(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    main = results[0]  # LLaVA-OneVision, 384x384: the case the targets are set on
    where = f"{main['title']}, {main['image'][0]}x{main['image'][1]}"
    out = []
    share = selector_share(main["configs"]["keep 1"])
    out.append({
        "name": f"selector time at the default trunk, % of the tower ({where})", "target": f"<= {TARGET_SELECTOR_PCT:g}%",
        "value": share, "value_text": f"{share:.1f}%", "met": share <= TARGET_SELECTOR_PCT,
    })  # fmt: skip
    for keep, goal in TTFT_TARGETS.items():
        value = main["configs"][keep]["ttft_speedup"]
        target = {"name": f"TTFT at {keep} vs unpatched ({where})", "target": f">= {goal:g}x", "value": value,
                  "value_text": f"{value:.2f}x", "met": value >= goal}  # fmt: skip
        if value < goal:
            target["explanation"] = ceiling_explanation(main, keep)
        out.append(target)
    for keep, goal in PREFILL_TARGETS.items():
        value = main["configs"][keep]["prefill_speedup"]
        out.append({"name": f"LLM prefill at {keep} vs keep 1.0 ({where})", "target": f">= {goal:g}x", "value": value,
                    "value_text": f"{value:.2f}x", "met": value >= goal})  # fmt: skip
    return out


def entry(results: list[dict[str, Any]], smoke: bool) -> dict[str, Any]:
    main = results[0]
    paper = main["configs"].get("keep 1, paper-width selector")
    notes = [
        "TTFT: one whole call as a user makes it, `model(**inputs, logits_to_keep=1)` (first-token logits and the KV cache), "
        "from pixels to logits; stages are timed by hooks inside the same calls; `other` is the rest (embedding, placeholder "
        "bookkeeping, the wrapper). Peak memory: the call's peak on top of what was live before it (CPU: resident-set "
        "high-water mark); KV cache: bytes of the returned cache.",
        f"Selector: the shipped default trunk ({main['selector']['trunk']}), random weights; `adaptive` keeps what a random "
        "selector's threshold keeps (its kept count is in the table), so it shows the cost of the adaptive path, not a "
        "trained selector's choice.",
        "Models: real sizes with random weights (`benchmarks/random_weights.py`), float32, SDPA attention where the model has it; "
        "the Qwen rows keep their true 3-D positions for kept tokens (the wrapper recomputes them).",
    ]
    if paper is not None:
        notes.append(
            f"Paper-width selector (width = {main['feature_dim']}, depth 3) on the same calls: {paper['ttft_speedup']:.2f}x TTFT at "
            f"keep 1.0, {selector_share(paper):.1f}% of the tower; the default trunk: {main['configs']['keep 1']['ttft_speedup']:.2f}x, "
            f"{selector_share(main['configs']['keep 1']):.1f}%."
        )
    if smoke:
        notes.insert(0, "SMOKE MODE: toy shapes; the numbers mean nothing.")
    return {
        "title": "Full-size VLMs: time to first token by stage",
        "summary": "Real-size models (random weights) on this machine: whole calls at every keep ratio, split into stages.",
        "cases": [{k: v for k, v in r.items() if k != "configs"} | {"configs": r["configs"]} for r in results],
        "tables": [overview_table(results)] + [case_table(r) for r in results],
        "notes": notes,
        "targets": targets(results),
    }
