"""What ``token-reduction extract`` reads: image lists, sidecar text boxes, and per-image crops.

Decoding, tiling, preprocessing and mask pooling all happen in :class:`ImageDataset`, i.e. in
DataLoader worker processes, so the main process only runs the encoder. Every failure for one
image (unreadable file, bad sidecar) becomes an ``error`` on its item, never an exception.

Inputs may be local (a :class:`~pathlib.Path` on every :class:`ImageInput`) or fsspec URLs such as
``s3://bucket/images`` or ``memory://images`` (then ``ImageInput.path`` is the full URL string, so
DataLoader workers and DDP ranks can open it by itself).
"""

from __future__ import annotations

import glob
import io
import json
import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import fsspec
import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor
from torch.utils.data import Dataset

from token_reduction.encoders.anyres import FULL_VIEW, CropView, anyres_views
from token_reduction.encoders.base import ImageTransform
from token_reduction.encoders.geometry import (
    ViewRenderer,
    output_size,
    patch_coverage,
    rasterize_boxes,
    render_image,
    render_mask,
    source_box,
)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
SIDECAR_FIELDS = ("kind", "split", "source", "group")
TEXT_BOX_MODES = ("auto", "on", "off")


@dataclass(frozen=True)
class ImageInput:
    """An image file and the name it gets in the cache (relative to the images root when inside it).

    ``path`` is a local :class:`Path`, or a full fsspec URL string for remote inputs.
    """

    path: Path | str
    rel: str


def _is_image(path: Path | str) -> bool:
    return posixpath.splitext(str(path))[1].lower() in IMAGE_EXTENSIONS


def _is_remote(spec: str | Path) -> bool:
    text = str(spec)
    return isinstance(spec, str) and "://" in text and not text.startswith("file://")


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def find_images(spec: str | Path) -> tuple[Path | str, list[ImageInput]]:
    """``(images_root, inputs)`` for a folder (recursive), a glob, a list file, or one image; sorted.

    Folders and globs keep only files with image extensions (sidecars and indexes live beside the
    images); a list file's entries are all kept, so a bad one is reported as skipped. ``spec`` may
    be an fsspec URL (``s3://bucket/images``, ``memory://images/**/*.png``); the root is then a URL.
    """
    if _is_remote(spec):
        return _find_remote_images(str(spec))
    text = str(spec)
    if text.startswith("file://"):
        text = text[len("file://"):]
    path = Path(text).expanduser()
    if any(c in text for c in "*?[") and not path.exists():
        matches = [Path(p) for p in glob.glob(str(path), recursive=True)]
        files = [p.resolve() for p in matches if p.is_file() and _is_image(p)]
        root = Path(*path.parts[: _glob_depth(path)] or ["."]).resolve()
        where = f"glob {text!r}"
    elif not path.exists():
        raise FileNotFoundError(f"{text}: --images: no such file or folder; give a folder, a glob, or a text file of paths")
    elif path.is_dir():
        root = path.resolve()
        files = [p.resolve() for p in root.rglob("*") if p.is_file() and _is_image(p)]
        where = f"folder {text!r}"
    elif _is_image(path):
        root = path.resolve().parent
        files = [path.resolve()]
        where = text
    else:
        root = path.resolve().parent
        files = []
        for line in path.read_text(errors="replace").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                entry = Path(line).expanduser()
                files.append((entry if entry.is_absolute() else root / entry).resolve())
        where = f"list file {text!r}"
    if not files:
        raise ValueError(f"{where}: --images: no images found (looked for {', '.join(IMAGE_EXTENSIONS)})")
    inputs = sorted({ImageInput(p, _relative(p, root)) for p in files}, key=lambda item: item.rel)
    return root, inputs


