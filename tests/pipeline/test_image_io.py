"""Tests of pipeline.image_io: every input form decodes to the same RGB pixels, hostile payloads get typed errors.

Fixture images are generated at run time (no binary files in the repository).
"""

from __future__ import annotations

import base64
import contextlib
import io
import math
import struct
import time
import tracemalloc
import warnings
import zlib
from typing import Any

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile

from pipeline import image_io
from pipeline.errors import ImageTooLargeError, InvalidImageError, SegmentationError
from pipeline.image_io import ImageLimits, decode_image, image_sha256
from pipeline.settings import ModelSettings

# --- helpers -----------------------------------------------------------------------------------------------------


def _random_rgb(height: int = 23, width: int = 37, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _smooth_rgb(height: int = 48, width: int = 64) -> np.ndarray:
    """A gradient JPEG reproduces closely, unlike noise."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack(
        [x * 255 // (width - 1), y * 255 // (height - 1), (x + y) * 255 // (width + height - 2)], -1
    ).astype(np.uint8)


def _encode(image: Image.Image | np.ndarray, fmt: str, **kwargs: Any) -> bytes:
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def _npy(array: np.ndarray, *, allow_pickle: bool = False) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


def _png_claiming(width: int, height: int) -> bytes:
    """A real 1x1 PNG whose IHDR (with a valid CRC) claims another size: a decompression bomb's header."""
    data = bytearray(_encode(np.zeros((1, 1, 3), np.uint8), "PNG"))
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def _assert_rgb_image(out: np.ndarray, height: int | None = None, width: int | None = None) -> None:
    assert isinstance(out, np.ndarray)
    assert out.dtype == np.uint8
    assert out.ndim == 3 and out.shape[2] == 3
    assert out.flags.c_contiguous and out.flags.writeable
    if height is not None:
        assert out.shape[:2] == (height, width)


RGB = _random_rgb()
PNG = _encode(RGB, "PNG")


# --- round trips -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "kwargs"),
    [
        ("PNG", {}),
        ("PNG", {"optimize": True}),
        ("WEBP", {"lossless": True}),
        ("BMP", {}),
        ("TIFF", {}),
        ("TIFF", {"compression": "tiff_lzw"}),
        ("TIFF", {"compression": "tiff_deflate"}),
    ],
)
def test_lossless_formats_round_trip_exactly(fmt: str, kwargs: dict[str, Any]) -> None:
    out = decode_image(_encode(RGB, fmt, **kwargs))
    _assert_rgb_image(out, *RGB.shape[:2])
    np.testing.assert_array_equal(out, RGB)


def test_jpeg_round_trips_approximately() -> None:
    smooth = _smooth_rgb()
    out = decode_image(_encode(smooth, "JPEG", quality=95))
    _assert_rgb_image(out, *smooth.shape[:2])
    diff = np.abs(out.astype(np.int16) - smooth.astype(np.int16))
    assert diff.mean() < 2.0 and diff.max() < 40


def test_format_is_detected_from_content_not_a_name() -> None:
    # The same picture as PNG, BMP and TIFF bytes: nothing but the content tells them apart.
    for fmt in ("PNG", "BMP", "TIFF"):
        np.testing.assert_array_equal(decode_image(_encode(RGB, fmt)), RGB)


@pytest.mark.parametrize("kind", ["bytes", "bytearray", "memoryview"])
def test_bytes_like_payloads(kind: str) -> None:
    payload = {"bytes": PNG, "bytearray": bytearray(PNG), "memoryview": memoryview(PNG)}[kind]
    np.testing.assert_array_equal(decode_image(payload), RGB)


def test_memoryview_of_non_byte_buffer() -> None:
    padded = PNG + b"\0" * (-len(PNG) % 4)  # bytes after IEND are ignored by PNG readers
    view = memoryview(np.frombuffer(padded, dtype=np.uint32))
    assert view.format != "B"
    np.testing.assert_array_equal(decode_image(view), RGB)


# --- base64 ------------------------------------------------------------------------------------------------------

B64 = base64.b64encode(PNG).decode("ascii")


