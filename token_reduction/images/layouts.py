"""More page layouts (slides, tables, forms, app screens) and the one table of all page renderers.

Layouts differ in where text sits and how much of the page is empty, panelled or ruled, which is
what a selector must cope with. ``table`` and ``form`` are held out: only the test split uses them.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from token_reduction.images.pages import (
    _WORDS,
    Canvas,
    Page,
    load_font,
    panel,
    px,
    render_chart,
    render_document,
    render_photo_text,
    render_receipt,
    sentence,
    wrap,
)
from token_reduction.images.styles import Style


def _title(rng: np.random.Generator, low: int = 2, high: int = 4) -> str:
    return sentence(rng, low, high)[:-1].title()


def render_slide(rng: np.random.Generator, size: int, fonts: dict[str, str], style: Style) -> Page:
    """A presentation slide: a large title (often on a band) and a few bullet points."""
    canvas = Canvas(style.canvas(size))
    margin = px(float(rng.integers(14, 28)), size)
    title = load_font(fonts["bold"], px(float(rng.integers(20, 30)), size))
    body = load_font(fonts["regular"], px(float(rng.integers(13, 19)), size))
    lines = wrap(_title(rng), title, size - 2 * margin)[:2]
    ink = style.ink
    if style.group == "panels" or rng.random() < 0.3:
        ink = panel(canvas, rng, style, (0, 0, size - 1, margin * 1.5 + title.size * 1.2 * len(lines)))
    y = margin * 0.9
    for line in lines:
        canvas.words((margin, y), line, title, ink)
        y += title.size * 1.2
    y += margin * 1.2
    bullet = px(6, size)
    while y + body.size * 1.5 < size - margin:
        for index, line in enumerate(wrap(sentence(rng, 3, 9)[:-1], body, size - 2 * margin - 3 * bullet)[:2]):
            if y + body.size * 1.5 >= size - margin:
                break
            if index == 0:
                cy = round(y + body.size * 0.55)
                canvas.draw.ellipse([margin, cy - bullet // 2, margin + bullet, cy + bullet // 2], fill=style.ink)
            canvas.words((margin + 3 * bullet, y), line, body, style.ink)
            y += body.size * 1.35
        y += body.size * float(rng.uniform(0.4, 1.2))
    return canvas.result()


def render_ui(rng: np.random.Generator, size: int, fonts: dict[str, str], style: Style) -> Page:
    """An app screen: a top bar, a side menu, buttons and a list of items with values."""
    canvas = Canvas(style.canvas(size))
    small = load_font(fonts["regular"], px(float(rng.integers(10, 14)), size))
    bold = load_font(fonts["bold"], px(float(rng.integers(12, 17)), size))
    bar_h = round(bold.size * 2.2)
    bar_ink = panel(canvas, rng, style, (0, 0, size - 1, bar_h))
    canvas.words((px(10, size), bar_h * 0.25), _title(rng, 1, 3), bold, bar_ink)
    side_w = round(size * rng.uniform(0.22, 0.32)) if rng.random() < 0.7 else 0
    if side_w:
        canvas.draw.rectangle([0, bar_h, side_w, size - 1], fill=style.faint)
        y = bar_h + px(10, size)
        while y + small.size * 2 < size:
            canvas.words((px(8, size), y), str(rng.choice(_WORDS)).title(), small, style.ink)
            y += small.size * 2.2
    x0, y = side_w + px(12, size), bar_h + px(12, size)
    for _ in range(int(rng.integers(1, 3))):  # buttons
        label = str(rng.choice(_WORDS)).upper()
        w = small.getlength(label) + px(16, size)
        if x0 + w > size - px(8, size):
            break
        ink = panel(canvas, rng, style, (x0, y, x0 + w, y + small.size * 2))
        canvas.text((x0 + px(8, size), y + small.size * 0.45), label, small, ink)
        x0 += w + px(10, size)
    y += small.size * 3
    left = side_w + px(12, size)
    while y + small.size * 2 < size - px(6, size):
        canvas.words((left, y), _title(rng, 1, 3), small, style.ink)
        value = f"{float(rng.uniform(0, 999)):.2f}"
        canvas.text((size - px(10, size) - small.getlength(value), y), value, small, style.ink)
        canvas.draw.line([(left, round(y + small.size * 1.6)), (size - px(8, size), round(y + small.size * 1.6))], fill=style.faint)
        y += small.size * 2.3
    return canvas.result()


def render_table(rng: np.random.Generator, size: int, fonts: dict[str, str], style: Style) -> Page:
    """A data table: a filled header row, ruled cells with words and numbers (held out of training)."""
    canvas = Canvas(style.canvas(size))
    font = load_font(fonts["regular"], px(float(rng.integers(10, 15)), size))
    bold = load_font(fonts["bold"], px(float(rng.integers(11, 16)), size))
    margin = px(float(rng.integers(8, 20)), size)
    columns = int(rng.integers(3, 6))
    col_w = (size - 2 * margin) / columns
    row_h = font.size * float(rng.uniform(1.8, 2.4))
    y = float(margin)
    head_ink = panel(canvas, rng, style, (margin, y, size - margin, y + row_h))
    for c in range(columns):
        canvas.text((margin + c * col_w + px(4, size), y + row_h * 0.2), str(rng.choice(_WORDS)).title()[:8], bold, head_ink)
    y += row_h
    while y + row_h < size - margin:
        for c in range(columns):
            cell = str(rng.choice(_WORDS))[:8] if c == 0 else f"{float(rng.uniform(0, 9999)):.{int(rng.integers(0, 3))}f}"
            if font.getlength(cell) < col_w - px(6, size):
                canvas.text((margin + c * col_w + px(4, size), y + row_h * 0.25), cell, font, style.ink)
        y += row_h
        canvas.draw.line([(margin, round(y)), (size - margin, round(y))], fill=style.faint)
    for c in range(columns + 1):
        x = round(margin + c * col_w)
        canvas.draw.line([(x, margin), (x, round(y))], fill=style.faint)
    return canvas.result()


def render_form(rng: np.random.Generator, size: int, fonts: dict[str, str], style: Style) -> Page:
    """A form: labels beside input boxes (some filled in), and check boxes (held out of training)."""
    canvas = Canvas(style.canvas(size))
    label = load_font(fonts["regular"], px(float(rng.integers(11, 15)), size))
    title = load_font(fonts["bold"], px(float(rng.integers(16, 22)), size))
    margin = px(float(rng.integers(12, 24)), size)
    canvas.words((margin, margin), _title(rng), title, style.ink)
    y = margin + title.size * 2.0
    field_x = margin + size * 0.32
    while y + label.size * 2.4 < size - margin:
        canvas.words((margin, y), _title(rng, 1, 2) + ":", label, style.ink)
        box = (field_x, y - label.size * 0.3, size - margin, y + label.size * 1.5)
        if rng.random() < 0.3:
            canvas.draw.rectangle([round(v) for v in box], outline=style.ink)
            box_w = label.size * 1.2
            canvas.draw.rectangle([round(field_x), round(y), round(field_x + box_w), round(y + box_w)], outline=style.ink)
        else:
            canvas.draw.rectangle([round(v) for v in box], outline=style.faint, fill=style.paper if rng.random() < 0.5 else None)
            if rng.random() < 0.6:
                canvas.words((field_x + px(5, size), y), sentence(rng, 1, 3)[:-1], label, style.ink)
        y += label.size * float(rng.uniform(2.4, 3.2))
    return canvas.result()


PageRenderer = Callable[..., Page]
RENDERERS: dict[str, PageRenderer] = {
    "document": render_document,
    "receipt": render_receipt,
    "chart": render_chart,
    "slide": render_slide,
    "ui": render_ui,
    "table": render_table,
    "form": render_form,
    "photo_text": render_photo_text,
}
