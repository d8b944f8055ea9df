"""Page colour schemes: disjoint hue bands per split, readable ink, and backgrounds with a known structure."""

from __future__ import annotations

import colorsys

import numpy as np
import pytest

from token_reduction.images import styles

SEEDS = range(300)
INK_CONTRAST = 90  # luminance difference (0-255) between paper and ink that reads at a glance
MID_PAPER = (120, 150, 180)  # far from 0 and 255, so no fill is clipped
LIGHT_PAPER = (246, 240, 228)


def _in_bands(h: float, bands: tuple[tuple[float, float], ...], tolerance: float = 0.0) -> bool:
    """``h`` lies in one of ``bands`` (within ``tolerance``, around the wheel: 0.999 is next to 0.0)."""
    return any(low - tolerance <= x < high + tolerance for low, high in bands for x in (h, h - 1.0, h + 1.0))


def test_hue_bands_are_disjoint_and_cover_the_wheel() -> None:
    bands = sorted(styles.TRAIN_HUES + styles.TEST_HUES)
    assert all(low < high for low, high in bands)
    assert bands[0][0] == 0.0 and bands[-1][1] == 1.0
    for (_, end), (start, _) in zip(bands, bands[1:]):
        assert end == start  # neither gaps nor overlaps between neighbouring bands
    for low, high in styles.TRAIN_HUES:
        for t_low, t_high in styles.TEST_HUES:
            assert high <= t_low or t_high <= low, ((low, high), (t_low, t_high))
    # the bands alternate: every held-out hue sits between two training hues
    owners = ["test" if band in styles.TEST_HUES else "train" for band in bands]
    assert all(a != b for a, b in zip(owners, owners[1:]))


@pytest.mark.parametrize("held_out", [False, True])
def test_hue_draws_from_the_split_bands(held_out: bool) -> None:
    rng = np.random.default_rng(0)
    own, other = (styles.TEST_HUES, styles.TRAIN_HUES) if held_out else (styles.TRAIN_HUES, styles.TEST_HUES)
    draws = [styles.hue(rng, held_out) for _ in range(2000)]
    assert all(_in_bands(h, own) and not _in_bands(h, other) for h in draws)
    used = {next(i for i, (low, high) in enumerate(own) if low <= h < high) for h in draws}
    assert used == set(range(len(own)))  # every band of the split is used


def _contrasts(group: str, held_out: bool) -> np.ndarray:
    """Luminance difference between paper and ink of the styles of ``group`` made from :data:`SEEDS`."""
    values = []
    for seed in SEEDS:
        style = styles.make_style(np.random.default_rng(seed), group, held_out)
        values.append(abs(styles.luminance(style.paper) - styles.luminance(style.ink)))
    return np.array(values)


@pytest.mark.parametrize("held_out", [False, True], ids=["train", "test"])
@pytest.mark.parametrize("group", ["white", "tinted", "dark", "panels"])
def test_make_style_gives_readable_ink(group: str, held_out: bool) -> None:
    contrast = _contrasts(group, held_out)
    assert (contrast > INK_CONTRAST).mean() >= 0.95, np.sort(contrast)[:10]  # reads at a glance ...
    assert contrast.min() > 70, np.sort(contrast)[:10]  # ... and never close to the paper


@pytest.mark.parametrize("held_out", [False, True])
def test_ink_goes_the_right_way(held_out: bool) -> None:
    """What holds today for every seed: dark ink on light papers, light ink on dark ones, never equal."""
    for seed in SEEDS:
        for group in ("white", "tinted", "dark", "panels"):
            style = styles.make_style(np.random.default_rng(seed), group, held_out)
            paper, ink = styles.luminance(style.paper), styles.luminance(style.ink)
            if group in ("white", "tinted"):
                assert ink < paper - 35, (group, seed, style)
            elif group == "dark":
                assert ink > paper + 50, (group, seed, style)
            else:
                assert (ink < paper) == (paper > 128) and abs(ink - paper) > 70, (group, seed, style)


@pytest.mark.parametrize("held_out", [False, True])
def test_photo_style_ink_is_light_and_describes_itself(held_out: bool) -> None:
    """Text over photos sits on dark bands or reads on its own background: its default ink is light."""
    for seed in SEEDS:
        style = styles.make_style(np.random.default_rng(seed), "photo", held_out)
        assert styles.luminance(style.ink) > 150 and style.describe() == "photo/flat"


@pytest.mark.parametrize("group", styles.PAGE_GROUPS)
def test_make_style_is_seeded_and_tagged(group: str) -> None:
    a = styles.make_style(np.random.default_rng(7), group, True)
    b = styles.make_style(np.random.default_rng(7), group, True)
    assert a == b and a.group == group and a.held_out and a.fill in styles.FILLS
    assert a.describe() == f"{group}/{a.fill}"
    assert np.array_equal(np.asarray(a.canvas(40)), np.asarray(b.canvas(40)))
    with pytest.raises(ValueError, match="unknown page group"):
        styles.make_style(np.random.default_rng(0), "neon", False)


