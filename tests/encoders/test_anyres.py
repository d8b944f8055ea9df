"""AnyRes tiling: pinpoints, best grid, crop boxes, and agreement with LLaVA-NeXT's processor."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from token_reduction.encoders import load_encoder
from token_reduction.encoders.anyres import (
    anyres_views,
    best_resolution,
    check_pinpoints,
    default_pinpoints,
    parse_pinpoints,
)
from token_reduction.encoders.geometry import (
    Crop,
    Resize,
    output_size,
    patch_coverage,
    rasterize_boxes,
    render_image,
    render_mask,
    source_box,
)


def test_default_pinpoints_match_llava() -> None:
    assert default_pinpoints("clip", (336, 336)) == [(336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008)]
    onevision = default_pinpoints("siglip", (384, 384))
    assert len(onevision) == 36 and onevision[0] == (384, 384) and onevision[-1] == (2304, 2304)
    assert (768, 1152) in onevision


def test_best_resolution_agrees_with_transformers() -> None:
    from transformers.image_processing_utils import select_best_resolution

    rng = np.random.default_rng(0)
    for family, tile in [("clip", (336, 336)), ("siglip", (384, 384))]:
        pinpoints = default_pinpoints(family, tile)
        for height, width in rng.integers(16, 3000, size=(300, 2)).tolist() + [[336, 672], [1000, 1000], [200, 2000]]:
            assert best_resolution((height, width), pinpoints) == tuple(select_best_resolution((height, width), pinpoints))


def test_parse_and_check_pinpoints() -> None:
    assert parse_pinpoints("336x672, 672X336") == [(336, 672), (672, 336)]
    with pytest.raises(ValueError, match="HEIGHTxWIDTH"):
        parse_pinpoints("336by672")
    with pytest.raises(ValueError, match="not a positive multiple"):
        check_pinpoints([(336, 600)], (336, 336))


def test_wide_image_gets_two_tiles_with_exact_boxes() -> None:
    views = anyres_views((400, 800), (336, 336), default_pinpoints("clip", (336, 336)))
    assert [v.name for v in views] == ["base", "r0c0", "r0c1"]
    assert [v.crop for v in views] == ["base", (0, 0), (0, 1)]
    boxes = [source_box((400, 800), v.ops) for v in views]
    assert boxes[0] == pytest.approx((0, 0, 800, 400))
    assert boxes[1] == pytest.approx((0, 0, 400, 400), abs=1e-6)
    assert boxes[2] == pytest.approx((400, 0, 800, 400), abs=1e-6)


def test_tall_image_is_padded_and_tiles_cover_it() -> None:
    size = (1000, 300)  # (height, width): best canvas 1008x336, padded left/right
    views = anyres_views(size, (336, 336), default_pinpoints("clip", (336, 336)))
    assert [v.name for v in views] == ["base", "r0c0", "r1c0", "r2c0"]
    resize, crop = views[1].ops
    assert isinstance(resize, Resize) and isinstance(crop, Crop)
    assert (resize.height, resize.width) == (1008, 303)  # aspect kept, ceil like transformers
    assert crop.left == -16  # (336 - 303) // 2 columns of padding on the left
    boxes = np.array([source_box(size, v.ops) for v in views[1:]])
    assert boxes[:, 1].min() == pytest.approx(0) and boxes[:, 3].max() == pytest.approx(1000)
    assert np.allclose(boxes[:-1, 3], boxes[1:, 1])  # tiles abut
    assert boxes[0, 0] < 0 < 300 < boxes[0, 2]  # the padding shows as a box wider than the image


def test_tiles_match_llava_next_image_processor(tmp_path: Path) -> None:
    from tiny_models import save_tiny_clip
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    encoder = load_encoder(str(save_tiny_clip(tmp_path / "clip")))
    pinpoints = [(32, 64), (64, 32), (64, 64), (96, 32), (32, 96)]
    processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, image_grid_pinpoints=[list(p) for p in pinpoints]
    )
    rng = np.random.default_rng(0)
    for height, width in [(50, 70), (90, 31), (40, 40)]:
        image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        views = anyres_views((height, width), encoder.image_size, pinpoints)
        ours = encoder.preprocess([render_image(image, v.ops) for v in views])
        theirs = processor(images=[image], return_tensors="pt")["pixel_values"][0]
        assert ours.shape == theirs.shape
        torch.testing.assert_close(ours, theirs.float(), rtol=0, atol=1e-5)


def test_text_mask_follows_the_tiles() -> None:
    size = (32, 64)  # a wide image: two 32x32 tiles, no resize
    views = anyres_views(size, (32, 32), [(32, 64)])
    mask = rasterize_boxes([[40, 8, 56, 16]], size)  # inside the right half
    coverage = patch_coverage(torch.stack([render_mask(mask, v.ops) for v in views]), 8)
    base, left, right = coverage.view(3, 4, 4)
    assert left.sum() == 0
    expected = torch.zeros(4, 4)
    expected[1, 1] = expected[1, 2] = 1.0  # x 40..56 -> tile columns 8..24 -> patch cols 1, 2; y 8..16 -> row 1
    torch.testing.assert_close(right, expected)
    assert base[:, 2:].sum() > 0 and base[:, :2].sum() == 0  # squeezed into the base view's right half
    assert output_size(size, views[0].ops) == (32, 32)


def test_rasterize_counts_partial_pixels() -> None:
    mask = rasterize_boxes([[0.5, 0, 2, 1], [1, 0, 3, 1]], (2, 4))
    torch.testing.assert_close(mask, torch.tensor([[0.5, 1, 1, 0], [0, 0, 0, 0]]))
    with pytest.raises(ValueError, match="text box 0"):
        rasterize_boxes([[1, 2, 3]], (4, 4))
