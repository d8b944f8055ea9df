"""Colour schemes for rendered pages, so that no colour can stand in for information.

A selector trained on white pages learns "keep what is not white". Every page here is drawn in
a :class:`Style` of one of five groups (white paper, tinted paper, dark with light text, coloured
panels, text over a photo), with flat, gradient or textured (ruled, grid, dotted, grainy)
backgrounds, and uniform "blank" images come in every colour. Hues are split into bands: train
and val draw from :data:`TRAIN_HUES`, the held-out test split only from :data:`TEST_HUES`, so its
colour schemes were never seen in training.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np
from PIL import Image

Color = tuple[int, int, int]

PAGE_GROUPS = ("white", "tinted", "dark", "panels", "photo")
FILLS = ("flat", "gradient", "ruled", "grid", "dots", "grain")
# Hue bands (fractions of the colour wheel): test hues lie between the training ones.
TRAIN_HUES = ((0.00, 0.06), (0.13, 0.30), (0.38, 0.55), (0.62, 0.70), (0.80, 0.90))
TEST_HUES = ((0.06, 0.13), (0.30, 0.38), (0.55, 0.62), (0.70, 0.80), (0.90, 1.00))


def hue(rng: np.random.Generator, held_out: bool) -> float:
    """A hue from the split's bands (held-out bands for the test split)."""
    bands = TEST_HUES if held_out else TRAIN_HUES
    low, high = bands[int(rng.integers(len(bands)))]
    return float(rng.uniform(low, high))


def hsv(h: float, s: float, v: float) -> Color:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0))
    return (round(r * 255), round(g * 255), round(b * 255))


def luminance(color: Color) -> float:
    r, g, b = color
    return 0.299 * r + 0.587 * g + 0.114 * b


def mix(a: Color, b: Color, t: float) -> Color:
    return tuple(round(x + (y - x) * t) for x, y in zip(a, b))  # type: ignore[return-value]


@dataclass(frozen=True)
class Style:
    """How a page is coloured: its group, paper, ink, an accent for rules/bars/panels, and the fill."""

    group: str
    paper: Color
    ink: Color
    accent: Color
    fill: str = "flat"
    texture_seed: int = 0
    held_out: bool = False

    @property
    def faint(self) -> Color:
        """Gridlines and hairlines: a step from the paper toward the ink."""
        return mix(self.paper, self.ink, 0.18)

    def describe(self) -> str:
        return f"{self.group}/{self.fill}"

    def ink_on(self, rng: np.random.Generator, behind: Color) -> Color:
        """Ink that reads on ``behind`` (a panel, a sign, a caption band), from the split's hues."""
        return readable_ink(rng, behind, self.held_out)

    def canvas(self, size: int | tuple[int, int]) -> Image.Image:
        """The page background: the paper colour, as a flat field, a gradient or a texture."""
        width, height = (size, size) if isinstance(size, int) else size
        return Image.fromarray(paint(self.paper, self.fill, (height, width), np.random.default_rng(self.texture_seed)))