def test_fixture_base64_exercises_padding_and_both_alphabets() -> None:
    # Guards the meaning of the base64 tests below: the text has padding and characters that differ by alphabet.
    assert B64.endswith("=")
    assert "+" in B64 and "/" in B64


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(B64, id="str"),
        pytest.param(f"data:image/png;base64,{B64}", id="data-uri"),
        pytest.param(f"DATA:image/PNG;BASE64,{B64}", id="data-uri-upper"),
        pytest.param(f"data:application/octet-stream;base64,{B64}", id="data-uri-other-type"),
        pytest.param(f"data:;base64,{B64}", id="data-uri-no-type"),
        pytest.param(base64.encodebytes(PNG).decode("ascii"), id="newlines-every-76"),
        pytest.param(f"  \n{B64}\r\n\t ", id="surrounding-whitespace"),
        pytest.param(B64.rstrip("="), id="missing-padding"),
        pytest.param(base64.urlsafe_b64encode(PNG).decode("ascii"), id="urlsafe"),
        pytest.param(base64.urlsafe_b64encode(PNG).decode("ascii").rstrip("="), id="urlsafe-no-padding"),
        pytest.param(B64.encode("ascii"), id="bytes"),
        pytest.param(f"data:image/png;base64,{B64}".encode("ascii"), id="data-uri-bytes"),
        pytest.param(bytearray(base64.encodebytes(PNG)), id="bytearray-with-newlines"),
    ],
)
def test_base64_forms(payload: str | bytes) -> None:
    np.testing.assert_array_equal(decode_image(payload), RGB)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ("not base64!!", "not valid base64"),
        ("abcde", "not valid base64"),
        ("AAAA=AAA", "not valid base64"),
        ("héllo", "non-ASCII"),
        ("data:image/png,rawtext", "not base64-encoded"),
        ("data:image/png;base64" + "A" * 600, "malformed data URI"),
        ("data:image/png;base64,", "empty payload"),
        ("   \n\t", "empty payload"),
        (base64.b64encode(b"hello world, not an image").decode(), "not a supported image"),
        (base64.b64encode(base64.b64encode(PNG)).decode(), "not a supported image"),  # base64 of base64: one level
        (b"hello, world!", "not a supported image"),
        (b"abcde", "not valid base64"),
        (b"AAAA=AAA", "not valid base64"),
        (b"aGVsbG8gd29ybGQ=", "not a supported image"),
    ],
)
def test_invalid_base64_is_refused_with_a_reason(payload: str | bytes, reason: str) -> None:
    with pytest.raises(InvalidImageError, match=reason) as info:
        decode_image(payload)
    assert not isinstance(info.value, ImageTooLargeError)
    assert info.value.code == "invalid_image"


def test_base64_size_is_checked_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def _must_not_decode(*_args: object, **_kwargs: object) -> bytes:
        raise AssertionError("base64 was decoded before its size was checked")

    monkeypatch.setattr(image_io.base64, "b64decode", _must_not_decode)
    limits = ImageLimits(max_payload_bytes=1000)
    for payload in ("A" * 1400, "data:image/png;base64," + "A" * 1400, b"A" * 1400, "A" * 10_000_000):
        with pytest.raises(ImageTooLargeError, match="limit 1,000"):
            decode_image(payload, limits=limits)


def test_base64_limit_applies_to_the_decoded_size() -> None:
    # A payload whose base64 text is longer than the limit but whose image is not is accepted.
    limits = ImageLimits(max_payload_bytes=len(PNG))
    assert len(B64) > limits.max_payload_bytes
    np.testing.assert_array_equal(decode_image(B64, limits=limits), RGB)
    np.testing.assert_array_equal(decode_image(B64.encode(), limits=limits), RGB)
    with pytest.raises(ImageTooLargeError):
        decode_image(B64, limits=ImageLimits(max_payload_bytes=len(PNG) - 3))


# --- modes -------------------------------------------------------------------------------------------------------


def test_grey_is_replicated() -> None:
    grey = RGB[:, :, 0].copy()
    out = decode_image(_encode(grey, "PNG"))
    _assert_rgb_image(out, *grey.shape)
    np.testing.assert_array_equal(out, np.repeat(grey[:, :, None], 3, axis=2))


def test_bilevel_becomes_black_and_white() -> None:
    bits = RGB[:, :, 0] > 127
    out = decode_image(_encode(Image.fromarray(bits).convert("1"), "PNG"))
    np.testing.assert_array_equal(out, np.repeat(np.where(bits, 255, 0).astype(np.uint8)[:, :, None], 3, axis=2))


def test_rgba_alpha_is_dropped_not_composited() -> None:
    alpha = np.random.default_rng(1).integers(0, 256, RGB.shape[:2], dtype=np.uint8)
    alpha[0, 0] = 0  # fully transparent: the stored colour is kept, not blackened
    rgba = np.dstack([RGB, alpha])
    for fmt, kwargs in (("PNG", {}), ("WEBP", {"lossless": True, "exact": True}), ("TIFF", {})):
        out = decode_image(_encode(rgba, fmt, **kwargs))
        np.testing.assert_array_equal(out, RGB, err_msg=fmt)


