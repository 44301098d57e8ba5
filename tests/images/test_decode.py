"""Every Pillow mode to 8-bit RGB by its documented rule (igcam_fast.images.decode), and the pixel cap
checked from the header before anything is decoded."""

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from igcam_fast.images.decode import ImageTooLarge, UnsupportedImage, decode_rgb8, to_rgb8

RNG = np.random.default_rng(0)


def _grey3(a):
    return np.repeat(a[..., None], 3, axis=2)


def _scaled16(v):
    return np.rint(v.astype(np.float64) * 255 / 65535).astype(np.uint8)


def test_sixteen_bit_png_is_scaled(tmp_path):
    v = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)
    Image.fromarray(v).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as im:
        assert im.mode == "I;16"
        got = to_rgb8(im)
    np.testing.assert_array_equal(got, _grey3(_scaled16(v)))
    assert (got == 255).mean() < 0.01


@pytest.mark.parametrize("mode, dtype", [("I;16B", ">u2"), ("I;16L", "<u2")])
def test_sixteen_bit_byte_orders(mode, dtype):
    v = RNG.integers(0, 65536, (5, 7)).astype(dtype)
    im = Image.frombytes(mode, (7, 5), v.tobytes())
    np.testing.assert_array_equal(to_rgb8(im), _grey3(_scaled16(v.astype(np.uint16))))


def test_thirty_two_bit_integer_as_sixteen_bit_range():
    v = RNG.integers(0, 65536, (6, 6)).astype(np.int32)
    np.testing.assert_array_equal(to_rgb8(Image.fromarray(v, mode="I")), _grey3(_scaled16(v)))
    with pytest.raises(UnsupportedImage, match="outside the 16-bit range"):
        to_rgb8(Image.fromarray(np.array([[-1, 70000]], np.int32), mode="I"))


def test_float_in_zero_one():
    v = RNG.random((6, 6)).astype(np.float32)
    np.testing.assert_array_equal(to_rgb8(Image.fromarray(v, mode="F")), _grey3(np.rint(v * 255).astype(np.uint8)))
    with pytest.raises(UnsupportedImage, match="outside the range 0"):
        to_rgb8(Image.fromarray(v * 200, mode="F"))
    with pytest.raises(UnsupportedImage, match="NaN"):
        to_rgb8(Image.fromarray(np.full((2, 2), np.nan, np.float32), mode="F"))


def test_cmyk():
    c = RNG.integers(0, 256, (4, 5, 4), dtype=np.uint8)
    got = to_rgb8(Image.fromarray(c, mode="CMYK")).astype(np.int32)
    want = (255 - c[..., :3].astype(np.int32)) * (255 - c[..., 3:4].astype(np.int32)) / 255
    assert np.abs(got - want).max() <= 1


def test_alpha_is_composited_on_black(tmp_path):
    rgba = RNG.integers(0, 256, (6, 7, 4), dtype=np.uint8)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    want = np.rint(rgba[..., :3].astype(np.float64) * rgba[..., 3:] / 255)
    with Image.open(tmp_path / "a.png") as im:
        np.testing.assert_array_equal(to_rgb8(im), want.astype(np.uint8))
    la = RNG.integers(0, 256, (6, 7, 2), dtype=np.uint8)
    want = _grey3(np.rint(la[..., 0].astype(np.float64) * la[..., 1] / 255).astype(np.uint8))
    np.testing.assert_array_equal(to_rgb8(Image.fromarray(la, mode="LA")), want)


def test_palette_with_transparency(tmp_path):
    p = Image.new("P", (4, 4), 1)
    p.putpalette([255, 0, 0, 0, 200, 0] + [0] * 762)
    p.putpixel((0, 0), 0)
    p.save(tmp_path / "p.png", transparency=0)
    with Image.open(tmp_path / "p.png") as im:
        assert im.mode == "P" and "transparency" in im.info
        got = to_rgb8(im)
    assert got[0, 0].tolist() == [0, 0, 0]  # the transparent (red) entry is black
    assert got[1, 1].tolist() == [0, 200, 0]


def test_premultiplied_and_plain_modes():
    rgba = RNG.integers(0, 256, (3, 3, 4), dtype=np.uint8)
    premultiplied = Image.fromarray(rgba, mode="RGBA").convert("RGBa")
    np.testing.assert_array_equal(to_rgb8(premultiplied), np.asarray(premultiplied)[..., :3])
    grey = RNG.integers(0, 256, (3, 3), dtype=np.uint8)
    np.testing.assert_array_equal(to_rgb8(Image.fromarray(grey, mode="L")), _grey3(grey))
    assert set(np.unique(to_rgb8(Image.fromarray(grey > 128).convert("1")))) <= {0, 255}
    with pytest.raises(UnsupportedImage, match="LAB"):
        to_rgb8(Image.new("LAB", (2, 2)))


def _png_header_only(path, width, height):
    """A PNG whose header claims width x height (its pixel data is a stub)."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 10))
                     + chunk(b"IEND", b""))


def test_pixel_cap_is_checked_before_decoding(tmp_path):
    _png_header_only(tmp_path / "huge.png", 12000, 12000)
    with pytest.raises(ImageTooLarge, match="12000x12000 = 144000000 pixels is more than the cap of 64000000"):
        decode_rgb8(tmp_path / "huge.png", 32)
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "small.png")
    assert decode_rgb8(tmp_path / "small.png", 16).shape == (16, 16, 3)
    assert decode_rgb8(tmp_path / "small.png").shape == (20, 30, 3)
    with pytest.raises(ImageTooLarge):
        decode_rgb8(tmp_path / "small.png", 16, max_pixels=599)
