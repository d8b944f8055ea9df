"""The selector trunk's price and what it buys: the table the default trunk is chosen from.

Time: every trunk's ``select(features, keep=0.5)`` against the FULL-DEPTH vision tower's forward on
the same image (CLIP ViT-L/14-336 and SigLIP so400m/14-384 shapes, random weights, batch 1),
interleaved round by round, in float32 and - for the paper width and the shipped default - in
bfloat16 and float16 too. Quality: each trunk trained on the demo's ``pixels:16`` cache and judged
on its held-out split (text recall, OCR word recall) by ``python -m benchmarks.selector_quality``,
whose results file this benchmark reads (training 7 trunks takes longer than this whole mode).

The rule, applied to the measured rows: a trunk qualifies when its worst time share is at most
:data:`BUDGET_PCT` of the tower and its quality is within seed noise of the paper width's or
better (:data:`TOLERANCE`); the best quality among those wins, then the cheaper.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from token_reduction.models.backbone import TrunkConfig
from token_reduction.models.selector import TokenSelector

from .selector_overhead import TOWERS, Tower, build_tower, selector_flops, tower_features, tower_flops
from .timing import interleaved, median, paired_ratio
from .trunks import VARIANTS, shipped_key, toy

BUDGET_PCT = 5.0  # selector time, % of the tower: at most ~5% of the time to first token (the tower is about half of it)
TOLERANCE = {"text_recall": 0.01, "ocr": 0.02}  # of the means over 20/30/50 % kept: ~2x the demo's seed std
QUALITY_FILE = Path(__file__).resolve().parent / "results" / "selector_quality.json"
FRACTIONS = ("0.2", "0.3", "0.5")  # kept shares of the held-out measures (docs/selector.md)
HALF = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def describe(key: str, trunk: TrunkConfig) -> str:
    width = "dim" if trunk.width is None else trunk.width
    return f"{key} ({width}/{trunk.depth}/mlp {trunk.mlp_ratio:g})"


def measure(tower: Tower, variants: dict[str, TrunkConfig], half_for: list[str], rounds: int, device: torch.device) -> dict[str, Any]:
    """Per-call seconds of the tower and every (trunk, dtype), interleaved; % of the tower paired per round."""
    model = build_tower(tower, tower.layers, device, torch.float32)
    pixels = torch.randn(1, 3, tower.image, tower.image, generator=torch.Generator().manual_seed(0)).to(device)
    candidates: dict[str, Any] = {"tower": lambda: model(pixel_values=pixels)}
    with torch.inference_mode():
        features = tower_features(model, pixels, tower.family)
        for key, trunk in variants.items():
            torch.manual_seed(0)
            selector = TokenSelector(tower.hidden, trunk).to(device).eval()
            candidates[f"{key}/float32"] = lambda s=selector: s.select(features, keep=0.5)
            if key in half_for:
                for name, dtype in HALF.items():
                    low = TokenSelector(tower.hidden, trunk).to(device, dtype).eval()
                    low.load_state_dict(selector.state_dict())
                    cast = features.to(dtype)
                    candidates[f"{key}/{name}"] = lambda s=low, f=cast: s.select(f, keep=0.5)
        samples = interleaved(candidates, rounds)
    return {
        "tower": tower.key,
        "tower_ms": 1000 * median(samples["tower"]),
        "selectors": {
            name: {"ms": 1000 * median(times), "pct_of_tower": 100 * paired_ratio(times, samples["tower"])}
            for name, times in samples.items()
            if name != "tower"
        },
    }


def load_qualities(folder: Path = QUALITY_FILE.parent) -> list[tuple[str, dict[str, Any]]]:
    """Every ``selector_quality*.json`` beside the main one, labelled by its extra training arguments.

    ``selector_quality.json`` is the sweep with the demo's recipe (label ""); a file written with
    ``--train-args`` (e.g. a lower learning rate for the wide trunks) adds rows such as ``paper [lr 5e-4]``.
    """
    found = []
    for path in sorted(folder.glob("selector_quality*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        args = (data.get("settings") or {}).get("train_args") or []
        label = "" if not args else " [" + " ".join(a.removeprefix("--model.optim.") for a in args) + "]"
        found.append((label, data))
    return sorted(found, key=lambda item: item[0] != "")


def quality_of(entry: dict[str, Any] | None) -> dict[str, float] | None:
    """Mean text recall and mean OCR word recall over 20/30/50 % kept, from one trunk's quality entry."""
    if not entry or not entry.get("metrics"):
        return None
    text = [entry["metrics"]["text_recall"][k] for k in FRACTIONS]
    ocr = [entry["metrics"]["ocr_recall"][k] for k in FRACTIONS]
    return {"text_recall": sum(text) / len(text), "ocr": sum(ocr) / len(ocr)}