def test_grey_alpha_is_grey_replicated() -> None:
    grey = RGB[:, :, 0].copy()
    la = np.dstack([grey, RGB[:, :, 1]])
    image = Image.fromarray(la)
    assert image.mode == "LA"
    out = decode_image(_encode(image, "PNG"))
    np.testing.assert_array_equal(out, np.repeat(grey[:, :, None], 3, axis=2))


def test_palette_images_use_their_palette_without_warnings() -> None:
    palette_image = Image.fromarray(RGB).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    one_transparent = palette_image.copy()
    one_transparent.info["transparency"] = 0
    alpha_per_entry = palette_image.copy()  # read back as bytes: Pillow warns when such an image goes straight to RGB
    alpha_per_entry.info["transparency"] = bytes([0, 128, 255, 10, 20, 30, 40, 50])
    for image in (palette_image, one_transparent, alpha_per_entry):
        payload = _encode(image, "PNG")
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            out = decode_image(payload)
        np.testing.assert_array_equal(out, np.asarray(palette_image.convert("RGB")))


def test_16_bit_grey_keeps_the_high_byte() -> None:
    grey16 = np.array([[0, 255, 256, 32768], [40000, 65535, 511, 1]], dtype=np.uint16)
    expected = np.repeat((grey16 >> 8).astype(np.uint8)[:, :, None], 3, axis=2)
    for fmt in ("PNG", "TIFF"):
        image = Image.fromarray(grey16)
        assert image.mode.startswith("I;16")
        np.testing.assert_array_equal(decode_image(_encode(image, fmt)), expected, err_msg=fmt)


def test_16_bit_colour_png_is_reduced_to_8_bits() -> None:
    rgb16 = np.random.default_rng(2).integers(0, 65536, (5, 7, 3), dtype=np.uint16)
    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(rgb16[:, :, ::-1]))  # OpenCV writes BGR
    assert ok
    out = decode_image(encoded.tobytes())
    np.testing.assert_array_equal(out, (rgb16 >> 8).astype(np.uint8))


def test_32_bit_integer_grey() -> None:
    small = np.array([[0, 100, 255]], dtype=np.int32)
    wide = np.array([[0, 256, 65535, 70000, -5]], dtype=np.int32)
    for grey, expected in ((small, [0, 100, 255]), (wide, [0, 1, 255, 255, 0])):
        image = Image.fromarray(grey)
        assert image.mode == "I"
        out = decode_image(_encode(image, "TIFF"))
        np.testing.assert_array_equal(out[0, :, 0], expected)
        np.testing.assert_array_equal(out[:, :, 0], out[:, :, 2])


def test_float_grey() -> None:
    unit = np.array([[0.0, 0.5, 1.0]], dtype=np.float32)
    wide = np.array([[-3.0, 12.4, 300.0, np.nan]], dtype=np.float32)
    for grey, expected in ((unit, [0, 128, 255]), (wide, [0, 12, 255, 0])):
        image = Image.fromarray(grey)
        assert image.mode == "F"
        np.testing.assert_array_equal(decode_image(_encode(image, "TIFF"))[0, :, 1], expected)


def test_cmyk_is_converted_by_pillow() -> None:
    cmyk = Image.frombytes("CMYK", (RGB.shape[1], RGB.shape[0]), np.dstack([RGB, RGB[:, :, :1]]).tobytes())
    out = decode_image(_encode(cmyk, "TIFF"))
    np.testing.assert_array_equal(out, np.asarray(cmyk.convert("RGB")))
    white = Image.new("CMYK", (4, 3), (0, 0, 0, 0))
    assert (decode_image(_encode(white, "JPEG", quality=95)) > 250).all()


# --- orientation and frames --------------------------------------------------------------------------------------


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def test_exif_orientation_6_rotates_a_jpeg() -> None:
    stored = np.full((32, 48, 3), 128, np.uint8)  # 48 wide, 32 high as stored
    stored[:8, :8] = (255, 0, 0)  # red block in the stored top-left corner
    out = decode_image(_encode(stored, "JPEG", quality=95, exif=_exif(6)))
    _assert_rgb_image(out, 48, 32)  # displayed 32 wide, 48 high
    # Orientation 6 means "rotate 90 degrees clockwise to display": the top-left corner goes to the top-right.
    red_corner = out[:8, -8:].astype(int)
    assert red_corner[..., 0].mean() > 200 and red_corner[..., 1].mean() < 60
    for corner in (out[:8, :8], out[-8:, :8], out[-8:, -8:]):
        assert abs(corner.astype(int) - 128).mean() < 10
    assert np.abs(out.astype(int) - np.rot90(stored, k=-1).astype(int)).mean() < 3


