"""Scaling: selector inference and training-step cost vs token count, with a log-log plot.

Token counts of the encoders the selector serves: 576 (CLIP-L/14-336, 24x24), 729 (SigLIP-384,
27x27), 2304 (a 48x48 grid) and 2880 (LLaVA AnyRes: base + 4 tiles of 576, as a 120x24 grid), all
with 1024-dim features at batch 1. The selector is the narrow trunk (width 256, depth 2; the
paper-faithful one is added with ``--full``); the training step is a bare forward + backward +
AdamW step of ``TokenReductionModule`` with that selector and a reconstructor of the same size.
All counts are measured in the same interleaved rounds; each cost is also given relative to 576
tokens, beside the linear (N) and quadratic (N^2) references, and a log-log slope is fitted.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from token_reduction.training.module import BudgetTrainingConfig, OptimConfig, TokenReductionModule
from token_reduction.models import TrunkConfig
from token_reduction.models.selector import TokenSelector

from .selector_overhead import describe, layer_flops, selector_flops
from .timing import interleaved, median, paired_ratio, synchronize
from .training_loop import bare_optimizer, bare_step


def training_flops(tokens: int, dim: int, trunk: TrunkConfig) -> int:
    """Analytic matmul FLOPs of a training step: 3 x forward (backward ~ 2 x forward) of selector + reconstructor."""
    width = trunk.width or dim
    reconstructor = 2 * tokens * dim * width + trunk.depth * layer_flops(tokens, width, int(width * trunk.mlp_ratio)) + 2 * tokens * width * dim
    return 3 * (selector_flops(tokens, dim, trunk) + reconstructor)


def slope(tokens: list[int], times: list[float]) -> float:
    """Least-squares exponent k of time ~ tokens^k."""
    xs, ys = [math.log(t) for t in tokens], [math.log(v) for v in times]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else float("nan")


def plot(path: Path, tokens: list[int], series: dict[str, list[float]], title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=110)
    for name, times in series.items():
        ax.plot(tokens, [1000 * t for t in times], marker="o", label=f"{name} (slope {slope(tokens, times):.2f})")
    first = next(iter(series.values()))
    for power, style in ((1, ":"), (2, "--")):
        ax.plot(tokens, [1000 * first[0] * (n / tokens[0]) ** power for n in tokens], style, color="grey", label=f"~ N^{power} reference")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(tokens)
    ax.set_xticklabels([str(n) for n in tokens])
    ax.minorticks_off()
    ax.set_xlabel("visual tokens per image")
    ax.set_ylabel("ms per image (batch 1)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return path


def run(ctx: Any) -> dict[str, Any]:
    s = ctx.sizes
    dim = s.scaling_dim
    dtype = torch.bfloat16 if ctx.device.type == "cuda" else torch.float32
    narrow = TrunkConfig(width=32, depth=2, heads=4) if ctx.smoke else TrunkConfig(width=256, depth=2, heads=8)
    selectors = {f"selector {describe('narrow', narrow)}": narrow}
    if not ctx.quick:
        selectors[f"selector {describe('paper', TrunkConfig(depth=3, heads=16), dim)}"] = TrunkConfig(width=None, depth=3, heads=16)
    built = {name: TokenSelector(dim, trunk).to(ctx.device, dtype).eval() for name, trunk in selectors.items()}
    train_name = f"training step ({describe('narrow', narrow)} selector + reconstructor)"

    candidates = {}
    generator = torch.Generator().manual_seed(0)
    for _label, tokens, grid in s.scaling_tokens:
        features = torch.randn(1, tokens, dim, generator=generator).to(ctx.device)
        for name, selector in built.items():
            inputs = features.to(dtype)
            candidates[(name, tokens)] = lambda sel=selector, x=inputs, g=grid: sel.select(x, keep=0.5, grid=g)
        torch.manual_seed(0)
        module = TokenReductionModule(
            dim=dim, grid=grid, selector=narrow, reconstructor=narrow, budget_training=BudgetTrainingConfig(probability=0.0),
            optim=OptimConfig(lr=1e-3),
        ).to(ctx.device)  # fmt: skip
        module.train()
        optimizer, scheduler = bare_optimizer(module, 10**6)
        batch = {"features": features}

        def step(m=module, o=optimizer, sch=scheduler, b=batch) -> None:
            bare_step(m, o, sch, b, 0)
            synchronize(ctx.device)

        candidates[(train_name, tokens)] = step

    keyed = {f"{name} @ {tokens}": fn for (name, tokens), fn in candidates.items()}
    with torch.inference_mode(False):
        samples = interleaved(keyed, s.scaling_rounds)
    counts = [tokens for _, tokens, _ in s.scaling_tokens]
    names = [*built, train_name]
    series = {name: [median(samples[f"{name} @ {n}"]) for n in counts] for name in names}
    relative = {
        name: [paired_ratio(samples[f"{name} @ {n}"], samples[f"{name} @ {counts[0]}"]) for n in counts] for name in names
    }
    slopes = {name: slope(counts, series[name]) for name in names}
    flop_fns = {name: (lambda n, t=trunk: selector_flops(n, dim, t)) for name, trunk in selectors.items()}
    flop_fns[train_name] = lambda n: training_flops(n, dim, narrow)
    flops = {name: [flop_fns[name](n) / flop_fns[name](counts[0]) for n in counts] for name in names}
    png = plot(ctx.out_dir / "scaling.png", counts, series, f"Cost vs token count ({dim}-dim features, {ctx.device.type})")

    rows = []
    for i, (label, tokens, grid) in enumerate(s.scaling_tokens):
        row = [label, tokens, f"{grid[0]}x{grid[1]}", f"{tokens / counts[0]:.2f}", f"{(tokens / counts[0]) ** 2:.2f}"]
        for name in names:
            row.append(f"{1000 * series[name][i]:.1f} ms ({relative[name][i]:.2f}x; FLOPs {flops[name][i]:.2f}x)")
        rows.append(row)
    rows.append(["log-log slope", "", "", "1", "2", *[f"{slopes[name]:.2f} (FLOPs {slope(counts, flops[name]):.2f})" for name in names]])
    findings = []
    for name in names:
        excess = relative[name][-1] / flops[name][-1]
        if excess > 1.3:
            findings.append(
                f"{name}: time grows {excess:.1f}x faster than its FLOPs from {counts[0]} to {counts[-1]} tokens: some of its "
                "kernels lose efficiency on long sequences (most likely the attention over N^2 scores)."
            )
    try:
        image = str(png.relative_to(ctx.out_dir.parent))
    except ValueError:
        image = str(png)
    return {
        "title": "Scaling with token count",
        "summary": (
            f"Batch 1, {dim}-dim features, {s.scaling_rounds} interleaved rounds over all token counts; "
            f"relative cost = time / time at {counts[0]} tokens (paired per round)."
        ),
        "tokens": counts,
        "seconds": series,
        "relative_to_first": relative,
        "loglog_slope": slopes,
        "flops_relative_to_first": flops,
        "plot": str(png),
        "tables": [
            {
                "title": "ms per image (time and analytic matmul FLOPs relative to the first row)",
                "columns": ["input", "tokens", "grid", "N ratio", "N^2 ratio", *names],
                "rows": rows,
            }
        ],
        "images": [{"title": "cost vs token count (log-log)", "path": image}],
        "notes": findings + [
            "A slope near 1 means the per-token linear layers dominate; it rises toward 2 as attention (N^2) takes over.",
            "The training step is forward + backward + AdamW of selector and reconstructor (adaptive Gumbel mask, "
            "reconstruction loss), without a Trainer.",
        ]
        + (["The paper-faithful selector is left out in quick mode (its cost at 576/729 tokens is in selector_overhead)."] if ctx.quick else []),
        "targets": [],
    }
