"""The feature cache's ``manifest.json``: what was extracted, how, and where each sample lives.

The manifest is the single source of truth for a cache: the DataModule trusts it only after
checking it against the shards, and every error names the file and the field that disagree.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
DTYPES = ("float16", "bfloat16", "float32")


class CacheError(ValueError):
    """A feature cache is missing, malformed or disagrees with its manifest.

    Raised with one ready message, ``<file>: <field>: <what to do>``; the command line prints it as
    a single ``error:`` line (see :mod:`token_reduction.errors`).
    """


@dataclass
class ShardInfo:
    """One safetensors shard: ``features`` ``(num_samples, num_tokens, dim)`` plus optional extras."""

    file: str
    num_samples: int
    bytes: int
    sha256: str
    samples: list[dict[str, Any]]
    rank: int = 0


@dataclass
class Manifest:
    """Everything needed to read a cache without opening a shard first."""

    encoder: str
    layer: int | None
    num_tokens: int
    grid: tuple[int, int]
    dim: int
    dtype: str
    image_size: tuple[int, int] | None = None
    extras: dict[str, list[int]] = field(default_factory=dict)
    shards: list[ShardInfo] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    complete: bool = False
    info: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    @property
    def num_samples(self) -> int:
        return sum(shard.num_samples for shard in self.shards)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["num_samples"] = self.num_samples
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any], source: str = MANIFEST_NAME) -> "Manifest":
        """Parse and validate, raising :class:`CacheError` that names ``source`` and the field."""

        def need(key: str, kind: type | tuple[type, ...]) -> Any:
            if key not in data:
                raise CacheError(f"{source}: {key}: missing; the manifest is damaged: re-run `token-reduction extract` with the same --out")
            value = data[key]
            if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
                raise CacheError(f"{source}: {key}: should be {kind.__name__}, got {value!r}; the manifest is damaged: re-run extract with the same --out")
            return value

        version = need("format_version", int)
        if version != FORMAT_VERSION:
            raise CacheError(f"{source}: format_version: is {version}, this code reads {FORMAT_VERSION}; extract the cache again with this version")
        grid = need("grid", list)
        num_tokens = need("num_tokens", int)
        if len(grid) != 2 or grid[0] * grid[1] != num_tokens:
            raise CacheError(f"{source}: field 'grid' {grid} does not multiply to num_tokens={num_tokens}")
        dtype = need("dtype", str)
        if dtype not in DTYPES:
            raise CacheError(f"{source}: field 'dtype' is {dtype!r}, expected one of {DTYPES}")
        shards = []
        for i, raw in enumerate(need("shards", list)):
            try:
                shard = ShardInfo(**raw)
            except TypeError as err:
                raise CacheError(f"{source}: field 'shards[{i}]' is malformed: {err}") from err
            if len(shard.samples) != shard.num_samples:
                raise CacheError(
                    f"{source}: field 'shards[{i}].num_samples' is {shard.num_samples} "
                    f"but {len(shard.samples)} sample records are listed"
                )
            shards.append(shard)
        manifest = cls(
            encoder=need("encoder", str),
            layer=data.get("layer"),
            num_tokens=num_tokens,
            grid=(int(grid[0]), int(grid[1])),
            dim=need("dim", int),
            dtype=dtype,
            image_size=tuple(data["image_size"]) if data.get("image_size") else None,
            extras={k: list(v) for k, v in data.get("extras", {}).items()},
            shards=shards,
            skipped=list(data.get("skipped", [])),
            complete=bool(data.get("complete", False)),
            info=dict(data.get("info", {})),
        )
        if "num_samples" in data and data["num_samples"] != manifest.num_samples:
            raise CacheError(
                f"{source}: field 'num_samples' is {data['num_samples']} "
                f"but the shards list {manifest.num_samples} samples"
            )
        return manifest

    def same_features_as(self, other: "Manifest") -> list[str]:
        """Names of the fields that make two caches' features incompatible (empty when they match)."""
        keys = ("encoder", "layer", "num_tokens", "grid", "dim", "dtype", "extras")
        return [key for key in keys if getattr(self, key) != getattr(other, key)]


def read_manifest(root: str | os.PathLike) -> Manifest:
    """Load ``root/manifest.json``, with errors that say what is wrong and where."""
    root = Path(root)
    if not root.exists():
        raise CacheError(f"{root}: cache_dir: no such folder; run `token-reduction extract --out {root} ...` first")
    if not root.is_dir():
        raise CacheError(f"{root}: cache_dir: not a folder; give the folder `token-reduction extract --out` wrote")
    path = root / MANIFEST_NAME
    if not path.exists():
        raise CacheError(f"{path}: manifest: not found, so {root} is not a feature cache; run `token-reduction extract --out {root} ...` first")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CacheError(f"{path}: manifest: not valid JSON ({err}); re-run `token-reduction extract` with the same --out") from err
    if not isinstance(data, dict):
        raise CacheError(f"{path}: manifest: expected a JSON object; re-run `token-reduction extract` with the same --out")
    return Manifest.from_json(data, source=str(path))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write ``payload`` to a temp file beside ``path`` and rename it over, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the mode open() would
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_manifest(root: str | os.PathLike, manifest: Manifest) -> Path:
    """Atomically (re)write ``root/manifest.json``."""
    path = Path(root) / MANIFEST_NAME
    atomic_write_bytes(path, json.dumps(manifest.to_json(), indent=1).encode())
    return path
