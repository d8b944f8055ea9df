"""A cache folder on any fsspec filesystem: a local path, ``file://``, ``s3://``, ``gs://``, ``memory://``...

Writes never leave half a file where a reader (or a resumed run) could see it:

* local folders: temp file beside the target, ``fsync``, ``os.replace`` (the cache's own
  :func:`~token_reduction.cache.manifest.atomic_write_bytes`);
* object stores (S3, GCS, Azure, in-memory): the final object is written once, in one request, and
  appears whole or not at all;
* any other fsspec filesystem: write a temp name, then rename it over the target.

Credentials and options for remote stores come from the usual places (environment, config files,
``FSSPEC_<PROTOCOL>_<OPTION>`` variables); nothing here takes secrets.
"""

from __future__ import annotations

import os
import posixpath
import uuid
from pathlib import Path
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from token_reduction.cache.manifest import atomic_write_bytes

WRITE_ONCE_PROTOCOLS = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "oci", "memory"})
"""Object stores where one ``pipe_file`` call is an all-or-nothing upload."""


def is_url(spec: str | os.PathLike) -> bool:
    """True for ``protocol://...`` specs other than ``file://`` (those are plain local paths)."""
    text = str(spec)
    return isinstance(spec, str) and "://" in text and not text.startswith("file://")


def local_path(spec: str | os.PathLike) -> Path:
    """A local path from a path or a ``file://`` URL."""
    text = os.fspath(spec)
    return Path(text[len("file://"):] if text.startswith("file://") else text).expanduser()


class Store:
    """One folder (``url``) on a local or remote filesystem; files are addressed by name inside it."""

    def __init__(self, url: str | os.PathLike) -> None:
        self.url = str(url)
        if is_url(self.url):
            fs, path = fsspec.core.url_to_fs(self.url)
            self.local = isinstance(fs, LocalFileSystem)
            self.path = path.rstrip("/") or "/"
        else:
            self.local, self.path = True, str(local_path(self.url))

    @property
    def fs(self) -> Any:
        """The fsspec filesystem; looked up on use (fsspec caches instances), so a Store pickles as its URL."""
        return LocalFileSystem() if self.local else fsspec.core.url_to_fs(self.url)[0]

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    def _full(self, name: str) -> str:
        return posixpath.join(self.path, name) if not self.local else str(Path(self.path) / name)

    def exists(self, name: str | None = None) -> bool:
        if self.local:
            return (Path(self.path) / name).exists() if name else Path(self.path).exists()
        return self.fs.exists(self._full(name) if name else self.path)

    def names(self) -> list[str]:
        """Names of the entries directly inside the folder (empty when it does not exist)."""
        if self.local:
            root = Path(self.path)
            return sorted(p.name for p in root.iterdir()) if root.is_dir() else []
        fs = self.fs
        if not fs.exists(self.path):
            return []
        try:
            return sorted(posixpath.basename(p.rstrip("/")) for p in fs.ls(self.path, detail=False))
        except (FileNotFoundError, NotADirectoryError):
            return []

    def makedirs(self) -> None:
        if self.local:
            Path(self.path).mkdir(parents=True, exist_ok=True)
        else:
            self.fs.makedirs(self.path, exist_ok=True)

    def size(self, name: str) -> int | None:
        """Bytes in ``name``, or ``None`` when it does not exist."""
        try:
            return (Path(self.path) / name).stat().st_size if self.local else int(self.fs.size(self._full(name)))
        except FileNotFoundError:
            return None

    def read_bytes(self, name: str) -> bytes:
        if self.local:
            return (Path(self.path) / name).read_bytes()
        return self.fs.cat_file(self._full(name))

    def write_bytes(self, name: str, payload: bytes) -> None:
        """Atomically create or replace ``name`` (see the module docstring for how, per filesystem)."""
        if self.local:
            atomic_write_bytes(Path(self.path) / name, payload)
            return
        fs, target = self.fs, self._full(name)
        protocols = {fs.protocol} if isinstance(fs.protocol, str) else set(fs.protocol)
        if protocols & WRITE_ONCE_PROTOCOLS:
            fs.pipe_file(target, payload)
            return
        temp = posixpath.join(self.path, f".{name}.{uuid.uuid4().hex}.tmp")
        fs.pipe_file(temp, payload)
        try:
            fs.mv(temp, target)
        except BaseException:
            try:
                fs.rm_file(temp)
            except Exception:  # noqa: BLE001, S110 - the original error matters more
                pass
            raise

    def remove(self, name: str) -> None:
        """Delete ``name`` if it exists."""
        if self.local:
            (Path(self.path) / name).unlink(missing_ok=True)
        else:
            try:
                self.fs.rm_file(self._full(name))
            except FileNotFoundError:
                pass

    def download(self, destination: str | os.PathLike) -> Path:
        """Copy the whole folder to a local ``destination`` (e.g. to train from a cache kept on S3)."""
        destination = Path(destination)
        destination.mkdir(parents=True, exist_ok=True)
        for name in self.names():
            if not name.startswith("."):
                atomic_write_bytes(destination / name, self.read_bytes(name))
        return destination