def _find_remote_images(spec: str) -> tuple[str, list[ImageInput]]:
    """:func:`find_images` on an fsspec filesystem: same rules, POSIX paths, URLs out."""
    fs, path = fsspec.core.url_to_fs(spec)
    path = path.rstrip("/") or "/"
    if any(c in path for c in "*?["):
        parts = path.split("/")
        depth = next(i for i, part in enumerate(parts) if any(c in part for c in "*?["))
        root = "/".join(parts[:depth]) or "/"
        files = [p for p in fs.glob(path) if _is_image(p) and fs.isfile(p)]
        where = f"glob {spec!r}"
    elif not fs.exists(path):
        raise FileNotFoundError(f"{spec}: --images: no such file or folder; give a folder, a glob, or a text file of paths")
    elif fs.isdir(path):
        root = path
        files = [p for p in fs.find(path) if _is_image(p)]
        where = f"folder {spec!r}"
    elif _is_image(path):
        root, files, where = posixpath.dirname(path), [path], spec
    else:
        root = posixpath.dirname(path)
        files = []
        for line in fs.cat_file(path).decode(errors="replace").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                files.append(line if _is_remote(line) else posixpath.normpath(posixpath.join(root, line)))
        where = f"list file {spec!r}"
    if not files:
        raise ValueError(f"{where}: --images: no images found (looked for {', '.join(IMAGE_EXTENSIONS)})")
    prefix = root.rstrip("/") + "/"
    inputs = set()
    for file in files:
        url = file if _is_remote(file) else fs.unstrip_protocol(file)
        rel = file[len(prefix):] if file.startswith(prefix) else url
        inputs.add(ImageInput(url, rel))
    return fs.unstrip_protocol(root), sorted(inputs, key=lambda item: item.rel)


def _glob_depth(path: Path) -> int:
    """Number of leading path parts before the first one with a wildcard."""
    for i, part in enumerate(path.parts):
        if any(c in part for c in "*?["):
            return i
    return len(path.parts)


def sidecar_path(image: Path | str) -> Path | str:
    if isinstance(image, Path):
        return image.with_suffix(".json")
    return posixpath.splitext(image)[0] + ".json"


def _is_file(path: Path | str) -> bool:
    if isinstance(path, Path):
        return path.is_file()
    fs, inner = fsspec.core.url_to_fs(path)
    return fs.isfile(inner)


def _read_bytes(path: Path | str) -> bytes:
    if isinstance(path, Path):
        return path.read_bytes()
    with fsspec.open(path, "rb") as handle:
        return handle.read()


def _name(path: Path | str) -> str:
    return path.name if isinstance(path, Path) else posixpath.basename(path)


def read_sidecar(image: Path | str) -> dict[str, Any] | None:
    """The image's ``NAME.json`` sidecar, validated, or ``None`` when there is none."""
    path = sidecar_path(image)
    if not _is_file(path):
        return None
    try:
        data = json.loads(_read_bytes(path).decode())
    except (OSError, ValueError) as err:
        raise ValueError(f"sidecar {_name(path)} is not valid JSON ({err})") from err
    if not isinstance(data, dict):
        raise ValueError(f"sidecar {_name(path)} should hold a JSON object")
    boxes = data.get("boxes", [])
    if not isinstance(boxes, list) or not all(
        isinstance(b, (list, tuple)) and len(b) == 4 and all(isinstance(v, (int, float)) for v in b) for b in boxes
    ):
        raise ValueError(f"sidecar {_name(path)}: field 'boxes' should be a list of [x0, y0, x1, y1]")
    return data


def wants_text_boxes(inputs: Sequence[ImageInput], mode: str) -> bool:
    """``auto``: on when any input has a sidecar with a ``boxes`` field (even an empty one)."""
    if mode not in TEXT_BOX_MODES:
        raise ValueError(f"text boxes mode {mode!r}: expected one of {TEXT_BOX_MODES}")
    if mode != "auto":
        return mode == "on"
    for item in inputs:
        path = sidecar_path(item.path)
        try:
            if _is_file(path) and "boxes" in json.loads(_read_bytes(path).decode()):
                return True
        except (OSError, ValueError, TypeError):
            continue
    return False


