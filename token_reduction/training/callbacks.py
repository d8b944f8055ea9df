"""Lightning callbacks: keep-mask pictures in TensorBoard, and the exported selector after fit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor


def mask_mosaic(keep_mask: Tensor, grid: tuple[int, int], cell: int = 8, columns: int = 4) -> Tensor:
    """``(1, H, W)`` picture of several images' keep masks (white = kept), one tile per image."""
    rows, cols = grid
    masks = keep_mask.float().reshape(-1, 1, rows, cols)
    tiles = torch.nn.functional.interpolate(masks, scale_factor=cell, mode="nearest")
    count = tiles.shape[0]
    columns = min(columns, count)
    lines = -(-count // columns)
    gap = 2
    height, width = rows * cell, cols * cell
    canvas = torch.full((1, lines * (height + gap), columns * (width + gap)), 0.5)
    for i in range(count):
        y, x = (i // columns) * (height + gap), (i % columns) * (width + gap)
        canvas[:, y : y + height, x : x + width] = tiles[i]
    return canvas


class KeepMaskImages(L.Callback):
    """Logs the adaptive keep mask of the first validation batch as an image every epoch."""

    def __init__(self, max_images: int = 8) -> None:
        self.max_images = max_images

    @rank_zero_only
    def on_validation_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if batch_idx != 0 or trainer.sanity_checking or not isinstance(outputs, dict) or "keep_mask" not in outputs:
            return
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                picture = mask_mosaic(outputs["keep_mask"][: self.max_images].cpu(), pl_module.grid)
                logger.experiment.add_image("val/keep_mask", picture, global_step=trainer.global_step)


class ExportSelector(L.Callback):
    """After fit, writes the selector alone (safetensors + config.json + model card) for use without Lightning.

    The FINAL weights are exported by default: the validation loss is measured in adaptive mode and
    keeping every token lowers it, so the "best" checkpoint by that loss is usually an untrained
    selector. ``use_best=True`` exports the best checkpoint of the ModelCheckpoint instead. The
    export's metadata names its source, the training cache and the held-out metrics logged at
    the end of fit (``val/...``; the best checkpoint's own score with ``use_best``). The folder
    defaults to ``<log_dir>/selector``.
    """

    def __init__(self, dirpath: str | None = None, use_best: bool = False) -> None:
        self.dirpath = dirpath
        self.use_best = use_best

    def target_dir(self, trainer: L.Trainer) -> Path:
        if self.dirpath:
            return Path(self.dirpath)
        root = trainer.log_dir or trainer.default_root_dir
        return Path(root) / "selector"

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        target = self.target_dir(trainer)  # every rank: trainer.log_dir is a collective under DDP
        if trainer.is_global_zero:
            self._export(trainer, pl_module, target)
        # The other ranks wait, so that none reads a half-written export or tears its process group
        # down while rank 0 is still inside fit.
        trainer.strategy.barrier("export_selector")

    def _export(self, trainer: L.Trainer, pl_module: L.LightningModule, target: Path) -> None:
        from token_reduction.training.export import datamodule_record, export_selector, held_out_metrics, selector_from_checkpoint

        selector = pl_module.selector
        best = getattr(trainer.checkpoint_callback, "best_model_path", "") if self.use_best else ""
        source = "final weights"
        metrics, note = held_out_metrics(trainer.callback_metrics), f"Logged on the validation split at the end of training (epochs: {trainer.current_epoch})."
        if best and Path(best).exists():
            selector = selector_from_checkpoint(best)
            source = best
            metrics, note = selector.provenance.get("metrics", {}), selector.provenance.get("metrics_note")
        hparams = dict(getattr(selector, "training_hparams", pl_module.hparams))
        data = datamodule_record(getattr(trainer, "datamodule", None))
        path = export_selector(selector, target, source=source, hparams=hparams, data=data, metrics=metrics, metrics_note=note)
        print(f"exported selector ({source}) to {path}")