def recommend(rows: dict[str, dict[str, Any]]) -> tuple[str | None, str]:
    """The trunk the rule picks, and why; the paper trunk's reference is its best trained run."""
    papers = [row["quality"] for key, row in rows.items() if key.startswith("paper") and row["quality"]]
    if not papers:
        return None, "no quality figures for the paper width (run `python -m benchmarks.selector_quality`)"
    paper = max(papers, key=lambda q: sum(q.values()))
    eligible = [
        key
        for key, row in rows.items()
        if row["worst_pct"] <= BUDGET_PCT
        and row["quality"] is not None
        and all(row["quality"][m] >= paper[m] - TOLERANCE[m] for m in TOLERANCE)
    ]
    if not eligible:
        return None, f"no trunk is both <= {BUDGET_PCT:g}% of the tower and within tolerance of the paper width's quality"
    best = max(eligible, key=lambda key: (round(sum(rows[key]["quality"].values()), 3), -rows[key]["worst_pct"]))
    return best, f"qualifying: {', '.join(eligible)}; best quality (text + OCR recall), then cheapest: {best}"


def run(ctx: Any) -> dict[str, Any]:
    variants = VARIANTS
    towers = [t.tiny() for t in TOWERS] if ctx.smoke else list(TOWERS)
    if ctx.smoke:
        variants = {key: toy(trunk) for key, trunk in VARIANTS.items()}
    shipped = shipped_key()
    half_for = ["paper"] + ([shipped] if shipped and shipped != "paper" else [])
    rounds = 1 if ctx.smoke else 3
    measured = []
    for tower in towers:
        ctx.log(f"   {tower.label}: tower at full depth vs {len(variants)} selector trunks, {rounds} rounds")
        measured.append(measure(tower, variants, half_for, rounds, ctx.device))
    return report(ctx.smoke, towers, measured, variants, half_for, shipped)


def quality_rows(measured: list[dict[str, Any]], towers: list[Tower], variants: dict[str, TrunkConfig]) -> tuple[dict[str, dict[str, Any]], list]:
    """One row per trunk and quality source: its measured time share joined with its held-out quality."""
    qualities = load_qualities()
    rows: dict[str, dict[str, Any]] = {}
    for key, trunk in variants.items():
        pct = {m["tower"]: m["selectors"][f"{key}/float32"]["pct_of_tower"] for m in measured}
        flops = {t.key: 100 * selector_flops(t.tokens, t.hidden, trunk) / tower_flops(t) for t in towers}
        params = {t.key: sum(p.numel() for p in TokenSelector(t.hidden, trunk).parameters()) for t in towers}
        sources = [(label, data["variants"][key]) for label, data in qualities if key in data.get("variants", {})] or [("", None)]
        for label, entry in sources:
            rows[key + label] = {"variant": key, "trunk": asdict(trunk), "pct_of_tower": pct, "worst_pct": max(pct.values()),
                                 "flops_pct": flops, "params": params, "quality": quality_of(entry), "quality_entry": entry}  # fmt: skip
    return rows, qualities


