"""What an exact resume needs beyond Lightning's own checkpoint: generator states and the loader position.

Training draws Gumbel noise, budgets and random masks from the global torch generator (and the
CUDA one on a GPU), so a checkpoint must carry their state for a resumed run to draw the same
numbers as an uninterrupted one. numpy and python ``random`` are saved too: the project does not
draw from them, but a user callback might, and they cost a few kilobytes.

Everything is stored as tensors, ints and strings, so checkpoints still load with
``torch.load(weights_only=True)``. Under DDP the checkpoint holds rank 0's state and every rank
restores it: Lightning seeds every rank alike and each rank draws the same amounts per step
(equal batch shapes), so the ranks' generator states are equal at every step anyway.
"""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.types import _Stateful

from token_reduction.cache.datamodule import ResumableDataLoader


def collect_rng_states(device: torch.device | None = None) -> dict[str, Any]:
    """The states of the torch CPU generator, ``device``'s CUDA generator, numpy and python ``random``."""
    name, keys, position, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {"version": int(version), "internal": torch.tensor(internal, dtype=torch.int64), "gauss_next": gauss_next},
    }
    if device is not None and device.type == "cuda":  # only this process's device: never initialise the others
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def restore_rng_states(states: dict[str, Any], device: torch.device | None = None) -> None:
    """Set the generators back to ``states`` (from :func:`collect_rng_states`); missing parts are left alone."""
    if "torch" in states:
        torch.set_rng_state(states["torch"].cpu())
    if "cuda" in states and device is not None and device.type == "cuda":
        torch.cuda.set_rng_state(states["cuda"].cpu(), device)
    if "numpy" in states:
        saved = states["numpy"]
        keys = saved["keys"].numpy().astype(np.uint32)
        np.random.set_state((saved["name"], keys, saved["position"], saved["has_gauss"], saved["cached_gaussian"]))
    if "python" in states:
        saved = states["python"]
        random.setstate((saved["version"], tuple(int(v) for v in saved["internal"].tolist()), saved["gauss_next"]))


def resume_train_loader(trainer: L.Trainer) -> None:
    """Point a resumed run's training loader at the right epoch and batch, then restart its iterator.

    Lightning 2.6 gets this wrong twice, so ``on_train_start`` (before the first batch) fixes it:

    * ``configure_optimizers`` reads ``trainer.estimated_stepping_batches``, which builds the
      loader before the checkpoint is restored; the fit loop keeps that loader and never loads the
      saved loader state (Lightning issue #20550), so a mid-epoch resume would restart the epoch.
    * that iterator was made before the loop set the sampler's epoch; with worker processes it has
      already drawn epoch 0's order, and a run resumed at an epoch boundary would keep it.

    The loader continues the saved position when it belongs to the epoch about to run, else starts
    that epoch from its first batch. A no-op on a fresh run.
    """
    fit_loop = trainer.fit_loop
    combined, fetcher = getattr(fit_loop, "_combined_loader", None), getattr(fit_loop, "_data_fetcher", None)
    if not fit_loop.is_resuming or combined is None or fetcher is None:
        return
    pending = list(getattr(fit_loop, "_combined_loader_states_to_load", None) or [])
    epoch = fit_loop.epoch_progress.current.processed
    stateful = [loader for loader in combined.flattened if isinstance(loader, _Stateful)]
    for i, loader in enumerate(stateful):
        state = pending[i] if i < len(pending) else None
        if isinstance(loader, ResumableDataLoader):
            state = state or loader.state_dict()  # already loaded by a Lightning without the bug
            if state["epoch"] != epoch or state["batches"] >= len(loader):
                state = {"epoch": epoch, "batches": 0}
        if state is not None:
            loader.load_state_dict(state)
    fit_loop._combined_loader_states_to_load = []
    iter(fetcher)  # a new iterator, which starts where the loaded state says
