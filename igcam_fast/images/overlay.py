"""Saliency overlays as images (Pillow + a matplotlib colormap)."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw


def _colormap(values: np.ndarray) -> np.ndarray:
    """(H, W) in [0, 1] -> (H, W, 3) uint8 through the 'jet' colormap pytorch-grad-cam users know."""
    from matplotlib import colormaps

    return (colormaps["jet"](np.clip(values, 0, 1))[..., :3] * 255).astype(np.uint8)


def overlay(image: np.ndarray, saliency: np.ndarray, weight: float = 0.5) -> Image.Image:
    """Blend a map (any size, non-negative) over an (H, W, 3) uint8 image, resized to the image."""
    h, w = image.shape[:2]
    s = np.asarray(saliency, dtype=np.float32)
    s = (s - s.min()) / (1e-7 + s.max() - s.min())
    heat = Image.fromarray((s * 255).astype(np.uint8)).resize((w, h), Image.BILINEAR)
    colored = _colormap(np.asarray(heat, dtype=np.float32) / 255)
    return Image.blend(Image.fromarray(image), Image.fromarray(colored), weight)


def side_by_side(panels: list[tuple[str, Image.Image]], boxes=()) -> Image.Image:
    """Panels in a row with a caption above each; boxes (x1, y1, x2, y2) drawn on every panel."""
    w, h = panels[0][1].size
    caption = 22
    sheet = Image.new("RGB", (w * len(panels), h + caption), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (title, panel) in enumerate(panels):
        panel = panel.copy()
        pd = ImageDraw.Draw(panel)
        for box in boxes:
            pd.rectangle(box, outline=(255, 255, 255), width=2)
        sheet.paste(panel, (i * w, caption))
        draw.text((i * w + 6, 4), title, fill=(0, 0, 0))
    return sheet