def test_exif_orientation_in_png_is_exact() -> None:
    np.testing.assert_array_equal(decode_image(_encode(RGB, "PNG", exif=_exif(3))), np.rot90(RGB, 2))
    np.testing.assert_array_equal(decode_image(_encode(RGB, "PNG", exif=_exif(8))), np.rot90(RGB, 1))
    np.testing.assert_array_equal(decode_image(_encode(RGB, "PNG", exif=_exif(1))), RGB)


def test_animated_gif_gives_its_first_frame() -> None:
    red, blue = Image.new("RGB", (9, 5), (255, 0, 0)), Image.new("RGB", (9, 5), (0, 0, 255))
    payload = _encode(red, "GIF", save_all=True, append_images=[blue], duration=100, loop=0)
    with Image.open(io.BytesIO(payload)) as check:
        assert check.n_frames == 2
    out = decode_image(payload)
    _assert_rgb_image(out, 5, 9)
    assert (out == np.array([255, 0, 0], np.uint8)).all()


def test_multi_frame_tiff_gives_its_first_frame() -> None:
    second = _random_rgb(seed=7)
    payload = _encode(RGB, "TIFF", save_all=True, append_images=[Image.fromarray(second)])
    np.testing.assert_array_equal(decode_image(payload), RGB)


def test_animated_webp_gives_its_first_frame() -> None:
    second = _random_rgb(seed=8)
    payload = _encode(RGB, "WEBP", save_all=True, append_images=[Image.fromarray(second)], lossless=True)
    np.testing.assert_array_equal(decode_image(payload), RGB)


# --- npy ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("array", "expected"),
    [
        pytest.param(RGB, RGB, id="hw3"),
        pytest.param(np.asfortranarray(RGB), RGB, id="fortran-order"),
        pytest.param(np.dstack([RGB, RGB[:, :, :1]]), RGB, id="hw4"),
        pytest.param(RGB[:, :, 0], np.repeat(RGB[:, :, :1], 3, axis=2), id="hw"),
        pytest.param(RGB[:, :, :1], np.repeat(RGB[:, :, :1], 3, axis=2), id="hw1"),
    ],
)
def test_npy_bytes(array: np.ndarray, expected: np.ndarray) -> None:
    out = decode_image(_npy(array))
    _assert_rgb_image(out)
    np.testing.assert_array_equal(out, expected)


def test_npy_in_base64() -> None:
    np.testing.assert_array_equal(decode_image(base64.b64encode(_npy(RGB)).decode()), RGB)


@pytest.mark.parametrize(
    "array",
    [
        pytest.param(np.array([{"a": 1}], dtype=object), id="object-1d"),
        pytest.param(np.empty((4, 4, 3), dtype=object), id="object-image-shaped"),
        pytest.param(np.zeros((4, 4), dtype=[("x", "O")]), id="structured-with-object"),
    ],
)
def test_pickled_npy_is_refused(array: np.ndarray) -> None:
    with pytest.raises(InvalidImageError, match="pickle"):
        decode_image(_npy(array, allow_pickle=True))


def _npy_header_only(shape: tuple[int, ...], descr: str = "|u1", tail: bytes = b"\0" * 16) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": False, "shape": shape})
    return buffer.getvalue() + tail


@pytest.mark.parametrize("shape", [(100_000, 100_000, 3), (100_000, 100_000), (1, 20_000, 3), (2**62, 2**62, 4)])
def test_npy_with_a_huge_shape_is_refused_without_allocating(shape: tuple[int, ...]) -> None:
    payload = _npy_header_only(shape)
    tracemalloc.start()
    try:
        started = time.perf_counter()
        with pytest.raises(ImageTooLargeError, match="limit"):
            decode_image(payload)
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000, f"peak traced allocation {peak} bytes"
    assert elapsed < 1.0


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        pytest.param(
            _npy(RGB.astype(np.float32)), r"values in \[0, 255\]: a float image must be in \[0, 1\]", id="float"
        ),
        pytest.param(_npy(RGB.astype(bool)), "dtype bool", id="bool"),
        pytest.param(_npy(RGB.reshape(-1)), "shape", id="1d"),
        pytest.param(_npy(RGB[None]), "shape", id="4d"),
        pytest.param(_npy(np.zeros((0, 4, 3), np.uint8)), "empty dimension", id="zero-size"),
        pytest.param(_npy(RGB)[:-10], "truncated", id="truncated"),
        pytest.param(_npy_header_only((4, 4, 3), tail=b""), "truncated", id="header-only"),
        pytest.param(b"\x93NUMPY\x01\x00garbage", "malformed", id="garbage-header"),
        pytest.param(b"\x93NUMPY", "malformed", id="magic-only"),
        pytest.param(b"\x93NUMPY\x09\x00" + b"\0" * 32, "version", id="unknown-version"),
        pytest.param(_npy_header_only((4, 4, 3), descr="<U5"), "dtype", id="unicode"),
    ],
)
def test_bad_npy_is_refused(payload: bytes, reason: str) -> None:
    with pytest.raises(InvalidImageError, match=reason):
        decode_image(payload)