def paint(paper: Color, fill: str, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """An ``(H, W, 3)`` uint8 background of ``paper`` with a predictable structure (``fill``)."""
    height, width = shape
    base = np.broadcast_to(np.array(paper, dtype=np.float32), (height, width, 3)).copy()
    light = luminance(paper) > 128
    step = -1.0 if light else 1.0  # texture lines go toward the middle grey, so they stay faint
    if fill == "gradient":
        angle = rng.uniform(0, 2 * np.pi)
        ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
        ramp = (xs * np.cos(angle) + ys * np.sin(angle)) / max(height, width)
        base += (ramp - ramp.mean())[..., None] * rng.uniform(30, 80) * np.array([1.0, 0.9, 1.1], dtype=np.float32)
    elif fill in ("ruled", "grid"):
        spacing = int(rng.integers(10, 22))
        strength = float(rng.uniform(25, 60)) * step
        offset = int(rng.integers(spacing))
        base[offset::spacing, :, :] += strength
        if fill == "grid":
            base[:, offset::spacing, :] += strength
    elif fill == "dots":
        spacing = int(rng.integers(8, 16))
        offset = int(rng.integers(spacing))
        base[offset::spacing, offset::spacing, :] += float(rng.uniform(40, 90)) * step
    elif fill == "grain":
        base += rng.normal(0.0, rng.uniform(4, 10), size=(height, width, 1)).astype(np.float32)
    return np.clip(base, 0, 255).astype(np.uint8)


def light_ink(rng: np.random.Generator, held_out: bool) -> Color:
    return hsv(hue(rng, held_out), rng.uniform(0.0, 0.35), rng.uniform(0.88, 1.0))


def dark_ink(rng: np.random.Generator, held_out: bool) -> Color:
    return hsv(hue(rng, held_out), rng.uniform(0.0, 0.8), rng.uniform(0.0, 0.35))


def pick_fill(rng: np.random.Generator, flat_share: float = 0.45) -> str:
    return "flat" if rng.random() < flat_share else str(rng.choice(FILLS[1:]))


def make_style(rng: np.random.Generator, group: str, held_out: bool) -> Style:
    """A random style of ``group`` whose hues come from the split's bands."""
    h = hue(rng, held_out)
    seed = int(rng.integers(2**31))
    accent = hsv(hue(rng, held_out), rng.uniform(0.45, 0.9), rng.uniform(0.45, 0.85))
    if group == "white":
        level = int(rng.integers(244, 256))
        return Style(group, (level, level, level), dark_ink(rng, held_out), accent, pick_fill(rng, 0.8), seed, held_out)
    if group == "tinted":
        paper = hsv(h, rng.uniform(0.08, 0.4), rng.uniform(0.78, 0.97))
        return Style(group, paper, dark_ink(rng, held_out), accent, pick_fill(rng), seed, held_out)
    if group == "dark":
        paper = hsv(h, rng.uniform(0.0, 0.85), rng.uniform(0.04, 0.4))
        return Style(group, paper, light_ink(rng, held_out), accent, pick_fill(rng), seed, held_out)
    if group == "panels":  # mid-tone or light paper, saturated panels behind parts of the text
        paper = hsv(h, rng.uniform(0.1, 0.7), rng.uniform(0.5, 0.95))
        ink = readable_ink(rng, paper, held_out)
        return Style(group, paper, ink, accent, pick_fill(rng, 0.6), seed, held_out)
    if group == "photo":
        return Style(group, (0, 0, 0), light_ink(rng, held_out), accent, "flat", seed, held_out)
    raise ValueError(f"unknown page group {group!r}; expected one of {PAGE_GROUPS}")


def readable_ink(rng: np.random.Generator, behind: Color, held_out: bool) -> Color:
    """Ink that contrasts with ``behind`` (for text on panels, signs and bands); mid tones get near black or white."""
    level = luminance(behind)
    if level > 190:
        return dark_ink(rng, held_out)
    if level > 128:
        return hsv(hue(rng, held_out), rng.uniform(0.0, 0.6), rng.uniform(0.0, 0.12))
    if level >= 70:
        return hsv(hue(rng, held_out), rng.uniform(0.0, 0.15), rng.uniform(0.95, 1.0))
    return light_ink(rng, held_out)


def render_blank(rng: np.random.Generator, size: int, held_out: bool) -> tuple[Image.Image, str]:
    """A uniform or near-uniform image of any colour: flat, faintly noisy, or a soft gradient.

    Such images carry almost no information, so a good selector keeps almost nothing of them
    whatever their colour (white, black, navy, sky blue ...).
    """
    level = rng.uniform(0.0, 1.0)
    colour = hsv(hue(rng, held_out), rng.uniform(0.0, 1.0), level)
    variant = str(rng.choice(["flat", "noise", "gradient"]))
    if variant == "flat":
        array = paint(colour, "flat", (size, size), rng)
    elif variant == "noise":
        array = np.clip(np.array(colour, np.float32) + rng.normal(0, rng.uniform(1, 4), (size, size, 3)), 0, 255).astype(np.uint8)
    else:
        array = paint(colour, "gradient", (size, size), rng)
    return Image.fromarray(array), variant
