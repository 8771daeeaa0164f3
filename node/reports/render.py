"""Pillow rendering of the overlay pictures: a CT slice in the model's window with boxes, labels and a banner."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

BOX_RGB = (255, 210, 0)
BANNER_RGB = (170, 0, 0)
TEXT_RGB = (255, 255, 255)
LABEL_BACKGROUND_RGB = (0, 0, 0)


@dataclass(frozen=True)
class DrawnBox:
    """A box to draw on a slice, in pixel coordinates (x1, y1, x2, y2), and the text to write next to it."""

    box_px: tuple[float, float, float, float]
    text: str


def _font(size_px: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's bundled scalable font at ``size_px``, or its bitmap font where FreeType is missing."""
    return ImageFont.load_default(size=size_px)


def windowed_gray(hu: np.ndarray, centre_hu: float, width_hu: float) -> np.ndarray:
    """``hu`` mapped through the window (centre, width) to uint8 grey levels 0..255."""
    if width_hu <= 0:
        raise ValueError(f"window width must be positive, got {width_hu}")
    low = centre_hu - width_hu / 2.0
    scaled = (np.asarray(hu, np.float64) - low) / width_hu * 255.0
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _text_size(
    draw: ImageDraw.ImageDraw, text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont
) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return int(right - left), int(bottom - top)


def _banner(draw: ImageDraw.ImageDraw, width: int, text: str, font_px: int) -> int:
    """Draw the banner strip across the top; return its height in pixels."""
    font = _font(font_px)
    _, text_h = _text_size(draw, text, font)
    height = text_h + font_px // 2 + 4
    draw.rectangle((0, 0, width - 1, height - 1), fill=BANNER_RGB)
    text_w, _ = _text_size(draw, text, font)
    draw.text(((width - text_w) // 2, 2), text, fill=TEXT_RGB, font=font)
    return height


def font_px_for(width: int) -> int:
    """A legible text height for an image ``width`` pixels wide (16 px on a 512 matrix)."""
    return max(10, width // 32)


def render_slice(gray: np.ndarray, boxes: Sequence[DrawnBox], banner: str, footer: str) -> np.ndarray:
    """An RGB uint8 picture of the windowed slice with each box outlined and labelled, banner on top, footer below."""
    if gray.ndim != 2 or gray.dtype != np.uint8:
        raise ValueError(f"expected a 2D uint8 windowed slice, got shape {gray.shape} dtype {gray.dtype}")
    picture = Image.fromarray(gray, mode="L").convert("RGB")
    draw = ImageDraw.Draw(picture)
    rows, columns = gray.shape
    font_px = font_px_for(columns)
    font = _font(font_px)
    line = max(2, columns // 256)
    banner_h = _banner(draw, columns, banner, font_px)
    for box in boxes:
        x1, y1, x2, y2 = box.box_px
        draw.rectangle((x1 - line, y1 - line, x2 + line - 1, y2 + line - 1), outline=BOX_RGB, width=line)
        text_w, text_h = _text_size(draw, box.text, font)
        tx = int(min(max(0.0, x1 - line), columns - text_w - 4))
        ty = int(y1 - line - text_h - 6)
        if ty < banner_h:
            ty = int(min(y2 + line + 2, rows - text_h - 6))
        draw.rectangle((tx, ty, tx + text_w + 4, ty + text_h + 5), fill=LABEL_BACKGROUND_RGB)
        draw.text((tx + 2, ty + 1), box.text, fill=BOX_RGB, font=font)
    small = _font(max(8, font_px * 3 // 4))
    footer_w, footer_h = _text_size(draw, footer, small)
    draw.rectangle((0, rows - footer_h - 8, footer_w + 8, rows - 1), fill=LABEL_BACKGROUND_RGB)
    draw.text((4, rows - footer_h - 6), footer, fill=TEXT_RGB, font=small)
    return np.asarray(picture)


def render_summary(tiles: Sequence[np.ndarray], lines: Sequence[str], banner: str, size_px: int = 512) -> np.ndarray:
    """An RGB summary page: banner, text ``lines``, then ``tiles`` (RGB pictures) in a grid below."""
    page = Image.new("RGB", (size_px, size_px), (0, 0, 0))
    draw = ImageDraw.Draw(page)
    font_px = font_px_for(size_px)
    font = _font(font_px)
    y = _banner(draw, size_px, banner, font_px) + 6
    for text in lines:
        draw.text((8, y), text, fill=TEXT_RGB, font=font)
        y += _text_size(draw, text, font)[1] + 6
    if tiles:
        columns = int(np.ceil(np.sqrt(len(tiles))))
        grid_rows = int(np.ceil(len(tiles) / columns))
        cell = max(16, min((size_px - 8) // columns, (size_px - y - 8) // grid_rows))
        for n, tile in enumerate(tiles):
            thumb = Image.fromarray(tile, mode="RGB").resize((cell - 4, cell - 4), Image.Resampling.BILINEAR)
            page.paste(thumb, (8 + (n % columns) * cell, y + 4 + (n // columns) * cell))
    return np.asarray(page)