def load_image(path: Path | str) -> Image.Image:
    """Decode fully (so errors surface here), apply EXIF orientation, convert to RGB; ``path`` may be a URL."""
    source = path if isinstance(path, Path) or not _is_remote(path) else io.BytesIO(_read_bytes(path))
    with Image.open(source) as image:
        image.load()
        image = ImageOps.exif_transpose(image)
        return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB of any PIL mode; high-bit-depth and float grey images are rescaled, not clipped.

    Pillow's own ``convert("RGB")`` clips ``I;16``/``I``/``F`` values at 255 (a 16-bit scan turns
    almost white). Rules: ``I;16*`` divide by 257 (0..65535 onto 0..255); ``I`` (32-bit ints) the
    same when every value fits 0..65535, else min-max scaled; ``F`` (floats) taken as 0..1 when the
    maximum is at most 1 (negatives clip to 0), else min-max scaled; NaN becomes 0. Every other mode
    (``1``, ``L``, ``P``, ``LA``, ``PA``, ``RGBA``, ``CMYK``, ...) goes through ``convert("RGB")``.
    """
    if not (image.mode.startswith("I;16") or image.mode in ("I", "F")):
        return image.convert("RGB")
    values = np.asarray(image).astype(np.float64)
    values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if image.mode.startswith("I;16") or (image.mode == "I" and low >= 0 and high <= 65535):
        scaled = values / 257.0
    elif image.mode == "F" and high <= 1.0:
        scaled = np.clip(values, 0.0, 1.0) * 255.0
    else:
        scaled = (values - low) * (255.0 / (high - low)) if high > low else np.zeros_like(values)
    grey = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    return Image.fromarray(grey).convert("RGB")


@dataclass
class PreparedImage:
    """All crops of one image, ready for the encoder (``error`` set instead when it failed)."""

    rel: str
    pixels: Tensor | dict[str, Tensor] | None = None
    """Normalised crops ``(n, 3, H, W)``, or a VLM processor's outputs for the image (``render_views``)."""
    samples: list[dict[str, Any]] = field(default_factory=list)
    text: Tensor | None = None
    error: str | None = None


class ImageDataset(Dataset):
    """Per image: decode, cut views (full image, or AnyRes base + tiles), preprocess, pool text masks."""

    def __init__(
        self,
        inputs: Sequence[ImageInput],
        transform: ImageTransform,
        patch_size: int,
        pinpoints: Sequence[tuple[int, int]] | None = None,
        text: bool = False,
    ) -> None:
        self.inputs = list(inputs)
        self.transform = transform
        self.patch_size = patch_size
        self.pinpoints = list(pinpoints) if pinpoints else None
        self.text = text

    def __len__(self) -> int:
        return len(self.inputs)

    def views(self, size: tuple[int, int]) -> list[CropView]:
        if self.pinpoints is None:
            return [FULL_VIEW]
        return anyres_views(size, self.transform.image_size, self.pinpoints)

    def __getitem__(self, index: int) -> PreparedImage:
        item = self.inputs[index]
        try:
            sidecar = read_sidecar(item.path)
            image = load_image(item.path)
            return self._prepare(item.rel, image, sidecar)
        except Exception as err:  # noqa: BLE001 - one bad image must never stop a run
            return PreparedImage(item.rel, error=f"{type(err).__name__}: {err}")

    def _prepare(self, rel: str, image: Image.Image, sidecar: dict[str, Any] | None) -> PreparedImage:
        size = (image.height, image.width)
        if hasattr(self.transform, "render_views"):  # a VLM's own processor cuts the crops (encoders/vlm.py)
            pixels, views = self.transform.render_views(image)
            plans = [view.ops for view in views]
        else:
            views = self.views(size)
            plans = [view.ops + tuple(self.transform.geometry(output_size(size, view.ops))) for view in views]
            render = ViewRenderer(image, lambda im, ops: render_image(im, ops, self.transform.resample))
            pixels = self.transform([render(view.ops) for view in views])
        meta = {k: sidecar[k] for k in SIDECAR_FIELDS if sidecar and k in sidecar}
        samples = []
        for view, plan in zip(views, plans):
            samples.append({
                "id": rel if view.name == "full" else f"{rel}#{view.name}",
                "image": rel,
                "crop": list(view.crop) if isinstance(view.crop, tuple) else view.crop,
                "crop_box": [round(v, 2) for v in source_box(size, plan)],
                "source_size": [image.width, image.height],
                **meta,
            })
        text = None
        if self.text:
            text = self._text_coverage(size, (sidecar or {}).get("boxes") or [], plans)
        return PreparedImage(rel, pixels, samples, text)

    def _text_coverage(self, size: tuple[int, int], boxes: list, plans: list[tuple]) -> Tensor:
        """Fraction of each patch covered by text: rasterise, follow each view's plan, average per patch."""
        rows, cols = (s // self.patch_size for s in self.transform.image_size)
        if not boxes:
            return torch.zeros(len(plans), rows * cols)
        render = ViewRenderer(rasterize_boxes(boxes, size), render_mask)
        masks = torch.stack([render(plan) for plan in plans])
        return patch_coverage(masks, self.patch_size)


def first_item(batch: list[PreparedImage]) -> PreparedImage:
    """DataLoader collate for batch_size=1: items are ragged, the main loop regroups them."""
    return batch[0]


def as_list(batch: list[PreparedImage]) -> list[PreparedImage]:
    """DataLoader collate keeping ragged items (each image has its own number of crops) as a list."""
    return list(batch)