# --- decompression bombs and limits ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("width", "height", "message"),
    [
        # Pillow's own guard fires while reading the header: the message still gives the claim and our limit
        (100_000, 100_000, r"image header claims 10,000,000,000 pixels, limit 50,000,000 \(MAX_IMAGE_PIXELS\)"),
        (8_000, 8_000, "8000x8000 = 64,000,000 pixels, limit 50,000,000"),
        (1, 20_000, "side 20,000 exceeds limit 16,384"),
        (20_000, 1, "side 20,000 exceeds limit 16,384"),
    ],
)
def test_png_bomb_header_is_refused_quickly(width: int, height: int, message: str) -> None:
    payload = _png_claiming(width, height)
    assert len(payload) < 100
    started = time.perf_counter()
    with pytest.raises(ImageTooLargeError, match=message) as info:
        decode_image(payload)
    assert time.perf_counter() - started < 1.0
    assert info.value.code == "image_too_large"


def test_a_real_compressed_bomb_is_refused_before_decoding() -> None:
    payload = _encode(np.zeros((3000, 3000), np.uint8), "PNG", optimize=True)
    assert len(payload) < 50_000  # 9 million pixels in a few kilobytes
    started = time.perf_counter()
    with pytest.raises(ImageTooLargeError, match="3000x3000 = 9,000,000 pixels, limit 5,000,000"):
        decode_image(payload, limits=ImageLimits(max_pixels=5_000_000))
    assert time.perf_counter() - started < 0.5


def test_pillow_bomb_warning_raised_as_error_is_too_large() -> None:
    side = math.isqrt(int(Image.MAX_IMAGE_PIXELS * 1.5))  # between Pillow's warning and error thresholds
    payload = _png_claiming(side, side)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with pytest.raises(ImageTooLargeError, match="decompression-bomb guard"):
            decode_image(payload, limits=ImageLimits(max_pixels=side * side, max_side=side))


