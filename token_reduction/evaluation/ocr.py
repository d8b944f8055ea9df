"""OCR as a downstream judge of a token selection: can a real reader still read the kept patches?

``text_recall`` (:mod:`token_reduction.evaluation.metrics`) counts kept text patches; it cannot tell
whether the kept patches still carry *legible* words. Here the dropped patches are painted grey
(:func:`grey_out`, the paper's Figure 1 view), an off-the-shelf OCR engine reads what is left, and
:func:`word_recall` scores the words it found against the words printed on the page. The same page
read without a mask is the ceiling of the engine itself.

Engines (both CPU-only, both optional; :func:`load_ocr_engine` picks one):

* :class:`RapidOcrEngine`: PP-OCRv4 detection + recognition through onnxruntime (``pip install ".[ocr]"``);
* :class:`TesseractEngine`: the ``tesseract`` binary (``apt-get install tesseract-ocr``).

Speeds below were measured on 336x336 pages with 12 scattered lines of 13-18 px DejaVuSans
(2 words, every third line a number), full and with 30-50 % of a 14x14 grid greyed out, on a 2-core
CPU that another job was keeping busy.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import string
import subprocess
import weakref
from collections import Counter, OrderedDict
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

ENGINES = ("rapidocr", "tesseract")
"""Engine names :func:`load_ocr_engine` accepts besides ``"auto"``."""
MIN_GLUED_CHARS = 3
"""Shortest truth word looked for *inside* a recognised token; shorter ones occur there by chance."""
CACHE_SIZE = 512
"""Greyed-out pages whose OCR result is remembered, per engine."""
_PUNCTUATION = string.punctuation + "“”‘’«»„…–—·•"
_SEPARATOR = "\x00"
_INSTALL_RAPIDOCR = 'pip install ".[ocr]" (rapidocr-onnxruntime)'
_INSTALL_TESSERACT = "apt-get install tesseract-ocr"


class OcrUnavailableError(RuntimeError):
    """The requested OCR engine (or any, for ``"auto"``) is not installed."""


@runtime_checkable
class OcrEngine(Protocol):
    """Anything that turns an ``(H, W, 3)`` uint8 RGB image into recognised words."""

    name: str

    def read(self, image: np.ndarray) -> list[str]:
        """Recognised words (whitespace-free strings), in reading order where the engine knows it."""
        ...


def _check_rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got shape {image.shape} dtype {image.dtype}")
    return image


class RapidOcrEngine:
    """RapidOCR (PP-OCRv4 det + rec, onnxruntime), tuned for small pages; the model loads on the first read.

    Per page (CPU seconds, ~ wall with one thread), library defaults → these settings:
    0.96-1.0 s (defaults, angle classifier on) → 0.53 s (``use_cls=False``: pages are upright) →
    0.29-0.37 s full pages, 0.26-0.32 s greyed pages (+ ``det_limit_side_len=448``, rec width 160).
    Word recall stayed at 0.99-1.0 on full pages and 1.0 on fully kept words of greyed pages.
    Why each setting:

    * ``det_limit_side_len``: the detector upscales the short side to this (default 736, i.e. 4.8x the
      pixels of a 336 page). 336 was faster still but missed 10 % of visible words next to grey
      patches at 13 px text; 448 missed none.
    * ``rec_img_shape`` width 160 (default 320): crops are padded to at least this width, and greyed
      pages yield many short crops; long lines still get their full width.
    * one onnxruntime thread: two threads were ~2x *slower* in wall time on the busy 2-core machine
      (onnxruntime's workers spin while waiting), and one leaves room for parallel processes.

    The recognition model is Chinese/English and often drops spaces ("anchorpilot275");
    :func:`word_recall` looks for truth words inside such glued tokens.
    """

    name = "rapidocr"
    SETTINGS: dict[str, Any] = {
        "use_cls": False,
        "det_limit_side_len": 448,
        "rec_img_shape": [3, 48, 160],
        "intra_op_num_threads": 1,
        "inter_op_num_threads": 1,
    }

    def __init__(self, **settings: Any) -> None:
        if not _rapidocr_importable():
            raise OcrUnavailableError(f"rapidocr-onnxruntime is not installed: {_INSTALL_RAPIDOCR}")
        self.settings = {**self.SETTINGS, **settings}
        self._ocr: Any = None

    def read(self, image: np.ndarray) -> list[str]:
        if self._ocr is None:
            from rapidocr_onnxruntime import RapidOCR

            self._ocr = RapidOCR(**self.settings)
        bgr = np.ascontiguousarray(_check_rgb(image)[..., ::-1])  # RapidOCR treats arrays as OpenCV BGR
        result, _ = self._ocr(bgr)
        return [word for _, text, _ in result or [] for word in text.split()]


class TesseractEngine:
    """The ``tesseract`` binary on a PPM piped through stdin, text back on stdout: no temp files.

    ``--psm 11`` (sparse text: find as much text as possible, no assumed layout) because greyed-out
    pages are scattered word fragments. Of the fully kept words on such pages the default ``--psm 3``
    read only 72 % (it takes the grey blocks for layout), ``--psm 11`` 92 %, ``--psm 12`` 93 % at
    twice the time, ``--psm 6`` 94 %, but 6 assumes one uniform block of text, which real pages with
    text here and there are not. All read 100 % of full pages, light-on-dark included.
    ``OMP_THREAD_LIMIT=1``: with OpenMP threads a page took 0.63 s instead of 0.18 s on the busy
    2-core machine. Measured 0.18-0.21 s per full page, 0.14-0.19 s per greyed one, of which ~0.085 s
    is process start-up and model loading (a blank 32x32 image).
    """

    name = "tesseract"

    def __init__(self, psm: int = 11, language: str = "eng", binary: str = "tesseract", timeout: float = 60.0) -> None:
        path = shutil.which(binary)
        if path is None:
            raise OcrUnavailableError(f"tesseract binary not found: {_INSTALL_TESSERACT}")
        self.command = [path, "stdin", "stdout", "--psm", str(psm), "-l", language]
        self.timeout = timeout
        self._env = {**os.environ, "OMP_THREAD_LIMIT": "1"}

    def read(self, image: np.ndarray) -> list[str]:
        image = _check_rgb(image)
        ppm = b"P6\n%d %d\n255\n" % (image.shape[1], image.shape[0]) + np.ascontiguousarray(image).tobytes()
        done = subprocess.run(self.command, input=ppm, capture_output=True, env=self._env, timeout=self.timeout)
        if done.returncode != 0:
            raise RuntimeError(f"tesseract failed ({done.returncode}): {done.stderr.decode(errors='replace').strip()}")
        return done.stdout.decode(errors="replace").split()


def _rapidocr_importable() -> bool:
    try:
        import rapidocr_onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def load_ocr_engine(name: str = "auto") -> OcrEngine:
    """``"rapidocr"``, ``"tesseract"``, or ``"auto"``: RapidOCR when importable, else tesseract when on PATH.

    Raises :class:`OcrUnavailableError` (a ``RuntimeError``, saying how to install) when the engine is
    missing, so callers can skip OCR scoring; ``ValueError`` for an unknown name.
    """
    if name == "rapidocr":
        return RapidOcrEngine()
    if name == "tesseract":
        return TesseractEngine()
    if name != "auto":
        raise ValueError(f"unknown OCR engine '{name}'; choose from auto, {', '.join(ENGINES)}")
    if _rapidocr_importable():
        return RapidOcrEngine()
    if shutil.which("tesseract") is not None:
        return TesseractEngine()
    raise OcrUnavailableError(f"no OCR engine available: {_INSTALL_RAPIDOCR} or {_INSTALL_TESSERACT}")


def normalise_word(word: str) -> str:
    """Lowercase, surrounding punctuation stripped ("Hello," → "hello"); inner characters and digits kept."""
    return word.strip(_PUNCTUATION + string.whitespace).lower()


def word_recall(recognised: list[str], truth: list[str]) -> float:
    """Fraction of the ``truth`` words found in ``recognised``, each occurrence matched at most once.

    Both sides are normalised (:func:`normalise_word`), recognised strings split on whitespace, and
    words that normalise to "" ignored. Truth words first match whole recognised tokens; the rest
    (longest first, at least :data:`MIN_GLUED_CHARS` characters) are then looked for *inside* the
    unmatched tokens and cut out when found, because OCR engines glue neighbours ("lemon55"); a
    shorter word still counts when cutting left it as a whole piece ("55"). Words split by the engine
    into two tokens are not joined: joining neighbours would invent words from fragments of
    partially greyed-out ones. ``NaN`` when there is no truth word, like the undefined measures in
    :mod:`token_reduction.evaluation.metrics` (and :class:`MetricAccumulator` skips it).
    """
    wanted = [word for word in map(normalise_word, truth) if word]
    if not wanted:
        return math.nan
    tokens = [token for token in (normalise_word(w) for text in recognised for w in text.split()) if token]
    available = Counter(tokens)
    missing = []
    for word in wanted:
        if available[word] > 0:
            available[word] -= 1
        else:
            missing.append(word)
    leftover = []  # the unmatched tokens, in reading order
    for token in tokens:
        if available[token] > 0:
            available[token] -= 1
            leftover.append(token)
    text = _SEPARATOR.join(leftover)
    found = len(wanted) - len(missing)
    short = []
    for word in sorted(missing, key=len, reverse=True):
        if len(word) >= MIN_GLUED_CHARS and word in text:
            text = text.replace(word, _SEPARATOR, 1)
            found += 1
        else:
            short.append(word)
    pieces = Counter(text.split(_SEPARATOR))
    for word in short:
        if pieces[word] > 0:
            pieces[word] -= 1
            found += 1
    return found / len(wanted)


def grey_out(image: np.ndarray, keep_mask: np.ndarray | torch.Tensor, fill: tuple[int, int, int] = (128, 128, 128)) -> np.ndarray:
    """A copy of ``image`` ``(H, W, C)`` with the dropped patches of ``keep_mask`` ``(rows, cols)`` painted ``fill``.

    The token grid covers the whole image, whatever its size: patch ``(i, j)`` spans rows
    ``round(i*H/rows)`` to ``round((i+1)*H/rows)`` (columns likewise), so a 14x14 mask fits a 336 page
    (24 px patches) and a 300x250 one alike. Kept patches are left untouched.
    """
    if isinstance(keep_mask, torch.Tensor):
        keep_mask = keep_mask.detach().cpu().numpy()
    keep = np.asarray(keep_mask).astype(bool)
    image = np.asarray(image)
    if keep.ndim != 2 or image.ndim != 3:
        raise ValueError(f"expected a (rows, cols) mask and an (H, W, C) image, got {keep.shape} and {image.shape}")
    (height, width), (rows, cols) = image.shape[:2], keep.shape
    if rows > height or cols > width:
        raise ValueError(f"a {rows}x{cols} token grid does not fit a {height}x{width} image")
    row_of = np.searchsorted(np.round(np.arange(rows + 1) * height / rows), np.arange(height), side="right") - 1
    col_of = np.searchsorted(np.round(np.arange(cols + 1) * width / cols), np.arange(width), side="right") - 1
    out = image.copy()
    out[~keep[row_of[:, None], col_of[None, :]]] = np.asarray(fill, dtype=image.dtype)
    return out


_CACHE: weakref.WeakKeyDictionary[Any, OrderedDict[bytes, list[str]]] = weakref.WeakKeyDictionary()


def _read_cached(engine: OcrEngine, image: np.ndarray) -> list[str]:
    """``engine.read(image)``, remembered by a hash of the pixels: sweeps re-score the same full page and masks."""
    try:
        cache = _CACHE.setdefault(engine, OrderedDict())
    except TypeError:  # an engine that cannot be weakly referenced: no caching
        return engine.read(image)
    digest = hashlib.blake2b(repr(image.shape).encode(), digest_size=16)
    digest.update(np.ascontiguousarray(image).data)
    key = digest.digest()
    if key in cache:
        cache.move_to_end(key)
        return list(cache[key])
    words = engine.read(image)
    cache[key] = list(words)
    if len(cache) > CACHE_SIZE:
        cache.popitem(last=False)
    return words


def ocr_word_recall(engine: OcrEngine, image: np.ndarray, words: list[str], keep_mask: np.ndarray | torch.Tensor | None = None) -> float:
    """:func:`word_recall` of ``engine`` reading ``image`` with the dropped patches greyed out.

    ``keep_mask=None`` reads the full image: the ceiling a selection is compared against. ``NaN``
    without ground-truth words (the engine is not run then).
    """
    if not any(normalise_word(word) for word in words):
        return math.nan
    shown = np.asarray(image) if keep_mask is None else grey_out(image, keep_mask)
    return word_recall(_read_cached(engine, shown), words)