def report(smoke: bool, towers: list[Tower], measured: list[dict[str, Any]], variants: dict[str, TrunkConfig], half_for: list[str],
           shipped: str | None) -> dict[str, Any]:  # fmt: skip
    """The suite entry; :func:`rejoin` calls it again when a quality file is added after the timing run."""
    rows, qualities = quality_rows(measured, towers, variants)
    choice, why = recommend(rows)
    quality = qualities[0][1] if qualities else {}
    def fmt(entry: dict[str, Any] | None, metric: str) -> str:
        return "n/a" if not entry or not entry.get("metrics") else " / ".join(f"{entry['metrics'][metric][k]:.3f}" for k in FRACTIONS)

    table = []
    for key, row in rows.items():
        trunk = VARIANTS[row["variant"]]
        mark = (" **default**" if key == shipped else "") + (" (rule's pick)" if key == choice else "")
        table.append([
            describe(row["variant"], trunk) + key.removeprefix(row["variant"]) + mark,
            " / ".join(f"{row['params'][t.key] / 1e6:.1f}M" for t in towers),
            " / ".join(f"{row['flops_pct'][t.key]:.1f}%" for t in towers),
            " / ".join(f"{row['pct_of_tower'][t.key]:.1f}%" for t in towers),
            fmt(row["quality_entry"], "text_recall"), fmt(row["quality_entry"], "ocr_recall"),
            "n/a" if not row["quality_entry"] else f"{row['quality_entry'].get('train_s', 0):.0f} s",
        ])  # fmt: skip
    dtype_rows = []
    for m in measured:
        for key in half_for:
            cells = [m["selectors"][f"{key}/{name}"] for name in ("float32", *HALF)]
            dtype_rows.append([m["tower"], describe(key, VARIANTS[key])] + [f"{c['ms']:.1f} ms = {c['pct_of_tower']:.1f}%" for c in cells])
    tower_cell = ", ".join(f"{m['tower']} {m['tower_ms']:.0f} ms" for m in measured)
    default_row = rows.get(shipped) if shipped else None
    targets = []
    if default_row is not None:
        worst = default_row["worst_pct"]
        targets.append({"name": f"selector at the default trunk ({describe(shipped, VARIANTS[shipped])}), % of the full-depth tower",
                        "target": f"<= {BUDGET_PCT:g}%", "value": worst, "value_text": f"{worst:.1f}% worst of CLIP / SigLIP",
                        "met": worst <= BUDGET_PCT})  # fmt: skip
        papers = [row["quality"] for key, row in rows.items() if key.startswith("paper") and row["quality"]]
        paper_q, default_q = max(papers, key=lambda q: sum(q.values()), default=None), default_row["quality"]
        if paper_q and default_q:
            ok = all(default_q[m] >= paper_q[m] - TOLERANCE[m] for m in TOLERANCE)
            targets.append({"name": "default trunk's held-out quality vs the paper width's (mean text recall / OCR recall, 20-50 % kept)",
                            "target": f"not worse (within {TOLERANCE['text_recall']} / {TOLERANCE['ocr']})",
                            "value": default_q["text_recall"] - paper_q["text_recall"],
                            "value_text": f"{default_q['text_recall']:.3f} / {default_q['ocr']:.3f} vs {paper_q['text_recall']:.3f} / {paper_q['ocr']:.3f}",
                            "met": ok})  # fmt: skip
    notes = [
        f"Towers at full depth, batch 1, float32 (median tower forward: {tower_cell}); each selector on that tower's own output. "
        "Params, FLOPs and time are given as CLIP-L/14-336 / SigLIP so400m/14-384.",
        f"Quality: {quality.get('command', 'not measured yet')} ({quality.get('date', '-')}): each trunk trained with the demo's "
        "settings on its `pixels:16` cache (768-dim tokens, so the paper width there is 768), scored on the held-out split; "
        "text recall and RapidOCR word recall at 20 / 30 / 50 % kept.",
        f"The rule: <= {BUDGET_PCT:g}% of the tower on both towers, mean text recall and OCR recall no more than "
        f"{TOLERANCE['text_recall']} / {TOLERANCE['ocr']} below the paper width's (about twice the demo's seed-to-seed std), then "
        f"the best quality. {why}. Shipped default (lightning_configs/siglip_so400m_384.yaml, clip_vit_l14_336.yaml): "
        f"{shipped or 'none of these'}.",
        "bfloat16/float16: the same weights cast, features cast alike; on a CPU the speed depends on its bf16/fp16 "
        "instructions (this one: see `lscpu` flags); held-out agreement of the casts is in the quality file.",
    ]
    if smoke:
        notes.insert(0, "SMOKE MODE: toy widths; the numbers mean nothing.")
    return {
        "title": "Selector trunk: cost at full tower depth vs held-out quality",
        "summary": "Which selector trunk pays for itself: time as a share of the full-depth tower against quality on the "
        "held-out measures of docs/selector.md.",
        "measurements": measured,
        "rows": rows,
        "recommended": choice,
        "shipped": shipped,
        "quality_sources": [{"label": label, **{k: data.get(k) for k in ("command", "date", "git")}} for label, data in qualities],
        "tables": [
            {"title": "Trunks (width/depth/MLP ratio): params, FLOPs and time as % of the tower, held-out quality",
             "columns": ["trunk", "params", "FLOPs vs tower", "time vs tower", "text recall 20/30/50%", "OCR recall 20/30/50%", "train time (pixels)"],
             "rows": table},
            {"title": "Selector in float32 / bfloat16 / float16 (same weights), ms and % of the float32 tower",
             "columns": ["tower", "trunk", "float32", "bfloat16", "float16"], "rows": dtype_rows},
        ],  # fmt: skip
        "notes": notes,
        "targets": targets,
    }
