"""Random-weight models at full size, built in seconds instead of minutes.

Timing a forward does not depend on the weights' values as long as they are finite and not
denormal, but ``transformers``' own initialisation draws every weight from a (truncated) normal:
about 60 s for a 3.7B-parameter model on 2 CPU cores, longer than the measurements themselves.
:func:`build_random` constructs the model under ``transformers.initialization.no_init_weights``
(every buffer is still made by the modules' constructors) and fills each parameter from one
shared block of N(0, std²) draws, tiled: a copy at memory speed.
"""

from __future__ import annotations

from typing import Any

import torch

TILE = 1 << 22  # 4M shared draws, repeated through every parameter
STD = 0.02  # the scale transformers' configs initialise Linear/Embedding weights with


def build_random(model_class: Any, config: Any, device: str | torch.device, dtype: torch.dtype, std: float = STD) -> Any:
    """``model_class`` from ``config`` on ``device`` in ``dtype``, in eval mode, with tiled random weights."""
    from transformers.initialization import no_init_weights

    with torch.device(device), no_init_weights():
        model = model_class._from_config(config, dtype=dtype)
    fill_random_(model, std=std)
    return model.eval()


@torch.no_grad()
def fill_random_(model: torch.nn.Module, std: float = STD, seed: int = 0) -> None:
    """Overwrite every parameter with ``std`` x standard-normal values (one tile of draws, repeated)."""
    generator = torch.Generator().manual_seed(seed)
    tile = (torch.randn(TILE, generator=generator) * std).to(next(model.parameters()).device)
    for parameter in model.parameters():
        flat = parameter.view(-1)
        tiles = tile.to(parameter.dtype)
        for start in range(0, flat.numel(), TILE):
            stop = min(flat.numel(), start + TILE)
            flat[start:stop].copy_(tiles[: stop - start])
