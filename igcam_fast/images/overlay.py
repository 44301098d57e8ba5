"""Saliency overlays as images: one overlay as a Pillow image (with an optional caption), and the
demo's figure (photo and overlays side by side with a colour bar and a legend) through matplotlib.

Maps are shown at the photo's own size and aspect ratio: a (h, w) map is upsampled to (H, W).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

#: The colormap pytorch-grad-cam users know.
COLORMAP = "jet"
BOX_COLOUR = (255, 255, 255)
BOX_LEGEND = "white box: the object's annotated box"


def _colormap(values: np.ndarray) -> np.ndarray:
    """(H, W) in [0, 1] -> (H, W, 3) uint8 through the 'jet' colormap."""
    from matplotlib import colormaps

    return (colormaps[COLORMAP](np.clip(values, 0, 1))[..., :3] * 255).astype(np.uint8)


def scaled_to(saliency: np.ndarray, height: int, width: int) -> np.ndarray:
    """A non-negative map of any size min-max scaled to [0, 1] and bilinearly resized to (height, width).
    An all-equal map (e.g. all zero) stays all zero rather than becoming noise."""
    s = np.asarray(saliency, dtype=np.float32)
    span = float(s.max() - s.min()) if s.size else 0.0
    s = (s - s.min()) / span if span > 0 else np.zeros_like(s)
    if s.shape != (height, width):
        s = np.asarray(Image.fromarray(s.astype(np.float32)).resize((width, height), Image.BILINEAR))
    return np.clip(s, 0, 1)


def font(size: int = 18) -> ImageFont.ImageFont:
    """Pillow's bundled font at ``size`` pixels (no font files needed)."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one fixed-size bitmap font
        return ImageFont.load_default()


def overlay(image: np.ndarray, saliency: np.ndarray, weight: float = 0.5, caption: str | None = None,
            boxes=(), font_size: int = 16) -> Image.Image:
    """Blend a map (any size, non-negative) over an (H, W, 3) uint8 image at the image's own size.

    caption: a line of text written in a white strip under the overlay (none by default).
    boxes: (x1, y1, x2, y2) boxes in image pixels, drawn in white.
    """
    h, w = image.shape[:2]
    colored = _colormap(scaled_to(saliency, h, w))
    picture = Image.blend(Image.fromarray(np.ascontiguousarray(image[..., :3])), Image.fromarray(colored), weight)
    if boxes:
        draw = ImageDraw.Draw(picture)
        for box in boxes:
            draw.rectangle(tuple(box), outline=BOX_COLOUR, width=max(2, round(min(h, w) / 150)))
    if not caption:
        return picture
    text_font = font(font_size)
    strip = font_size + 10
    framed = Image.new("RGB", (w, h + strip), "white")
    framed.paste(picture, (0, 0))
    ImageDraw.Draw(framed).text((4, h + 4), caption, fill=(0, 0, 0), font=text_font)
    return framed


def side_by_side(panels: list[tuple[str, Image.Image]], boxes=(), font_size: int = 18) -> Image.Image:
    """Panels (of one size) in a row with a caption above each; boxes (x1, y1, x2, y2) on every panel."""
    w, h = panels[0][1].size
    caption = font_size + 10
    sheet = Image.new("RGB", (w * len(panels), h + caption), "white")
    draw = ImageDraw.Draw(sheet)
    text_font = font(font_size)
    for i, (title, panel) in enumerate(panels):
        panel = panel.copy()
        pd = ImageDraw.Draw(panel)
        for box in boxes:
            pd.rectangle(box, outline=BOX_COLOUR, width=2)
        sheet.paste(panel, (i * w, caption))
        draw.text((i * w + 6, 4), title, fill=(0, 0, 0), font=text_font)
    return sheet


def explanation_figure(image: np.ndarray, maps: list[tuple[str, np.ndarray]], path: str | Path, *,
                       title: str = "", boxes=(), caption: str = "", weight: float = 0.5) -> Path:
    """The photo and one overlay per (caption, map), in a row, saved as a PNG at ``path``.

    Each map is min-max scaled and upsampled to the photo's own size (aspect ratio kept); a colour bar
    gives the scale; ``boxes`` are drawn on every panel and explained by a legend; ``caption`` is a
    line under the figure (what was run, how long it took).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.patches import Patch, Rectangle

    h, w = image.shape[:2]
    panels = [("photo", None)] + list(maps)
    panel_h = 4.2  # inches; each panel as wide as the photo's aspect ratio asks (at least room for two-line titles)
    fig, axes = plt.subplots(1, len(panels), figsize=(panel_h * len(panels) * max(w / h, 1.15) + 1.2, panel_h + 1.3),
                             squeeze=False, layout="constrained")
    for ax, (label, saliency) in zip(axes[0], panels):
        ax.imshow(image)
        if saliency is not None:
            ax.imshow(scaled_to(saliency, h, w), cmap=COLORMAP, vmin=0, vmax=1, alpha=weight, interpolation="bilinear")
        for x1, y1, x2, y2 in boxes:
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor="white", linewidth=2))
        ax.set_title(label, fontsize=13)
        ax.set_xticks([])
        ax.set_yticks([])
    if maps:  # the bar shows the colormap itself, not the blended (paler) overlay
        scale = ScalarMappable(norm=Normalize(0, 1), cmap=COLORMAP)
        bar = fig.colorbar(scale, ax=axes[0].tolist(), fraction=0.02, pad=0.005)
        bar.set_label("map value (each map min-max scaled)", fontsize=11)
    if title:
        fig.suptitle(title, fontsize=15)
    if boxes:
        axes[0][0].legend(handles=[Patch(facecolor="none", edgecolor="black", label=BOX_LEGEND)], loc="upper left",
                          bbox_to_anchor=(0, -0.01), fontsize=11, frameon=False)
    if caption:
        fig.supxlabel(caption, fontsize=10, color="0.25", ha="right", x=0.98)
    path = Path(path)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path
