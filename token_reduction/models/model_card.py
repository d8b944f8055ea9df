"""The model card (``README.md``) of an exported selector, built with ``huggingface_hub.ModelCard``.

Everything on the card comes from the selector's config and its ``info`` provenance (what
:func:`~token_reduction.training.export.export_selector` records), so the card written on export
and the one ``push_to_hub`` regenerates are the same. Numbers that were not measured are said to
be "not measured", never filled in.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from huggingface_hub import ModelCard, ModelCardData

USAGE_PLACEHOLDER = "path/to/this/folder"  # or the repo id, when the card is written for a push

TEMPLATE = """---
{{ card_data }}
---

# Token selector for `{{ encoder }}`{% if layer %} (layer {{ layer }}){% endif %}

## What it is

A learned visual-token selector, made and loaded by the `token_reduction` package (Apache-2.0).
A small Transformer scores every visual token of a vision encoder's feature map and keeps the
informative ones, so a vision-language model (LLaVA-NeXT / LLaVA-OneVision) reads fewer visual
tokens. It was trained without labels: the kept tokens must let a reconstructor rebuild the whole
feature map. Adaptive mode keeps the tokens whose keep probability is at least {{ threshold }}
(each image keeps what it needs); budget mode keeps a fixed count or fraction per image.

## Feature source

- Encoder: `{{ encoder }}`
- Layer: {{ layer if layer else "not recorded (the encoder's default output)" }}
- Feature dim: {{ dim }}
- Per-channel feature statistics from the training cache are stored with the weights (`standardize.mean` / `standardize.std`).

The selector only fits features of this encoder and layer; features of another dim are refused.

## Token grid

{{ grid_text }}

## Training data

- Feature cache: {{ cache_dir }}
- Samples: {{ samples }}
- Weights: {{ weights_source }}
{%- for name, value in training %}
- {{ name }}: {{ value }}
{%- endfor %}

The full training hyperparameters are in `config.json` under `info.training`.

## Held-out metrics

{% if metrics -%}
{{ metrics_note }} `cosine@K%/learned` vs `cosine@K%/random`: cosine similarity between the
features and their reconstruction from K% of the tokens, chosen by this selector vs at random
(higher is better); `keep_rate`: share of tokens adaptive mode keeps.

| metric | value |
|---|---|
{%- for name, value in metrics %}
| `{{ name }}` | {{ value }} |
{%- endfor %}
{%- else -%}
Not measured: no held-out metric was recorded when this selector was exported.
{%- endif %}

## How to use

```python
from transformers import AutoModelForImageTextToText, AutoProcessor
from token_reduction import TokenSelector
from token_reduction.vlm import prune_visual_tokens

LLAVA = "..."  # a LLaVA-NeXT / LLaVA-OneVision checkpoint whose vision tower is {{ encoder }}
selector = TokenSelector.from_pretrained("{{ repo_id }}")
model = AutoModelForImageTextToText.from_pretrained(LLAVA)
processor = AutoProcessor.from_pretrained(LLAVA)
pruned = prune_visual_tokens(model, selector, keep=0.5)  # keep=None: adaptive, the selector decides per image
out = pruned.generate(**processor(images=image, text=prompt, return_tensors="pt"), max_new_tokens=64)
print(pruned.last.tokens_before, pruned.last.tokens_after)
```

On features you already have, shaped `(batch, tokens, {{ dim }})`:
`selector.select(features, keep=0.25)` (budget) or `selector.select(features)` (adaptive).
From the command line: `token-reduction chat --model LLAVA --selector {{ repo_id }} --keep 0.5`.
"""


def selector_card(config: Mapping[str, Any], info: Mapping[str, Any], base: ModelCardData | None = None, **template: Any) -> ModelCard:
    """The card for a selector with ``config`` (``TokenSelector.config()``) and ``info`` (its provenance).

    ``base`` carries the library-level metadata (library name, licence, tags) declared on the
    class; ``template`` overrides template variables, e.g. ``repo_id`` for the usage snippet.
    """
    encoder, layer = split_feature_source(info.get("feature_source"))
    card_data = ModelCardData(**(base.to_dict() if base is not None else {}))
    card_data.library_name = card_data.library_name or "token_reduction"
    card_data.license = card_data.license or "apache-2.0"
    card_data.tags = sorted({*(card_data.tags or []), "token-reduction"})
    values: dict[str, Any] = {
        "encoder": encoder or "unknown encoder",
        "layer": layer,
        "dim": config.get("dim"),
        "threshold": config.get("threshold", 0.5),
        "grid_text": grid_text(config.get("grid")),
        "cache_dir": f"`{info['data']['cache_dir']}`" if (info.get("data") or {}).get("cache_dir") else "not recorded",
        "samples": samples_text((info.get("data") or {}).get("samples")),
        "weights_source": info.get("source") or "not recorded",
        "training": training_lines(config, info.get("training") or {}),
        "metrics": [(name, format_number(value)) for name, value in sorted((info.get("metrics") or {}).items())],
        "metrics_note": info.get("metrics_note") or "Logged on held-out data when the selector was exported.",
        "repo_id": USAGE_PLACEHOLDER,
    }
    values.update(template)
    return ModelCard.from_template(card_data, template_str=TEMPLATE, **values)


def split_feature_source(feature_source: str | None) -> tuple[str | None, str | None]:
    """``"openai/clip-vit-large-patch14-336@layer-2"`` -> encoder and layer (``None`` when not recorded)."""
    if not feature_source:
        return None, None
    encoder, found, layer = str(feature_source).rpartition("@layer")
    if not found:
        return str(feature_source), None
    return encoder, None if layer in ("", "None") else layer


def grid_text(grid: Any) -> str:
    """The training grid in words: what inputs the selector expects."""
    if not grid:
        return "No fixed grid: the trunk infers a square grid from the token count of each input."
    rows, cols = (int(v) for v in grid)
    return (
        f"Trained on a {rows} x {cols} grid ({rows * cols} tokens per image or crop). Inputs with another "
        "token count still run; the trunk then infers the grid from the count."
    )


def samples_text(samples: Mapping[str, Any] | None) -> str:
    """``{"train": 900, "val": 100}`` -> ``900 train, 100 val``; unknown counts are said to be unknown."""
    if not samples:
        return "not recorded"
    return ", ".join(f"{int(count)} {split}" for split, count in samples.items() if count is not None) or "not recorded"


def training_lines(config: Mapping[str, Any], hparams: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The few settings worth reading on a card; the rest stay in ``config.json``."""
    trunk = config.get("trunk") or {}
    lines = [("Selector", f"Transformer, width {trunk.get('width')}, depth {trunk.get('depth')}, {trunk.get('heads')} heads")]
    loss = hparams.get("loss") or {}
    if "sparsity_weight" in loss:
        lines.append(("Sparsity weight", str(loss["sparsity_weight"])))
    if loss.get("target_keep_rate") is not None:
        lines.append(("Target keep rate", str(loss["target_keep_rate"])))
    budget = hparams.get("budget_training") or {}
    if "probability" in budget:
        lines.append(("Share of fixed-budget batches", str(budget["probability"])))
    return lines


def format_number(value: Any) -> str:
    """Four significant digits; anything non-numeric as written."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return f"{number:.4g}" if math.isfinite(number) else str(number)
