"""The embedded default image set: real photographs and rendered text pages, built offline from a seed.

Training a selector needs images, and a fresh checkout should not need a download to get them.
Photos come from images that scikit-image and scikit-learn ship inside their wheels; pages are
drawn with matplotlib's bundled fonts in every colour scheme (:mod:`token_reduction.images.styles`)
and carry ground-truth words and boxes; blank images come in every colour. The spec (seed, size,
counts per kind and split, held-out sources, fonts and layouts) lives in ``data/default_set.json``.

Output contract (read by feature extraction): ``NAME.png`` (RGB, ``size`` x ``size``) with a
sidecar ``NAME.json`` = ``{"kind", "split", "source", "group", "style", "boxes", "words"}`` and a
top-level ``index.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
import warnings
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from PIL import Image, ImageEnhance, ImageOps
from tqdm.auto import tqdm

from token_reduction.images.layouts import RENDERERS
from token_reduction.images.pages import font_files
from token_reduction.images.styles import luminance, make_style, render_blank
from token_reduction.resources import CHECKOUT, resource_path

BUILDER = "token_reduction.images.default_set"
FORMER_BUILDERS = ("token_reduction.data.default_set",)  # this module before the package was laid out by stage
BUILDER_VERSION = 2
INDEX_NAME = "index.json"
KINDS = ("photo", "blank", "document", "receipt", "chart", "slide", "ui", "table", "form", "photo_text")
PAGE_GROUPS = ("white", "tinted", "dark", "panels")
SPLITS = ("train", "val", "test")
SPEC_ENV = "TOKEN_REDUCTION_DEFAULT_SET_SPEC"
SPEC_PATH = resource_path("data/default_set.json")

# Names in skimage.data whose files ship inside the scikit-image wheel. Anything else (brain,
# eagle, kidney, lily, skin, cells3d, ...) is fetched from the network on first use: never used.
SKIMAGE_BUNDLED = {
    "astronaut": "astronaut.png", "brick": "brick.png", "camera": "camera.png", "cell": "cell.png",
    "chelsea": "chelsea.png", "clock": "clock_motion.png", "coffee": "coffee.png", "coins": "coins.png",
    "grass": "grass.png", "gravel": "gravel.png", "horse": "horse.png",
    "hubble_deep_field": "hubble_deep_field.jpg", "immunohistochemistry": "ihc.png", "moon": "moon.png",
    "motorcycle_left": "motorcycle_left.png", "motorcycle_right": "motorcycle_right.png",
    "page": "page.png", "retina": "retina.jpg", "rocket": "rocket.jpg", "text": "text.png",
}
SKLEARN_BUNDLED = ("china", "flower")


def load_spec(path: str | Path | None = None) -> dict[str, Any]:
    """Read and check the build spec; the defaults of :func:`build_default_set` come from here."""
    path = Path(path or os.environ.get(SPEC_ENV) or SPEC_PATH)
    if not path.is_file():
        raise FileNotFoundError(
            f"default set spec {path} not found; pass spec_path=, set {SPEC_ENV}, or run from a source checkout"
        )
    spec = json.loads(path.read_text())
    for key in ("seed", "size", "num_images", "counts", "photo_sources", "page_fonts", "font_files"):
        if key not in spec:
            raise ValueError(f"{path}: missing field '{key}'")
    if set(spec["counts"]) != set(KINDS) or any(set(c) != set(SPLITS) for c in spec["counts"].values()):
        raise ValueError(f"{path}: 'counts' must map each of {KINDS} to each of {SPLITS}")
    total = sum(sum(c.values()) for c in spec["counts"].values())
    if total != spec["num_images"]:
        raise ValueError(f"{path}: 'counts' add up to {total}, but 'num_images' is {spec['num_images']}")
    overlap = set(spec["photo_sources"]["train"]) & set(spec["photo_sources"]["test"])
    if overlap:
        raise ValueError(f"{path}: photo sources {sorted(overlap)} are in both train and test")
    return spec


def spec_digest(spec: dict[str, Any]) -> str:
    """Hash of the spec, so a build made from an edited spec is not mistaken for a current one."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def apportion(total: int, weights: list[float], minimums: list[int]) -> list[int]:
    """Split ``total`` into integers proportional to ``weights`` (largest remainder), after minimums."""
    counts = list(minimums)
    rest = total - sum(counts)
    scale = total / sum(weights)
    wants = [max(w * scale - m, 0.0) for w, m in zip(weights, minimums)]
    if rest <= 0 or sum(wants) == 0:
        return counts
    shares = [w * rest / sum(wants) for w in wants]
    floors = [int(s) for s in shares]
    order = sorted(range(len(shares)), key=lambda i: (floors[i] - shares[i], i))
    for i in order[: rest - sum(floors)]:
        floors[i] += 1
    return [c + f for c, f in zip(counts, floors)]


