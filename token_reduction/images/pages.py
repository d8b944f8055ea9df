"""Text-rich pages drawn with Pillow, each with tight ground-truth boxes for every word it draws.

Pages give the selector training images where the important tokens are known: the boxes say
where the ink of every word, number and label is, so evaluation can ask whether the selector kept
the tokens that cover text. Fonts are matplotlib's bundled TTFs, so nothing is downloaded.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from token_reduction.images.styles import Color, Style, hsv, hue, paint, pick_fill

Box = list[int]
Font = ImageFont.FreeTypeFont
Page = tuple[Image.Image, list[Box], list[str]]
"""A rendered page: the image, the ink box of every word, and the words themselves (same order)."""

PAGE_KINDS = ("document", "receipt", "chart", "photo_text")

_WORDS = (
    "about above across after again against almost along also always among answer area around "
    "because become before began behind being below better between body both bring build called "
    "came carry cause center change check city class clear close color common could country course "
    "cover cross current data day design detail differ direct during early earth energy enough even "
    "every example face fact family field figure final first follow force form found free friend "
    "front general given good great ground group grow half hand happen heard heavy help high hold "
    "home hour house idea image inside island just keep kind known land large later learn level light "
    "line list little local long look made main major make many mark matter measure might model "
    "moment month morning move much must name near need never next night north note number object "
    "often only open order other over paper part pattern people place plan plant point power present "
    "problem process produce public question quick rather reach read ready record region remain report "
    "rest result river road round rule same scale school science second section seem sense serve "
    "several shape short should show side signal simple since size small sound south space special "
    "stand start state step still story strong study subject surface system table take test than "
    "their there these thing think those though through time today together toward travel tree true "
    "under unit until upon usual value very voice water weather week weight well west where while "
    "whole wide window within without word work world year young"
).split()
_GOODS = (
    "APPLES BREAD BUTTER CHEESE COFFEE EGGS FLOUR GRAPES HONEY JUICE LEMONS MILK NOODLES OLIVES "
    "ORANGES PASTA PEPPER POTATOES RICE SALT SOAP SUGAR TEA TOMATOES WATER YOGURT BATTERY CANDLES "
    "NAPKINS PENCIL TAPE"
).split()
_STORES = "MARKET GROCER DELI BAKERY PANTRY STORE CAFE OUTLET DEPOT".split()


def px(base: float, size: int) -> int:
    """Scale a font size designed for 336 px pages to ``size``; never below a legible 6 px."""
    return max(6, round(base * size / 336))


@functools.lru_cache(maxsize=512)
def load_font(path: str, pixels: int) -> Font:
    """Font objects are costly to open and pages reuse a handful of sizes, so cache them."""
    return ImageFont.truetype(path, pixels)


class Canvas:
    """A page being drawn: every call to :meth:`text` inks a word and records its tight box."""

    def __init__(self, image: Image.Image) -> None:
        self.image = image
        self.draw = ImageDraw.Draw(image)
        self.boxes: list[Box] = []
        self.words_drawn: list[str] = []

    @property
    def size(self) -> tuple[int, int]:
        return self.image.size

    def fits(self, box: tuple[float, float, float, float]) -> bool:
        width, height = self.size
        return box[0] >= 0 and box[1] >= 0 and box[2] <= width and box[3] <= height

    def text(self, xy: tuple[float, float], text: str, font: Font, fill: Color) -> Box | None:
        """Draw ``text`` at ``xy`` only if it lands fully inside the page; return its ink box."""
        xy = (round(xy[0]), round(xy[1]))
        x0, y0, x1, y1 = self.draw.textbbox(xy, text, font=font)
        if x1 <= x0 or y1 <= y0 or not self.fits((x0, y0, x1, y1)):
            return None
        self.draw.text(xy, text, font=font, fill=fill)
        box = [int(x0), int(y0), int(x1), int(y1)]
        self.boxes.append(box)
        self.words_drawn.append(text)
        return box

    def words(self, xy: tuple[float, float], line: str, font: Font, fill: Color, gap: float | None = None) -> float:
        """Draw a line word by word (one box each); return the x where the line ended."""
        x, y = xy
        space = font.getlength(" ") if gap is None else gap
        for word in line.split():
            self.text((x, y), word, font, fill)
            x += font.getlength(word) + space
        return x

    def rotated_text(self, xy: tuple[int, int], text: str, font: Font, fill: Color) -> Box | None:
        """Draw ``text`` turned 90 degrees counter-clockwise with its top-left ink corner at ``xy``."""
        left, top, right, bottom = font.getbbox(text)
        mask = Image.new("L", (right - left + 2, bottom - top + 2), 0)
        ImageDraw.Draw(mask).text((1 - left, 1 - top), text, font=font, fill=255)
        mask = mask.rotate(90, expand=True)
        ink = mask.getbbox()
        if ink is None:
            return None
        mask = mask.crop(ink)
        box = [xy[0], xy[1], xy[0] + mask.width, xy[1] + mask.height]
        if not self.fits(tuple(box)):
            return None
        self.image.paste(Image.new("RGB", mask.size, fill), (xy[0], xy[1]), mask)
        self.boxes.append(box)
        self.words_drawn.append(text)
        return box

    def result(self) -> "Page":
        return self.image, self.boxes, self.words_drawn


def sentence(rng: np.random.Generator, low: int, high: int) -> str:
    """A capitalised run of common words, sometimes with a number, ending in a full stop."""
    words = [str(w) for w in rng.choice(_WORDS, size=int(rng.integers(low, high + 1)))]
    if len(words) > 3 and rng.random() < 0.25:
        words[int(rng.integers(1, len(words)))] = str(int(rng.integers(2, 2030)))
    words[0] = words[0].capitalize()
    return " ".join(words) + "."


def wrap(text: str, font: Font, width: float) -> list[str]:
    """Greedy word wrap; a word wider than ``width`` on its own is dropped rather than overflow."""
    lines: list[str] = []
    current: list[str] = []
    for word in text.split():
        if font.getlength(word) > width:
            continue
        if current and font.getlength(" ".join([*current, word])) > width:
            lines.append(" ".join(current))
            current = []
        current.append(word)
    if current:
        lines.append(" ".join(current))
    return lines


def panel(canvas: Canvas, rng: np.random.Generator, style: Style, box: tuple[float, float, float, float]) -> Color:
    """Fill ``box`` with the style's accent (a coloured panel) and return an ink that reads on it."""
    canvas.draw.rectangle([round(v) for v in box], fill=style.accent)
    return style.ink_on(rng, style.accent)