@pytest.mark.parametrize("group", styles.PAGE_GROUPS)
@pytest.mark.parametrize("held_out", [False, True])
def test_style_hues_come_from_the_split_bands(group: str, held_out: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every hue a style draws goes through ``styles.hue`` with its split, and so lies in that split's bands."""
    bands = styles.TEST_HUES if held_out else styles.TRAIN_HUES
    calls = []
    real_hue = styles.hue

    def spy(rng, split_held_out):
        value = real_hue(rng, split_held_out)
        calls.append((split_held_out, value))
        return value

    monkeypatch.setattr(styles, "hue", spy)
    for seed in range(100):
        rng = np.random.default_rng(seed)
        style = styles.make_style(rng, group, held_out)
        style.ink_on(rng, style.accent)
        style.ink_on(rng, (250, 250, 250))
        styles.render_blank(rng, 16, held_out)
    assert calls and all(flag is held_out and _in_bands(h, bands) for flag, h in calls)
    monkeypatch.undo()

    # and the colours themselves: saturated, bright enough colours show their hue after rounding to bytes
    checked = 0
    for seed in range(100):
        style = styles.make_style(np.random.default_rng(seed), group, held_out)
        for colour in (style.paper, style.ink, style.accent):
            h, s, v = colorsys.rgb_to_hsv(*(c / 255 for c in colour))
            if s >= 0.3 and v >= 0.3:
                assert _in_bands(h, bands, tolerance=0.02), (seed, colour, h)
                checked += 1
    assert checked >= 50


def test_flat_fill_is_constant() -> None:
    for paper in (MID_PAPER, LIGHT_PAPER, (10, 20, 30)):
        array = styles.paint(paper, "flat", (24, 40), np.random.default_rng(0))
        assert array.shape == (24, 40, 3) and array.dtype == np.uint8
        assert (array == np.array(paper, np.uint8)).all()


@pytest.mark.parametrize("paper", [MID_PAPER, LIGHT_PAPER, (20, 24, 40)])
@pytest.mark.parametrize("seed", range(5))
def test_ruled_fill_has_periodic_rows(paper: tuple[int, int, int], seed: int) -> None:
    array = styles.paint(paper, "ruled", (96, 64), np.random.default_rng(seed)).astype(np.int16)
    assert (array == array[:, :1]).all()  # every row is one colour: lines run across the page
    lined = np.flatnonzero((array[:, 0] != np.array(paper)).any(axis=1))
    assert len(lined) >= 4
    spacing = np.diff(lined)
    assert (spacing == spacing[0]).all() and 10 <= spacing[0] < 22 and lined[0] < spacing[0]
    shift = array[lined[0], 0] - np.array(paper)
    assert (array[lined, 0] == array[lined[0], 0]).all()
    assert 20 <= abs(int(shift[0])) <= 60  # faint lines ...
    light = styles.luminance(paper) > 128
    assert (shift < 0).all() if light else (shift > 0).all()  # ... toward mid grey


@pytest.mark.parametrize("seed", range(5))
def test_grid_and_dots_fills_are_periodic(seed: int) -> None:
    grid = styles.paint(MID_PAPER, "grid", (80, 80), np.random.default_rng(seed))
    marked = (grid != np.array(MID_PAPER, np.uint8)).any(axis=2)
    rows, cols = np.flatnonzero(marked.all(axis=1)), np.flatnonzero(marked.all(axis=0))
    assert len(rows) >= 3 and np.array_equal(rows, cols) and len(set(np.diff(rows))) == 1
    assert np.array_equal(marked, np.add.outer(np.isin(np.arange(80), rows), np.isin(np.arange(80), cols)) > 0)
    dots = styles.paint(MID_PAPER, "dots", (80, 80), np.random.default_rng(seed))
    ys, xs = np.nonzero((dots != np.array(MID_PAPER, np.uint8)).any(axis=2))
    assert len(ys) >= 9 and marked.mean() > 0.05 > len(ys) / 80**2
    assert len(set(np.diff(np.unique(ys)))) == 1 and np.array_equal(np.unique(ys), np.unique(xs))


@pytest.mark.parametrize("seed", range(5))
def test_grain_fill_is_noisy_around_the_paper(seed: int) -> None:
    array = styles.paint(MID_PAPER, "grain", (96, 96), np.random.default_rng(seed)).astype(np.float32)
    mean, std = array.reshape(-1, 3).mean(axis=0), array.reshape(-1, 3).std(axis=0)
    assert np.abs(mean - np.array(MID_PAPER)).max() < 1.5
    assert (std > 2.5).all() and (std < 12).all()
    assert np.abs(np.diff(array, axis=1)).mean() > 2  # noise, not a smooth ramp


@pytest.mark.parametrize("seed", range(5))
def test_gradient_fill_is_smooth_around_the_paper(seed: int) -> None:
    array = styles.paint(MID_PAPER, "gradient", (96, 96), np.random.default_rng(seed)).astype(np.float32)
    steps = max(np.abs(np.diff(array, axis=0)).max(), np.abs(np.diff(array, axis=1)).max())
    assert steps <= 3
    assert np.ptp(array[..., 1]) > 15  # it does change across the page
    assert np.abs(array.reshape(-1, 3).mean(axis=0) - np.array(MID_PAPER)).max() < 2


@pytest.mark.parametrize("held_out", [False, True])
def test_blank_images_are_near_uniform_in_any_colour(held_out: bool) -> None:
    rng = np.random.default_rng(3)
    variants, lows, highs = set(), 0, 0
    for _ in range(60):
        image, variant = styles.render_blank(rng, 48, held_out)
        pixels = np.asarray(image, dtype=np.float32)
        assert image.mode == "RGB" and image.size == (48, 48)
        std = pixels.reshape(-1, 3).std(axis=0).max()
        steps = max(np.abs(np.diff(pixels, axis=0)).max(), np.abs(np.diff(pixels, axis=1)).max())
        assert std < 6 or steps <= 4, (variant, std, steps)
        variants.add(variant)
        level = styles.luminance(tuple(pixels.reshape(-1, 3).mean(axis=0)))
        lows, highs = lows + (level < 60), highs + (level > 190)
    assert variants == {"flat", "noise", "gradient"} and lows and highs  # dark and light blanks both occur
