"""Image files to 8-bit RGB, every Pillow mode converted by an explicit rule.

    decode_rgb8(path, size=224)     # (224, 224, 3) uint8, bilinear resize, no crop
    to_rgb8(image)                  # a PIL image of any mode -> (H, W, 3) uint8
    to_rgb_image(image)             # the same as a PIL RGB image

The rules (what ``Image.convert("RGB")`` gets wrong is done here instead):

| mode | becomes |
|---|---|
| RGB, L, 1, P (no transparency), YCbCr, HSV, RGBX | Pillow's conversion (grey replicated) |
| CMYK | Pillow's conversion: R = (255 − C)(255 − K)/255, … (no colour profile is applied) |
| I;16, I;16L, I;16B, I;16N (16-bit) | v · 255 / 65535, rounded — scaled, never clipped |
| I (32-bit integer) | taken as 16-bit (how Pillow opens 16-bit files), scaled as above; values outside 0 … 65535 are refused |
| F (32-bit float) | taken as 0 … 1, v · 255 rounded; values outside [0, 1] or not finite are refused |
| RGBA, LA, PA, P with transparency | composited on black: c · α / 255, rounded |
| RGBa, La (premultiplied alpha) | their stored colour, which is that composite already |
| anything else (LAB, …) | refused (UnsupportedImage) |

Decoding refuses an image of more than ``max_pixels`` pixels (width × height of the file, after
JPEG draft scaling) before it allocates anything: ImageTooLarge, one line.
"""

from __future__ import annotations

import warnings

import numpy as np
from PIL import Image

#: The default cap on decoded pixels: 64 megapixels (~190 MB as 8-bit RGB, more while decoding).
DEFAULT_MAX_PIXELS = 64_000_000

_PILLOW_RGB_MODES = ("RGB", "L", "1", "YCbCr", "HSV", "RGBX", "CMYK")
_ALPHA_MODES = ("RGBA", "LA", "PA")
_PREMULTIPLIED_MODES = ("RGBa", "La")
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


class UnsupportedImage(ValueError):
    """An image whose pixels cannot be turned into 8-bit RGB without guessing."""


class ImageTooLarge(ValueError):
    """An image with more pixels than the decoder is allowed to allocate."""


def _grey_to_rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[..., None], 3, axis=2)


def _scale_16bit(values: np.ndarray) -> np.ndarray:
    """0 … 65535 -> 0 … 255, rounded to nearest."""
    return ((values.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def _composite_on_black(rgba: np.ndarray) -> np.ndarray:
    """(H, W, 4) uint8 straight alpha -> (H, W, 3) uint8 colour · α / 255, rounded."""
    colour = rgba[..., :3].astype(np.uint16)
    alpha = rgba[..., 3:4].astype(np.uint16)
    return ((colour * alpha + 127) // 255).astype(np.uint8)


def to_rgb_image(im: Image.Image) -> Image.Image:
    """A PIL image of any mode as an RGB image (the rules of the module docstring)."""
    mode = im.mode
    if mode in _PILLOW_RGB_MODES or (mode == "P" and "transparency" not in im.info):
        return im.convert("RGB")
    return Image.fromarray(_to_rgb8_array(im), "RGB")


def to_rgb8(im: Image.Image) -> np.ndarray:
    """(H, W, 3) uint8 RGB of a PIL image of any mode (the rules of the module docstring)."""
    return np.asarray(to_rgb_image(im))


def _to_rgb8_array(im: Image.Image) -> np.ndarray:
    """The modes Pillow's own conversion gets wrong (or cannot do), as (H, W, 3) uint8."""
    mode = im.mode
    if mode in _ALPHA_MODES or mode == "P":  # P here has transparency
        return _composite_on_black(np.asarray(im.convert("RGBA")))
    if mode == "RGBa":
        return np.ascontiguousarray(np.asarray(im)[..., :3])
    if mode == "La":
        return _grey_to_rgb(np.asarray(im)[..., 0])
    if mode in _SIXTEEN_BIT_MODES:
        return _grey_to_rgb(_scale_16bit(np.asarray(im)))
    if mode == "I":
        values = np.asarray(im)
        lo, hi = int(values.min()), int(values.max())
        if lo < 0 or hi > 65535:
            raise UnsupportedImage(f"32-bit integer image with values {lo} … {hi}, outside the 16-bit range "
                                   "0 … 65535 it is read in; convert it to 8 or 16 bits first")
        return _grey_to_rgb(_scale_16bit(values))
    if mode == "F":
        values = np.asarray(im, dtype=np.float32)
        if not np.isfinite(values).all():
            raise UnsupportedImage("floating-point image with NaN or infinite pixels")
        lo, hi = float(values.min()), float(values.max())
        if lo < 0 or hi > 1:
            raise UnsupportedImage(f"floating-point image with values {lo:g} … {hi:g}, outside the range 0 … 1 "
                                   "it is read in; convert it to 8 or 16 bits first")
        return _grey_to_rgb(np.rint(values * 255).astype(np.uint8))
    raise UnsupportedImage(f"image mode {mode} is not supported (it would need a colour profile); "
                           "convert the file to RGB first")


def decode_rgb8(path, size: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS, draft: bool = False) -> np.ndarray:
    """An image file as (size, size, 3) uint8 RGB (bilinear resize, no crop), or (H, W, 3) if size is None.

    max_pixels: refuse (ImageTooLarge) a file of more pixels, checked from its header before decoding.
    draft: let the JPEG decoder downscale by 1/2, 1/4 or 1/8 while decoding (never below ``size``):
    several times faster on large photos, slightly different pixels.
    """
    with warnings.catch_warnings():
        # Pillow only warns below twice its own limit; the cap below is what decides.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        im = Image.open(path)
    with im:
        if draft and size is not None and im.format == "JPEG":
            im.draft("RGB", (size, size))
        width, height = im.size
        if width * height > max_pixels:
            raise ImageTooLarge(f"{width}x{height} = {width * height} pixels is more than the cap of {max_pixels} "
                                "(--max-pixels raises it)")
        rgb = to_rgb_image(im)
    if size is not None and rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.BILINEAR)
    return np.asarray(rgb)