def render_document(rng: np.random.Generator, size: int, fonts: dict[str, str], style: Style) -> Page:
    """Title, optional byline and rule, then headed paragraphs in one or two columns."""
    canvas = Canvas(style.canvas(size))
    ink = style.ink
    margin = px(float(rng.integers(12, 30)), size)
    width = size - 2 * margin
    title_font = load_font(fonts["bold"], px(float(rng.integers(20, 29)), size))
    body_px = px(float(rng.integers(10, 17)), size)
    body = load_font(fonts["regular"], body_px)
    head = load_font(fonts["bold"], px(float(rng.integers(13, 19)), size))
    y = float(margin)
    title_lines = wrap(" ".join(sentence(rng, 2, 5)[:-1].title().split()), title_font, width)[:2]
    title_ink = ink
    if style.group == "panels":  # a coloured header band behind the title
        title_ink = panel(canvas, rng, style, (0, 0, size - 1, margin + title_font.size * 1.25 * len(title_lines) + margin / 2))
    for line in title_lines:
        canvas.words((margin, y), line, title_font, title_ink)
        y += title_font.size * 1.25
    if style.group == "panels":
        y += margin / 2
    if rng.random() < 0.6:
        byline = load_font(fonts["regular"], px(float(rng.integers(10, 13)), size))
        canvas.words((margin, y), f"{sentence(rng, 2, 4)[:-1]} {int(rng.integers(1990, 2030))}", byline, ink)
        y += byline.size * 1.6
    if rng.random() < 0.7:
        canvas.draw.line([(margin, round(y)), (size - margin, round(y))], fill=ink, width=max(1, size // 336))
        y += body_px * 0.8
    columns = 2 if body_px <= px(13, size) and rng.random() < 0.5 else 1
    gutter = px(14, size)
    col_width = (width - gutter * (columns - 1)) / columns
    justify = bool(rng.random() < 0.5)
    leading = body.size * float(rng.uniform(1.2, 1.5))
    bottom = size - margin
    top = y
    for column in range(columns):
        x0 = margin + column * (col_width + gutter)
        y = top
        while y + leading <= bottom:
            if rng.random() < 0.3 and y + head.size * 1.6 + leading <= bottom:
                canvas.words((x0, y), sentence(rng, 1, 3)[:-1].title(), head, ink)
                y += head.size * 1.5
            paragraph = " ".join(sentence(rng, 6, 16) for _ in range(int(rng.integers(1, 4))))
            lines = wrap(paragraph, body, col_width)
            line_ink = ink
            if style.group == "panels" and rng.random() < 0.4:  # a call-out box behind the paragraph
                room = min(len(lines), int((bottom - y) // leading))
                if room > 0:
                    line_ink = panel(canvas, rng, style, (x0 - 4, y - 3, x0 + col_width + 4, y + room * leading + 1))
            for index, line in enumerate(lines):
                if y + leading > bottom:
                    break
                gap = None
                words = line.split()
                if justify and index < len(lines) - 1 and len(words) > 1:
                    gap = (col_width - sum(body.getlength(w) for w in words)) / (len(words) - 1)
                canvas.words((x0, y), line, body, line_ink, gap)
                y += leading
            y += leading * 0.5
    return canvas.result()


def render_receipt(rng: np.random.Generator, size: int, fonts: dict[str, str], style: Style) -> Page:
    """A till receipt (the style's paper) lying on a table of any colour and texture."""
    table = hsv(hue(rng, style.held_out), float(rng.uniform(0, 0.9)), float(rng.uniform(0.05, 0.95)))
    canvas = Canvas(Image.fromarray(paint(table, pick_fill(rng), (size, size), rng)))
    paper_w = int(size * rng.uniform(0.6, 0.85))
    px0 = int(rng.integers(px(6, size), max(px(6, size), size - paper_w - px(6, size)) + 1))
    py0 = int(rng.integers(0, px(24, size)))
    canvas.image.paste(style.canvas((paper_w + 1, size - py0)), (px0, py0))
    ink = style.ink
    pad = px(10, size)
    left, right = px0 + pad, px0 + paper_w - pad
    font = load_font(fonts["regular"], px(float(rng.integers(10, 15)), size))
    bold = load_font(fonts["bold"], px(float(rng.integers(15, 21)), size))
    step = font.size * 1.35
    y = py0 + pad

    def centered(text: str, face: Font) -> None:
        nonlocal y
        canvas.words(((left + right - face.getlength(text)) / 2, y), text, face, ink)
        y += face.size * 1.35

    def priced(label: str, amount: float, face: Font) -> None:
        nonlocal y
        price = f"{amount:.2f}"
        if face.getlength(f"{label} {price}") <= right - left:
            canvas.words((left, y), label, face, ink)
            canvas.text((right - face.getlength(price), y), price, face, ink)
        y += face.size * 1.35

    def rule() -> None:
        nonlocal y
        canvas.draw.line([(left, round(y + step * 0.3)), (right, round(y + step * 0.3))], fill=ink, width=1)
        y += step * 0.7

    centered(f"{rng.choice(_WORDS).upper()} {rng.choice(_STORES)}", bold)
    centered(f"{int(rng.integers(1, 999))} {str(rng.choice(_WORDS)).upper()} ST", font)
    centered(f"{int(rng.integers(2015, 2030))}-{int(rng.integers(1, 13)):02d}-{int(rng.integers(1, 29)):02d} "
             f"{int(rng.integers(7, 23)):02d}:{int(rng.integers(0, 60)):02d}", font)
    rule()
    total = 0.0
    reserve = step * 5.5
    for _ in range(int(rng.integers(3, 14))):
        if y + reserve > size - pad:
            break
        amount = float(rng.integers(49, 2500)) / 100
        count = int(rng.integers(1, 4))
        label = str(rng.choice(_GOODS)) + (f" {count}x" if count > 1 else "")
        priced(label, amount * count, font)
        total += amount * count
    rule()
    tax = round(total * 0.08, 2)
    for label, amount, face in (("SUBTOTAL", total, font), ("TAX", tax, font), ("TOTAL", total + tax, bold)):
        if y + face.size * 1.35 <= size - pad:
            priced(label, amount, face)
    if y + step * 1.5 <= size - pad:
        y += step * 0.5
        centered("THANK YOU", font)
    return canvas.result()


def render_chart(rng: np.random.Generator, size: int, fonts: dict[str, str], style: Style) -> Page:
    """A bar, line or filled-area chart with title, axis labels (the y one rotated), ticks and categories."""
    canvas = Canvas(style.canvas(size))
    ink = style.ink
    title = load_font(fonts["bold"], px(float(rng.integers(14, 21)), size))
    label = load_font(fonts["regular"], px(float(rng.integers(11, 15)), size))
    tick = load_font(fonts["regular"], px(float(rng.integers(10, 13)), size))
    margin = px(8, size)
    heading = sentence(rng, 2, 4)[:-1].title()
    canvas.words(((size - title.getlength(heading)) / 2, margin), heading, title, ink)
    top = margin + title.size * 1.8
    y_label = str(rng.choice(_WORDS)).title()
    canvas.rotated_text((margin, int(size / 2 - label.getlength(y_label) / 2)), y_label, label, ink)
    peak = int(rng.choice([10, 20, 50, 100, 500, 1000]))
    ticks = [peak * i // 5 for i in range(6)]
    tick_w = max(tick.getlength(str(t)) for t in ticks)
    x0 = int(margin + label.size * 1.3 + tick_w + px(8, size))
    x1 = size - margin - px(4, size)
    y1 = int(size - margin - label.size * 1.5 - tick.size * 1.8)
    y0 = int(top)
    for value in ticks:
        y = y1 - (y1 - y0) * value / peak
        canvas.draw.line([(x0, round(y)), (x1, round(y))], fill=style.faint, width=1)
        canvas.text((x0 - px(5, size) - tick.getlength(str(value)), y - tick.size * 0.6), str(value), tick, ink)
    canvas.draw.line([(x0, y0), (x0, y1), (x1, y1)], fill=ink, width=max(1, size // 224))
    x_label = str(rng.choice(_WORDS)).title()
    canvas.text(((x0 + x1 - label.getlength(x_label)) / 2, y1 + tick.size * 1.6), x_label, label, ink)
    names = [str(w)[:6].title() for w in rng.choice(_WORDS, size=int(rng.integers(3, 8)), replace=False)]
    slot = (x1 - x0) / len(names)
    while len(names) > 2 and max(tick.getlength(n) for n in names) > slot * 0.95:
        names.pop()
        slot = (x1 - x0) / len(names)
    values = rng.uniform(0.1, 0.95, size=len(names)) * peak
    color = style.accent
    points = []
    for index, (name, value) in enumerate(zip(names, values)):
        centre = x0 + slot * (index + 0.5)
        height = (y1 - y0) * value / peak
        points.append((round(centre), round(y1 - height)))
        if tick.getlength(name) <= slot * 0.95:
            canvas.text((centre - tick.getlength(name) / 2, y1 + px(4, size)), name, tick, ink)
    shape = rng.random()
    if shape < 0.45:
        for cx, cy in points:
            canvas.draw.rectangle([round(cx - slot * 0.3), cy, round(cx + slot * 0.3), y1 - 1], fill=color)
    elif shape < 0.7:  # filled area: a large uniform region that is not background
        outline = [(x0 + 1, y1 - 1), *points, (x1 - 1, y1 - 1)]
        canvas.draw.polygon(outline, fill=color)
    else:
        canvas.draw.line(points, fill=color, width=max(2, size // 112))
        r = max(2, size // 100)
        for cx, cy in points:
            canvas.draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=color)
    return canvas.result()


def _free_spot(rng: np.random.Generator, size: int, w: int, h: int, taken: list[Box]) -> tuple[int, int] | None:
    """A random top-left corner for a ``w x h`` panel that overlaps nothing already placed."""
    if w >= size or h >= size:
        return None
    for _ in range(20):
        x, y = int(rng.integers(0, size - w)), int(rng.integers(0, size - h))
        if all(x + w <= a or a2 <= x or y + h <= b or b2 <= y for a, b, a2, b2 in taken):
            return x, y
    return None


def render_photo_text(rng: np.random.Generator, size: int, fonts: dict[str, str], style: Style, photo: Image.Image) -> Page:
    """Text over a photograph: a caption band plus signs and tags in free spots."""
    canvas = Canvas(photo.convert("RGB").resize((size, size)))
    taken: list[Box] = []
    if rng.random() < 0.75:
        face = load_font(fonts["regular"], px(float(rng.integers(12, 21)), size))
        lines = wrap(sentence(rng, 3, 9)[:-1], face, size - px(16, size))[:2]
        band_h = round(face.size * (1.4 * len(lines) + 0.5))
        at_top = rng.random() < 0.3
        band_y = 0 if at_top else size - band_h
        overlay = Image.new("RGBA", (size, band_h), (0, 0, 0, int(rng.integers(150, 230))))
        canvas.image.paste(overlay, (0, band_y), overlay)
        for index, line in enumerate(lines):
            canvas.words((px(8, size), band_y + face.size * (0.3 + 1.4 * index)), line, face, style.ink)
        taken.append([0, band_y, size, band_y + band_h])
    for _ in range(int(rng.integers(1, 4))):
        sign = rng.random() < 0.6
        base = rng.integers(16, 29) if sign else rng.integers(10, 15)
        face = load_font(fonts["bold" if sign else "regular"], px(float(base), size))
        words = " ".join(str(w) for w in rng.choice(_WORDS, size=int(rng.integers(1, 3))))
        text = words.upper() if sign else words.title()
        pad = px(6, size)
        left, top, right, bottom = face.getbbox(text)
        w, h = right - left + 2 * pad, bottom - top + 2 * pad
        spot = _free_spot(rng, size, w, h, taken)
        if spot is None:
            continue
        fill = hsv(hue(rng, style.held_out), float(rng.uniform(0, 1)), float(rng.uniform(0.2, 1))) if sign else (250, 250, 245)
        text_fill = style.ink_on(rng, fill)
        canvas.draw.rectangle([spot[0], spot[1], spot[0] + w - 1, spot[1] + h - 1], fill=fill, outline=text_fill)
        canvas.words((spot[0] + pad - left, spot[1] + pad - top), text, face, text_fill)
        taken.append([spot[0], spot[1], spot[0] + w, spot[1] + h])
    if rng.random() < 0.5:  # free-standing text straight on the photo, with no band or sign behind it
        face = load_font(fonts["bold"], px(float(rng.integers(18, 30)), size))
        text = " ".join(str(w) for w in rng.choice(_WORDS, size=int(rng.integers(1, 3)))).upper()
        left, top, right, bottom = face.getbbox(text)
        spot = _free_spot(rng, size, right - left + 4, bottom - top + 4, taken)
        if spot is not None:
            behind = tuple(int(v) for v in np.asarray(canvas.image.crop((*spot, spot[0] + right - left, spot[1] + bottom - top))).reshape(-1, 3).mean(0))
            canvas.words((spot[0] - left + 2, spot[1] - top + 2), text, face, style.ink_on(rng, behind))  # type: ignore[arg-type]
    return canvas.result()


def font_files(family_files: dict[str, str], font_dir: Path) -> dict[str, str]:
    """Resolve a family's ``regular``/``bold`` file names inside ``font_dir``, naming any missing file."""
    resolved = {}
    for weight in ("regular", "bold"):
        path = font_dir / family_files[weight]
        if not path.is_file():
            raise FileNotFoundError(f"font file {path} is missing; the default set needs matplotlib's bundled fonts")
        resolved[weight] = str(path)
    return resolved