def plan_counts(spec: dict[str, Any], num_images: int) -> dict[str, dict[str, int]]:
    """Counts per kind and split for ``num_images``, keeping the spec's shares.

    Small sets (as in tests) still get every kind, and every kind with 2+ images gets a test image.
    """
    if num_images < 1:
        raise ValueError(f"num_images must be at least 1, got {num_images}")
    table = spec["counts"]
    kind_weights = [sum(table[k].values()) for k in KINDS]
    per_kind = apportion(num_images, kind_weights, [1 if num_images >= len(KINDS) else 0] * len(KINDS))
    plan = {}
    for kind, count in zip(KINDS, per_kind):
        mins = [1 if count >= 1 else 0, 1 if count >= 3 else 0, 1 if count >= 2 else 0]
        mins = [m if table[kind][s] > 0 else 0 for m, s in zip(mins, SPLITS)]  # held-out kinds stay held out
        plan[kind] = dict(zip(SPLITS, apportion(count, [table[kind][s] for s in SPLITS], mins)))
    return plan


def _skimage_dir() -> Path:
    import skimage.data

    return Path(skimage.data.__file__).parent


def load_photo(source: str) -> Image.Image | None:
    """Load a bundled photo as RGB, or warn and return ``None`` when it would need a download."""
    library, _, name = source.partition(":")
    if library == "skimage":
        path = _skimage_dir() / SKIMAGE_BUNDLED.get(name, "")
        if name not in SKIMAGE_BUNDLED or not path.is_file():
            warnings.warn(f"default set: skipping {source}: not bundled with scikit-image (it would need a download)")
            return None
        image = Image.open(path)
        image.load()
    elif library == "sklearn" and name in SKLEARN_BUNDLED:
        from sklearn.datasets import load_sample_image

        image = Image.fromarray(load_sample_image(f"{name}.jpg"))
    else:
        warnings.warn(f"default set: skipping {source}: unknown source (use skimage:NAME or sklearn:china/flower)")
        return None
    if image.mode in ("RGBA", "LA", "P"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    return image.convert("RGB")


def augment_photo(photo: Image.Image, rng: np.random.Generator, size: int, augment: dict[str, Any]) -> Image.Image:
    """A seeded square crop (any scale), optional mirror, brightness/contrast/colour change, resized to ``size``."""
    low, high = augment.get("crop_fraction", [0.35, 1.0])
    side = max(8, int(min(photo.size) * rng.uniform(low, high)))
    x = int(rng.integers(0, photo.width - side + 1))
    y = int(rng.integers(0, photo.height - side + 1))
    image = photo.crop((x, y, x + side, y + side)).resize((size, size), Image.Resampling.BICUBIC)
    if rng.random() < augment.get("flip_probability", 0.5):
        image = ImageOps.mirror(image)
    image = ImageEnhance.Brightness(image).enhance(rng.uniform(*augment.get("brightness", [1.0, 1.0])))
    image = ImageEnhance.Contrast(image).enhance(rng.uniform(*augment.get("contrast", [1.0, 1.0])))
    return ImageEnhance.Color(image).enhance(rng.uniform(*augment.get("saturation", [1.0, 1.0])))


Pools = dict[str, list[tuple[str, Image.Image]]]


def _photo_pools(spec: dict[str, Any]) -> Pools:
    """Loaded photos per split group: ``test`` uses held-out sources, ``train``/``val`` the rest."""
    pools = {}
    for group in ("train", "test"):
        loaded = [(s, p) for s in spec["photo_sources"][group] if (p := load_photo(s)) is not None]
        if not loaded:
            raise RuntimeError(f"default set: none of the {group} photo sources could be loaded offline")
        pools[group] = loaded
    return pools


Rendered = dict[str, Any]


def blank_group(image: Image.Image) -> str:
    """The colour group of a blank image, so adaptive keep rates can be reported per colour."""
    r, g, b = (float(v) for v in np.asarray(image).reshape(-1, 3).mean(axis=0))
    level = luminance((r, g, b))  # type: ignore[arg-type]
    return "white" if level > 225 and max(r, g, b) - min(r, g, b) < 25 else "dark" if level < 90 else "tinted"


def _render(kind: str, split: str, number: int, seed: int, size: int, spec: dict[str, Any], pools: Pools) -> Rendered:
    """One image with its sidecar fields, a function of (seed, kind, number) only, so builds are reproducible."""
    rng = np.random.default_rng([seed, KINDS.index(kind), number])
    held_out = split == "test"
    group = "test" if held_out else "train"
    photos = pools[group]
    photo_source, photo = photos[number % len(photos)]
    augment = spec.get("photo_augment", {})
    if kind == "photo":
        return {"image": augment_photo(photo, rng, size, augment), "source": photo_source, "group": "photo"}
    if kind == "blank":
        image, variant = render_blank(rng, size, held_out)
        return {"image": image, "source": f"render:blank:{variant}", "group": blank_group(image), "style": variant}
    families = spec["page_fonts"][group][kind]
    family = families[number % len(families)]
    fonts = font_files(spec["font_files"][family], Path(matplotlib.get_data_path()) / "fonts" / "ttf")
    groups = spec.get("page_groups", PAGE_GROUPS)
    page_group = "photo" if kind == "photo_text" else groups[number % len(groups)]
    style = make_style(rng, page_group, held_out)
    if kind == "photo_text":
        background = augment_photo(photo, rng, size, augment)
        image, boxes, words = RENDERERS[kind](rng, size, fonts, style, background)
        source = f"render:{kind}:{family}@{photo_source}"
    else:
        image, boxes, words = RENDERERS[kind](rng, size, fonts, style)
        source = f"render:{kind}:{family}"
    return {"image": image, "source": source, "group": page_group, "style": style.describe(), "boxes": boxes, "words": words}


def _params(spec: dict[str, Any], num_images: int, size: int, seed: int) -> dict[str, Any]:
    return {"builder": BUILDER, "builder_version": BUILDER_VERSION, "num_images": num_images,
            "size": size, "seed": seed, "spec_sha256": spec_digest(spec)}


def is_complete(out_dir: str | Path, params: dict[str, Any] | None = None) -> bool:
    """True when ``out_dir`` holds a finished build (matching ``params`` if given) with all its files."""
    index_path = Path(out_dir) / INDEX_NAME
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(index, dict) or index.get("complete") is not True:
        return False
    if params is not None and any(index.get(k) != v for k, v in params.items()):
        return False
    images = index.get("images", [])
    return len(images) == index.get("num_images") and all(
        (Path(out_dir) / e["image"]).is_file() and (Path(out_dir) / e["sidecar"]).is_file() for e in images
    )


def _is_ours(out_dir: Path) -> bool:
    try:
        return json.loads((out_dir / INDEX_NAME).read_text()).get("builder") in (BUILDER, *FORMER_BUILDERS)
    except (OSError, ValueError, AttributeError):
        return False


def _write_build(tmp: Path, spec: dict[str, Any], params: dict[str, Any], progress: bool) -> None:
    num_images, size, seed = params["num_images"], params["size"], params["seed"]
    plan = plan_counts(spec, num_images)
    pools = _photo_pools(spec)
    entries = []
    with tqdm(total=num_images, desc="default image set", disable=not progress, unit="img") as bar:
        for kind in KINDS:
            folder = {"photo": "photos", "blank": "blanks"}.get(kind, "pages")
            (tmp / folder).mkdir(parents=True, exist_ok=True)
            splits = [s for s in SPLITS for _ in range(plan[kind][s])]
            for number, split in enumerate(splits):
                rendered = _render(kind, split, number, seed, size, spec, pools)
                stem = f"{folder}/{kind}_{number:04d}"
                rendered.pop("image").save(tmp / f"{stem}.png", optimize=False)
                sidecar = {"kind": kind, "split": split, "boxes": [], "words": [], **rendered}
                (tmp / f"{stem}.json").write_text(json.dumps(sidecar) + "\n")
                entries.append({"image": f"{stem}.png", "sidecar": f"{stem}.json", "kind": kind, "split": split,
                                "source": sidecar["source"], "group": sidecar["group"], "num_boxes": len(sidecar["boxes"])})
                bar.update(1)
    index = {**params, "complete": True,
             "counts": plan,
             "held_out": {"photo_sources": spec["photo_sources"]["test"],
                          "fonts": sorted({f for fs in spec["page_fonts"]["test"].values() for f in fs}),
                          "layouts": [k for k in KINDS if spec["counts"][k]["train"] == 0],
                          "hue_bands": "token_reduction.images.styles.TEST_HUES"},
             "images": entries}
    (tmp / INDEX_NAME).write_text(json.dumps(index, indent=1) + "\n")


def _remove_stale_temps(out_dir: Path) -> None:
    """Delete temp folders left by builds that were killed (their process is gone)."""
    for path in out_dir.parent.glob(f".{out_dir.name}.building-*"):
        try:
            pid = int(path.name.split("-")[1])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except (ValueError, IndexError, PermissionError, OSError):
            continue


def build_default_set(
    out_dir: str | Path,
    num_images: int | None = None,
    size: int | None = None,
    seed: int | None = None,
    progress: bool = True,
    *,
    spec_path: str | Path | None = None,
    force: bool = False,
) -> Path:
    """Build the default set into ``out_dir`` (defaults from the spec) and return its path.

    Idempotent: an existing complete build with the same parameters is returned untouched. The
    build happens in a hidden sibling folder that is renamed into place only when finished, so an
    interrupted build never looks complete.
    """
    spec = load_spec(spec_path)
    params = _params(spec, int(num_images if num_images is not None else spec["num_images"]),
                     int(size if size is not None else spec["size"]), int(seed if seed is not None else spec["seed"]))
    if params["size"] < 32:
        raise ValueError(f"size must be at least 32 pixels, got {params['size']}")
    out_dir = Path(out_dir).resolve()
    if not force and is_complete(out_dir, params):
        return out_dir
    if out_dir.exists() and any(out_dir.iterdir()) and not _is_ours(out_dir):
        raise FileExistsError(f"{out_dir} is not empty and was not made by {BUILDER}; refusing to replace it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(out_dir)
    tmp = out_dir.parent / f".{out_dir.name}.building-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        _write_build(tmp, spec, params, progress)
        old = out_dir.parent / f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}"
        if out_dir.exists():
            out_dir.rename(old)
        try:
            tmp.rename(out_dir)
        except OSError:
            if is_complete(out_dir, params):  # a concurrent build finished first
                return out_dir
            raise
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def load_index(out_dir: str | Path) -> list[dict[str, Any]]:
    """Entries of a finished build, each with ``path`` (absolute PNG path) added."""
    out_dir = Path(out_dir)
    if not is_complete(out_dir):
        raise FileNotFoundError(f"{out_dir} holds no complete default set; build it with build_default_set()")
    index = json.loads((out_dir / INDEX_NAME).read_text())
    return [{**entry, "path": str(out_dir / entry["image"])} for entry in index["images"]]


def default_set_dir() -> Path:
    """``data/default`` in a source checkout, else ``~/.cache/token_reduction/default``."""
    if (CHECKOUT / "data" / "default_set.json").is_file() and (CHECKOUT / "token_reduction").is_dir():
        return CHECKOUT / "data" / "default"
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "token_reduction" / "default"