def test_pillow_global_state_is_left_alone() -> None:
    before = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)
    for payload in (PNG, _png_claiming(100_000, 100_000), _png_claiming(8_000, 8_000), PNG[: len(PNG) // 2]):
        with contextlib.suppress(SegmentationError):
            decode_image(payload)
    assert before == (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_raw_payload_size_limit() -> None:
    np.testing.assert_array_equal(decode_image(PNG, limits=ImageLimits(max_payload_bytes=len(PNG))), RGB)
    with pytest.raises(ImageTooLargeError, match="bytes, limit"):
        decode_image(PNG, limits=ImageLimits(max_payload_bytes=len(PNG) - 1))
    with pytest.raises(ImageTooLargeError):
        decode_image(b"\x89PNG" + b"\0" * 10_000, limits=ImageLimits(max_payload_bytes=1000))


def test_dimension_limits_apply_to_every_form() -> None:
    limits = ImageLimits(max_pixels=100)
    for payload in (PNG, B64, _npy(RGB), RGB):
        with pytest.raises(ImageTooLargeError, match="23 = 851 pixels, limit 100"):
            decode_image(payload, limits=limits)
    with pytest.raises(ImageTooLargeError, match="side 37 exceeds limit 30"):
        decode_image(RGB, limits=ImageLimits(max_side=30))


# --- corrupt and foreign payloads --------------------------------------------------------------------------------


JPEG = _encode(_smooth_rgb(), "JPEG", quality=90)


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(PNG[: len(PNG) // 2], id="png-half"),
        pytest.param(PNG[: len(PNG) * 3 // 4], id="png-three-quarters"),
        pytest.param(PNG[:40], id="png-header-only"),
        pytest.param(JPEG[: len(JPEG) // 2], id="jpeg-half"),
        pytest.param(JPEG[: len(JPEG) * 3 // 4], id="jpeg-three-quarters"),
        pytest.param(JPEG[:200], id="jpeg-headers-only"),
        pytest.param(_encode(RGB, "WEBP", lossless=True)[:100], id="webp-cut"),
        pytest.param(_encode(RGB, "TIFF")[:500], id="tiff-cut"),
        pytest.param(_encode(RGB, "BMP")[:500], id="bmp-cut"),
    ],
)
def test_truncated_images_are_refused(payload: bytes) -> None:
    with pytest.raises(InvalidImageError) as info:
        decode_image(payload)
    assert not isinstance(info.value, ImageTooLargeError)


def test_corrupt_png_checksum_is_refused() -> None:
    data = bytearray(PNG)
    idat = data.index(b"IDAT")
    data[idat + 10] ^= 0xFF
    with pytest.raises(InvalidImageError):
        decode_image(bytes(data))


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        pytest.param(b"", "empty payload", id="empty-bytes"),
        pytest.param("", "empty payload", id="empty-str"),
        pytest.param(bytearray(), "empty payload", id="empty-bytearray"),
        pytest.param(np.random.default_rng(3).bytes(4096), "not a supported image", id="random-bytes"),
        pytest.param(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj", "PDF", id="pdf"),
        pytest.param(b"PK\x03\x04\x14\x00\x00\x00\x08\x00", "ZIP", id="zip"),
        pytest.param(b"\x1f\x8b\x08\x00\x00\x00\x00\x00", "gzip", id="gzip"),
        pytest.param(b"P6\n2 2\n255\n" + b"\xff" * 12, "not", id="ppm-not-an-allowed-format"),
        pytest.param(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", "not", id="eps-never-reaches-ghostscript"),
        pytest.param(b"GIF89a\xff\xff\xff\xff", None, id="gif-header-junk"),
        pytest.param(b"\x89PNG\r\n\x1a\n" + b"\0" * 50, None, id="png-signature-junk"),
        pytest.param(b"\xff\xd8\xff\xe0" + b"\0" * 50, None, id="jpeg-signature-junk"),
    ],
)
def test_foreign_and_corrupt_payloads_are_refused(payload: bytes | str, reason: str | None) -> None:
    with pytest.raises(InvalidImageError, match=reason):
        decode_image(payload)


@pytest.mark.parametrize("payload", [None, 42, 3.5, np.uint8(7), [1, 2, 3], {"image": "x"}, object()])
def test_unsupported_payload_types_are_refused(payload: object) -> None:
    with pytest.raises(InvalidImageError, match="unsupported payload type"):
        decode_image(payload)  # type: ignore[arg-type]


# --- arrays ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("array", "expected"),
    [
        pytest.param(RGB, RGB, id="hw3"),
        pytest.param(RGB[:, :, 0], np.repeat(RGB[:, :, :1], 3, axis=2), id="hw"),
        pytest.param(RGB[:, :, :1], np.repeat(RGB[:, :, :1], 3, axis=2), id="hw1"),
        pytest.param(np.dstack([RGB, np.zeros(RGB.shape[:2], np.uint8)]), RGB, id="hw4-alpha-dropped"),
        pytest.param(np.asfortranarray(RGB), RGB, id="fortran"),
        pytest.param(_random_rgb(23, 74)[:, ::2], _random_rgb(23, 74)[:, ::2], id="strided"),
        pytest.param(RGB[:, :, ::-1][:, :, ::-1], RGB, id="negative-strides"),
    ],
)
def test_array_payloads(array: np.ndarray, expected: np.ndarray) -> None:
    out = decode_image(array)
    _assert_rgb_image(out, *expected.shape[:2])
    np.testing.assert_array_equal(out, expected)


def test_read_only_array_gives_a_writable_result() -> None:
    frozen = RGB.copy()
    frozen.setflags(write=False)
    out = decode_image(frozen)
    _assert_rgb_image(out)
    out[0, 0] = 0
    np.testing.assert_array_equal(frozen, RGB)


@pytest.mark.parametrize(
    ("array", "reason"),
    [
        pytest.param(RGB.astype(np.float64), r"float64 has values in \[0, 255\]", id="float64-0-255"),
        pytest.param(RGB > 127, "dtype bool", id="bool"),
        pytest.param(RGB.astype(np.int8), r"int8 has values in \[-128, 127\]", id="int8"),
        pytest.param(np.empty((4, 4, 3), dtype=object), "objects", id="object"),
        pytest.param(np.array(7, np.uint8), "shape", id="0d"),
        pytest.param(RGB.reshape(-1), "shape", id="1d"),
        pytest.param(RGB[None], "shape", id="4d"),
        pytest.param(RGB[None, None], "shape", id="5d"),
        pytest.param(RGB[:, :, :2], "shape", id="two-channels"),
        pytest.param(np.zeros((4, 4, 5), np.uint8), "shape", id="five-channels"),
        pytest.param(np.zeros((0, 4, 3), np.uint8), "empty dimension", id="no-rows"),
        pytest.param(np.zeros((4, 0), np.uint8), "empty dimension", id="no-columns"),
        pytest.param(np.zeros((4, 4, 0), np.uint8), "shape", id="no-channels"),
    ],
)
def test_bad_arrays_are_refused(array: np.ndarray, reason: str) -> None:
    with pytest.raises(InvalidImageError, match=reason):
        decode_image(array)


# --- limits ------------------------------------------------------------------------------------------------------


def test_image_limits_defaults_and_settings() -> None:
    assert ImageLimits() == ImageLimits(max_payload_bytes=64 * 1024 * 1024, max_pixels=50_000_000, max_side=16384)
    assert ImageLimits.from_settings(ModelSettings()) == ImageLimits()
    configured = ModelSettings(max_payload_bytes=1234, max_image_pixels=5678, max_image_side=90)
    assert ImageLimits.from_settings(configured) == ImageLimits(max_payload_bytes=1234, max_pixels=5678, max_side=90)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "10"])
def test_image_limits_refuse_nonsense(bad: object) -> None:
    with pytest.raises(ValueError, match="positive int"):
        ImageLimits(max_pixels=bad)  # type: ignore[arg-type]


def test_image_limits_are_frozen() -> None:
    with pytest.raises(AttributeError):
        ImageLimits().max_pixels = 1  # type: ignore[misc]


# --- hashing -----------------------------------------------------------------------------------------------------


def test_same_picture_hashes_the_same_in_every_form() -> None:
    forms: list[bytes | str | np.ndarray] = [
        PNG,
        B64,
        f"data:image/png;base64,{B64}",
        B64.encode(),
        _encode(RGB, "BMP"),
        _encode(RGB, "WEBP", lossless=True),
        _npy(RGB),
        RGB,
        np.asfortranarray(RGB),
        np.dstack([RGB, np.full(RGB.shape[:2], 255, np.uint8)]),
    ]
    digests = {image_sha256(decode_image(form)) for form in forms}
    assert len(digests) == 1
    (digest,) = digests
    assert len(digest) == 64 and int(digest, 16) >= 0
    assert image_sha256(RGB) == digest


def test_one_pixel_change_changes_the_hash() -> None:
    changed = RGB.copy()
    changed[11, 17, 2] ^= 1
    assert image_sha256(decode_image(_encode(changed, "PNG"))) != image_sha256(decode_image(PNG))


def test_hash_covers_shape_and_dtype() -> None:
    flat = np.zeros((4, 6, 3), np.uint8)
    assert image_sha256(flat) != image_sha256(flat.reshape(6, 4, 3))
    assert image_sha256(flat) != image_sha256(flat.view(np.int8))
    assert image_sha256(np.asfortranarray(RGB)) == image_sha256(RGB)


# --- properties --------------------------------------------------------------------------------------------------

_FUZZ_LIMITS = ImageLimits(max_payload_bytes=1_000_000, max_pixels=1_000_000, max_side=4096)
_SEEDS = [
    PNG,
    JPEG,
    _encode(RGB, "WEBP", lossless=True),
    _encode(RGB, "WEBP", quality=50),
    _encode(RGB, "BMP"),
    _encode(RGB, "TIFF", compression="tiff_lzw"),
    _encode(RGB, "GIF"),
    _encode(RGB, "PNG", exif=_exif(6)),
    _npy(RGB),
]
_MAGICS = [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"RIFF\0\0\0\0WEBPVP8 ", b"BM", b"II*\0", b"MM\0*"]


def _decoded_or_refused(payload: bytes | str, limits: ImageLimits | None = None) -> None:
    """The property: an RGB uint8 image comes back or a typed SegmentationError is raised, nothing else."""
    try:
        out = decode_image(payload, limits=limits)
    except SegmentationError as exc:
        assert exc.message and exc.code
        return
    _assert_rgb_image(out)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=st.one_of(st.binary(), st.text()))
def test_arbitrary_payloads_decode_or_raise_a_typed_error(payload: bytes | str) -> None:
    _decoded_or_refused(payload)


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns about the corrupt EXIF/TIFF data it then refuses
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(magic=st.sampled_from([*_MAGICS, b"\x93NUMPY\x01\x00"]), tail=st.binary(max_size=512))
def test_junk_behind_a_real_signature_is_refused(magic: bytes, tail: bytes) -> None:
    _decoded_or_refused(magic + tail, _FUZZ_LIMITS)


@pytest.mark.filterwarnings("ignore::UserWarning")
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_real_images_decode_or_raise_a_typed_error(data: st.DataObject) -> None:
    payload = bytearray(data.draw(st.sampled_from(_SEEDS)))
    edits = data.draw(st.lists(st.tuples(st.integers(0, len(payload) - 1), st.integers(0, 255)), max_size=8))
    for position, value in edits:
        payload[position] = value
    cut = data.draw(st.integers(1, len(payload)))
    mutated = bytes(payload[:cut])
    as_text = data.draw(st.booleans())
    _decoded_or_refused(base64.b64encode(mutated).decode() if as_text else mutated, _FUZZ_LIMITS)


def test_garbage_is_refused_cleanly_after_ultralytics_patched_pillow() -> None:
    """ultralytics replaces PIL.Image.open with a wrapper that tries to install pi-heif on unknown input.

    decode_image must bypass it: garbage stays an InvalidImageError that says what was wrong, with no install attempt.
    """
    import PIL.Image

    from pipeline.models import _import_torch, configure_offline

    configure_offline()
    _import_torch()  # torchvision must import before ultralytics does
    import ultralytics.utils.patches  # noqa: F401 - applies the patch, as loading FastSAM does

    assert PIL.Image.open.__module__ != "PIL.Image", "ultralytics no longer patches Pillow: drop the workaround"
    with pytest.raises(InvalidImageError) as caught:
        decode_image(b"this is not an image at all")
    assert "heif" not in str(caught.value).lower()
    png = io.BytesIO()
    PIL.Image.new("RGB", (4, 3), (1, 2, 3)).save(png, format="PNG")
    assert decode_image(png.getvalue()).shape == (3, 4, 3)


# --- numpy as users hold it ----------------------------------------------------------------------------------------

SHAPES = {"HxW": (6, 5), "HxWx1": (6, 5, 1), "HxWx3": (6, 5, 3), "HxWx4": (6, 5, 4)}


def _expected_rgb(pixels: np.ndarray) -> np.ndarray:
    """The documented result: grey replicated, alpha dropped."""
    grey_or_colour = pixels if pixels.ndim == 3 else pixels[:, :, None]
    if grey_or_colour.shape[2] == 1:
        return np.repeat(grey_or_colour, 3, axis=2)
    return grey_or_colour[:, :, :3]


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_float_arrays_in_0_1_are_scaled_to_uint8(dtype: type, shape: tuple[int, ...]) -> None:
    pixels = np.random.default_rng(3).integers(0, 256, shape, dtype=np.uint8)
    floats = (pixels / 255.0).astype(dtype)
    for payload in (floats, _npy(floats)):
        np.testing.assert_array_equal(decode_image(payload), _expected_rgb(pixels))


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_uint16_arrays_are_scaled_and_uint8_times_257_comes_back_exactly(shape: tuple[int, ...]) -> None:
    pixels = np.random.default_rng(4).integers(0, 256, shape, dtype=np.uint8)
    wide = pixels.astype(np.uint16) * 257
    for payload in (wide, _npy(wide)):
        np.testing.assert_array_equal(decode_image(payload), _expected_rgb(pixels))
    assert decode_image(np.array([[0, 128, 32896, 65535]], np.uint16))[0, :, 0].tolist() == [0, 0, 128, 255]


def test_integer_arrays_holding_0_255_are_taken_as_8_bit() -> None:
    pixels = np.random.default_rng(5).integers(0, 256, (4, 4, 3))  # int64, as np.array of Python ints gives
    np.testing.assert_array_equal(decode_image(pixels), pixels.astype(np.uint8))


@pytest.mark.parametrize(
    ("array", "message"),
    [
        pytest.param(np.array([[0.0, 1.5]], np.float32), r"float32 has values in \[0, 1\.5\]", id="float-above-1"),
        pytest.param(np.array([[-0.25, 0.5]]), r"float64 has values in \[-0\.25, 0\.5\]", id="float-negative"),
        pytest.param(np.array([[0.5, np.nan]], np.float16), "NaN or infinite", id="nan"),
        pytest.param(np.array([[0, 300]], np.int32), r"int32 has values in \[0, 300\]", id="int-above-255"),
    ],
)
def test_other_ranges_are_refused_naming_the_range_found(array: np.ndarray, message: str) -> None:
    for payload in (array, _npy(array)):
        with pytest.raises(InvalidImageError, match=message):
            decode_image(payload)


def test_alpha_is_dropped_not_composited_for_arrays_and_pngs() -> None:
    """Documented: a fully transparent pixel keeps its stored colour (no background is composited)."""
    rgba = np.dstack([RGB, np.zeros(RGB.shape[:2], np.uint8)])
    np.testing.assert_array_equal(decode_image(rgba), RGB)
    np.testing.assert_array_equal(decode_image((rgba / 255.0).astype(np.float32)), RGB)
    np.testing.assert_array_equal(decode_image(_encode(rgba, "PNG")), RGB)
