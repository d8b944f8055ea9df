import math
import shutil
import sys
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFont

from token_reduction.evaluation import ocr
from token_reduction.evaluation.ocr import (
    OcrEngine,
    OcrUnavailableError,
    TesseractEngine,
    grey_out,
    load_ocr_engine,
    normalise_word,
    ocr_word_recall,
    word_recall,
)

FONT = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
LINES = ("harbor lantern 42", "velvet orchard", "copper planet 917")
"""Top, middle and bottom line of the test page; the bottom one lies wholly in the lower half."""
GRID = (14, 14)


def render_page(background=(255, 255, 255), ink=(0, 0, 0), size=336) -> np.ndarray:
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    font = ImageFont.truetype(str(FONT), 22)
    for line, (x, y) in zip(LINES, ((16, 36), (70, 150), (30, 262))):
        draw.text((x, y), line, font=font, fill=ink)
    return np.asarray(image)


def all_words() -> list[str]:
    return " ".join(LINES).split()


@pytest.fixture(scope="module", params=["rapidocr", "tesseract"])
def engine(request: pytest.FixtureRequest) -> OcrEngine:
    if request.param == "rapidocr":
        pytest.importorskip("rapidocr_onnxruntime", reason='rapidocr-onnxruntime not installed (pip install ".[ocr]")')
    elif shutil.which("tesseract") is None:
        pytest.skip("tesseract binary not installed (apt-get install tesseract-ocr)")
    return load_ocr_engine(request.param)


def test_full_page_is_read(engine: OcrEngine):
    assert isinstance(engine, OcrEngine)
    assert ocr_word_recall(engine, render_page(), all_words()) >= 0.8


def test_light_text_on_dark_navy_is_read(engine: OcrEngine):
    page = render_page(background=(20, 30, 80), ink=(235, 235, 235))
    assert ocr_word_recall(engine, page, all_words()) >= 0.8


def test_greying_out_everything_leaves_nothing_to_read(engine: OcrEngine):
    assert ocr_word_recall(engine, render_page(), all_words(), torch.zeros(GRID, dtype=torch.bool)) <= 0.1


def test_greying_out_the_bottom_half_loses_the_bottom_line_only(engine: OcrEngine):
    keep = np.ones(GRID, dtype=bool)
    keep[GRID[0] // 2 :] = False
    page = render_page()
    assert ocr_word_recall(engine, page, LINES[-1].split(), keep) == 0.0
    assert ocr_word_recall(engine, page, LINES[0].split(), keep) >= 2 / 3


def test_normalise_word():
    assert normalise_word('"Hello,') == "hello"
    assert normalise_word("(42)") == "42"
    assert normalise_word("don't") == "don't"
    assert normalise_word("...") == ""


def test_word_recall_counts_each_truth_word_once():
    assert word_recall(["the cat"], ["the", "cat", "the"]) == pytest.approx(2 / 3)
    assert word_recall(["The, cat.", "THE"], ["the", "cat", "the"]) == 1.0
    assert word_recall(["the the the"], ["the"]) == 1.0
    assert word_recall(['"Hello,', "world!"], ["hello", "World"]) == 1.0
    assert word_recall([], ["hello"]) == 0.0
    assert word_recall(["hello"], ["--", "hello"]) == 1.0  # punctuation-only truth words are ignored


def test_word_recall_finds_glued_words_but_not_short_ones_by_chance():
    assert word_recall(["anchorpilot275"], ["Anchor", "pilot", "275"]) == 1.0
    assert word_recall(["lemon55"], ["lemon", "55"]) == 1.0
    assert word_recall(["cattle"], ["at"]) == 0.0
    assert word_recall(["cat"], ["cat", "cat"]) == 0.5


def test_word_recall_is_nan_without_truth():
    assert math.isnan(word_recall(["hello"], []))
    assert math.isnan(word_recall(["hello"], ["", "--", "!"]))


@pytest.mark.parametrize("height,width", [(336, 336), (300, 250)])
def test_grey_out_maps_the_grid_onto_the_whole_image(height: int, width: int):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    keep = rng.random(GRID) < 0.5
    out = grey_out(image, torch.from_numpy(keep))
    assert out is not image and out.shape == image.shape
    rows = [round(i * height / GRID[0]) for i in range(GRID[0] + 1)]
    cols = [round(j * width / GRID[1]) for j in range(GRID[1] + 1)]
    for i in range(GRID[0]):
        for j in range(GRID[1]):
            patch = np.s_[rows[i] : rows[i + 1], cols[j] : cols[j + 1]]
            if keep[i, j]:
                assert np.array_equal(out[patch], image[patch])
            else:
                assert (out[patch] == 128).all()
    if height == 336:
        assert rows[1] == 24 and cols[-1] == 336
    assert grey_out(image, np.ones(GRID, dtype=bool)).tobytes() == image.tobytes()
    assert (grey_out(image, np.zeros(GRID, dtype=bool), fill=(0, 10, 20)) == np.array([0, 10, 20], dtype=np.uint8)).all()


def test_grey_out_rejects_a_flat_mask():
    with pytest.raises(ValueError):
        grey_out(np.zeros((28, 28, 3), dtype=np.uint8), np.ones(196, dtype=bool))


class CountingEngine:
    name = "counting"

    def __init__(self) -> None:
        self.reads = 0

    def read(self, image: np.ndarray) -> list[str]:
        self.reads += 1
        return ["hello"] if image.min() == 255 else []  # any grey patch hides the word


def test_ocr_word_recall_reads_each_page_once():
    engine = CountingEngine()
    page = np.full((56, 56, 3), 255, dtype=np.uint8)
    keep = np.ones((2, 2), dtype=bool)
    keep[0, 0] = False
    assert ocr_word_recall(engine, page, ["hello"]) == 1.0
    assert ocr_word_recall(engine, page, ["Hello!"]) == 1.0
    assert ocr_word_recall(engine, page, ["hello"], keep) == 0.0
    assert ocr_word_recall(engine, page, ["hello", "world"], keep) == 0.0
    assert math.isnan(ocr_word_recall(engine, page, ["..."], keep))
    assert engine.reads == 2


def test_unknown_engine_name_is_a_value_error():
    with pytest.raises(ValueError, match="nonsense"):
        load_ocr_engine("nonsense")


def test_missing_engines_raise_ocr_unavailable(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "rapidocr_onnxruntime", None)  # makes the import fail
    monkeypatch.setattr(ocr.shutil, "which", lambda name: None)
    for name in ("auto", "rapidocr", "tesseract"):
        with pytest.raises(OcrUnavailableError) as raised:
            load_ocr_engine(name)
        assert isinstance(raised.value, RuntimeError) and "\n" not in str(raised.value)
    with pytest.raises(OcrUnavailableError, match=r'pip install "\.\[ocr\]".*apt-get install tesseract-ocr'):
        load_ocr_engine()


def test_auto_falls_back_to_tesseract(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "rapidocr_onnxruntime", None)
    monkeypatch.setattr(ocr.shutil, "which", lambda name: f"/usr/bin/{name}")
    assert isinstance(load_ocr_engine("auto"), TesseractEngine)
