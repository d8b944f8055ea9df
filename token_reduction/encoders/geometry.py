"""Resize/crop plans shared by pixels and masks, so a text mask follows the exact path of its image.

Every preprocessing step we need (an encoder's resize and center crop, AnyRes's resize, pad and
tiling) is a :class:`Resize` or a :class:`Crop` whose box may reach past the edges (that part is
zero padding). Describing a view of an image as a tuple of such ops lets the same plan render the
RGB crop (with PIL, like Hugging Face's PIL image processors), the float text mask (with torch),
and the crop's footprint in original pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

import torch
import torch.nn.functional as F
from PIL import Image


@dataclass(frozen=True)
class Resize:
    """Stretch the whole canvas to ``height x width`` (aspect ratio is the plan's business)."""

    height: int
    width: int


@dataclass(frozen=True)
class Crop:
    """Take the ``height x width`` window at ``(top, left)``; parts outside the canvas are zeros."""

    top: int
    left: int
    height: int
    width: int


Op = Union[Resize, Crop]
Size = tuple[int, int]
"""``(height, width)`` in pixels."""


def output_size(size: Size, ops: Sequence[Op]) -> Size:
    """Size of the canvas after ``ops``."""
    for op in ops:
        size = (op.height, op.width)
    return size


def source_box(size: Size, ops: Sequence[Op]) -> tuple[float, float, float, float]:
    """``(x0, y0, x1, y1)`` of the original image that the result of ``ops`` shows.

    Affine, so it may extend past the image where the view includes padding; mapping a patch of
    the view back to the original is then a plain linear interpolation inside this box.
    """
    height, width = size
    x0, y0, x1, y1 = 0.0, 0.0, float(width), float(height)
    for op in ops:
        if isinstance(op, Crop):
            sx, sy = (x1 - x0) / width, (y1 - y0) / height
            x0, y0 = x0 + op.left * sx, y0 + op.top * sy
            x1, y1 = x0 + op.width * sx, y0 + op.height * sy
        height, width = op.height, op.width
    return (x0, y0, x1, y1)


def render_image(image: Image.Image, ops: Sequence[Op], resample: int = Image.Resampling.BICUBIC) -> Image.Image:
    """Apply ``ops`` to a PIL image; PIL's ``crop`` fills out-of-canvas areas with black (zeros)."""
    for op in ops:
        if isinstance(op, Resize):
            if image.size != (op.width, op.height):
                image = image.resize((op.width, op.height), resample=resample)
        elif (op.left, op.top, op.width, op.height) != (0, 0, *image.size):
            image = image.crop((op.left, op.top, op.left + op.width, op.top + op.height))
    return image


def render_mask(mask: torch.Tensor, ops: Sequence[Op]) -> torch.Tensor:
    """Apply ``ops`` to a float ``(H, W)`` mask: antialiased bilinear resizes keep coverage fractions."""
    for op in ops:
        if isinstance(op, Resize):
            if tuple(mask.shape) != (op.height, op.width):
                mask = F.interpolate(
                    mask[None, None], size=(op.height, op.width), mode="bilinear", antialias=True, align_corners=False
                )[0, 0].clamp_(0.0, 1.0)
        else:
            mask = crop_tensor(mask, op)
    return mask


def crop_tensor(mask: torch.Tensor, op: Crop) -> torch.Tensor:
    """Window of a 2-D tensor with zero padding wherever the window leaves it."""
    height, width = mask.shape
    if (op.top, op.left, op.height, op.width) == (0, 0, height, width):
        return mask
    out = mask.new_zeros(op.height, op.width)
    y0, x0 = max(op.top, 0), max(op.left, 0)
    y1, x1 = min(op.top + op.height, height), min(op.left + op.width, width)
    if y1 > y0 and x1 > x0:
        out[y0 - op.top : y1 - op.top, x0 - op.left : x1 - op.left] = mask[y0:y1, x0:x1]
    return out


class ViewRenderer:
    """Renders many views of one source, reusing shared prefixes (AnyRes tiles share one big resize)."""

    def __init__(self, source: object, apply) -> None:  # noqa: ANN001 - apply(source, ops) -> source
        self._apply = apply
        self._memo: dict[tuple[Op, ...], object] = {(): source}

    def __call__(self, ops: Sequence[Op]) -> object:
        ops = tuple(ops)
        k = len(ops)
        while ops[:k] not in self._memo:
            k -= 1
        result = self._memo[ops[:k]]
        for i in range(k, len(ops)):
            result = self._apply(result, ops[i : i + 1])
            if isinstance(ops[i], Resize):  # resizes are the expensive, shared steps
                self._memo[ops[: i + 1]] = result
        return result


def rasterize_boxes(boxes: Sequence[Sequence[float]], size: Size) -> torch.Tensor:
    """``(H, W)`` float mask: each pixel holds the fraction of it covered by the union of ``boxes``.

    Boxes are ``[x0, y0, x1, y1]`` in pixel units (pixel ``i`` spans ``[i, i + 1)``); partial
    coverage at box edges is kept, overlapping boxes take the max, so the value stays in [0, 1].
    """
    height, width = size
    mask = torch.zeros(height, width)
    for i, box in enumerate(boxes):
        if len(box) != 4:
            raise ValueError(f"text box {i} is {box!r}: expected [x0, y0, x1, y1]")
        x0, y0, x1, y1 = (float(v) for v in box)
        x0, x1 = max(min(x0, x1), 0.0), min(max(x0, x1), float(width))
        y0, y1 = max(min(y0, y1), 0.0), min(max(y0, y1), float(height))
        if x1 <= x0 or y1 <= y0:
            continue
        xs, xe = int(x0), min(int(-(-x1 // 1)), width)
        ys, ye = int(y0), min(int(-(-y1 // 1)), height)
        cols = torch.arange(xs, xe, dtype=torch.float32)
        rows = torch.arange(ys, ye, dtype=torch.float32)
        cover_x = (torch.clamp(cols + 1, max=x1) - torch.clamp(cols, min=x0)).clamp_(0, 1)
        cover_y = (torch.clamp(rows + 1, max=y1) - torch.clamp(rows, min=y0)).clamp_(0, 1)
        window = mask[ys:ye, xs:xe]
        torch.maximum(window, cover_y[:, None] * cover_x[None, :], out=window)
    return mask


def patch_coverage(masks: torch.Tensor, patch_size: int) -> torch.Tensor:
    """``(n, H, W)`` masks to ``(n, rows * cols)`` per-patch means, in the encoder's row-major token order.

    Like a stride-P patch convolution, trailing rows/columns that do not fill a patch are ignored.
    """
    pooled = F.avg_pool2d(masks[:, None].float(), kernel_size=patch_size, stride=patch_size)
    return pooled.flatten(1)
