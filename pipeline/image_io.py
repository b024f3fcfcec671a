"""Turn whatever a request carries into one RGB uint8 array, refusing hostile payloads with typed errors.

A request's image arrives as encoded bytes (PNG, JPEG, WebP, BMP, TIFF, GIF), as ``.npy`` bytes, as base64 text
(optionally a ``data:`` URI, possibly sent as bytes by Kafka clients) or, in-process, as a numpy array. Every path
ends in :func:`decode_image`, which returns a C-contiguous, writable ``(H, W, 3)`` uint8 RGB array or raises
:class:`~pipeline.errors.InvalidImageError` / :class:`~pipeline.errors.ImageTooLargeError`.

Safety rules, because payloads come from the network:

* sizes are checked before work: the payload length (base64 estimated from its text length) before decoding, the
  image dimensions from the lazily read header before any pixel is decoded, the ``.npy`` shape from its header
  before ``np.load``;
* Pillow only tries the formats above (no EPS/Ghostscript, no exotic plugins) and its global state
  (``MAX_IMAGE_PIXELS``, ``LOAD_TRUNCATED_IMAGES``) is never touched: its own decompression-bomb guard stays in
  force as an outer bound and is reported as :class:`ImageTooLargeError`;
* ``.npy`` is loaded with ``allow_pickle=False`` after the header has been checked;
* ``MemoryError`` is not converted: within the limits it means the worker, not the request, is short of memory.

Arrays (``.npy`` or in-process) are taken as users hold them: uint8 as is; uint16 scaled to 0..255 (``v / 257``,
rounded, so ``uint8 * 257`` comes back exactly); float16/32/64 in [0, 1] scaled by 255 and rounded; other integer
types when their values lie in 0..255. Anything else (floats outside [0, 1], NaN, integers beyond 255) is refused
with a message naming the range found. Shapes: (H, W), (H, W, 1), (H, W, 3) RGB, (H, W, 4) RGBA.

Alpha is dropped, not composited (a transparent pixel keeps its stored colour), for arrays and for RGBA/LA/PA
images alike: segmentation looks at the colours, and no background colour would be right for every picture.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pipeline.errors import ImageTooLargeError, InvalidImageError, SegmentationError

if TYPE_CHECKING:
    from pipeline.settings import ModelSettings

__all__ = ["ImageLimits", "decode_image", "image_sha256"]

# Formats Pillow may try: the ones a client can legitimately send. Restricting them keeps hostile bytes away from
# rarely exercised plugins (and from EPS, which would run Ghostscript).
_PIL_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF")
_NPY_MAGIC = b"\x93NUMPY"
_WHITESPACE = b" \t\r\n\v\f"
_URLSAFE_TO_STANDARD = bytes.maketrans(b"-_", b"+/")
_NOT_BASE64 = re.compile(rb"[^A-Za-z0-9+/=]")
_LOOKS_LIKE_BASE64 = re.compile(rb"[A-Za-z0-9+/=_\-\s]*")
# Well-known non-image payloads, named in the error so the sender sees what they sent.
_KNOWN_NON_IMAGES = (
    (b"%PDF", "a PDF document"),
    (b"PK\x03\x04", "a ZIP archive (.npz is not supported, send .npy)"),
    (b"\x1f\x8b", "gzip-compressed data"),
)
_SUPPORTED = "PNG, JPEG, WebP, BMP, TIFF, GIF or .npy"


@dataclass(frozen=True, slots=True)
class ImageLimits:
    """Upper bounds applied before any large allocation; defaults match :class:`~pipeline.settings.ModelSettings`.

    ``max_payload_bytes`` bounds the encoded image (after base64 decoding), ``max_pixels`` and ``max_side`` the
    decoded picture.
    """

    max_payload_bytes: int = 64 * 1024 * 1024
    max_pixels: int = 50_000_000
    max_side: int = 16384

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ImageLimits.{f.name} must be a positive int, got {value!r}")

    @classmethod
    def from_settings(cls, settings: ModelSettings) -> ImageLimits:
        """The limits configured for the worker (MAX_PAYLOAD_BYTES, MAX_IMAGE_PIXELS, MAX_IMAGE_SIDE)."""
        return cls(
            max_payload_bytes=settings.max_payload_bytes,
            max_pixels=settings.max_image_pixels,
            max_side=settings.max_image_side,
        )


_DEFAULT_LIMITS = ImageLimits()


def decode_image(
    payload: bytes | bytearray | memoryview | str | np.ndarray, *, limits: ImageLimits | None = None
) -> np.ndarray:
    """Decode a request's image into a C-contiguous, writable uint8 array of shape (H, W, 3) in RGB order.

    Accepted: encoded image bytes (PNG, JPEG, WebP, BMP, TIFF, GIF; detected from the content, EXIF orientation
    applied, first frame of animations), ``.npy`` bytes of a uint8 array, base64 text as ``str`` or ASCII bytes
    (standard or urlsafe alphabet, optional ``data:...;base64,`` prefix, whitespace and missing padding tolerated),
    and arrays (uint8, uint16, [0, 1] floats: see the module doc) of shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4).

    Grey is replicated to three channels; alpha is dropped (not composited over a background); palette, CMYK and
    other modes are converted by Pillow; 16-bit grey keeps its high byte. An array input already in the output form
    is returned as is (no copy unless it is read-only).

    Raises:
        ImageTooLargeError: the payload or the image exceeds ``limits`` (checked before decoding).
        InvalidImageError: anything that is not a supported image, with a short reason.
    """
    limits = _DEFAULT_LIMITS if limits is None else limits
    if isinstance(payload, np.ndarray):
        return _decode_array(payload, limits)
    if isinstance(payload, str):
        _check_text_length(len(payload), limits)
        try:
            data = payload.encode("ascii")
        except UnicodeEncodeError as exc:
            raise InvalidImageError(
                f"text payload is not base64: non-ASCII character {payload[exc.start]!r} at position {exc.start}"
            ) from None
        return _decode_bytes(_b64decode(data, limits), limits, from_base64=True)
    if isinstance(payload, (bytes, bytearray, memoryview)):
        try:
            view = memoryview(payload)
            _check_text_length(view.nbytes, limits)
            data = payload if isinstance(payload, bytes) else view.tobytes()
        except ValueError as exc:  # a released memoryview
            raise InvalidImageError(f"unreadable payload buffer: {exc}") from None
        return _decode_bytes(data, limits, from_base64=False)
    raise InvalidImageError(f"unsupported payload type {type(payload).__name__}: expected bytes, str or numpy array")


def image_sha256(image: np.ndarray) -> str:
    """Hex SHA-256 of a decoded image: shape and dtype header, then the C-contiguous pixel bytes.

    Hashing pixels rather than the payload makes the same picture sent as PNG, base64 or an array dedup together;
    the header keeps arrays with equal bytes but different shapes or dtypes apart.
    """
    arr = np.ascontiguousarray(image)
    if arr.dtype.hasobject:
        raise TypeError("cannot hash an array of Python objects")
    digest = hashlib.sha256()
    digest.update(f"segpipe-image-v1|{arr.dtype.str}|{'x'.join(map(str, arr.shape))}|".encode("ascii"))
    digest.update(memoryview(arr).cast("B"))
    return digest.hexdigest()


# --- size checks -----------------------------------------------------------------------------------------------


def _check_text_length(length: int, limits: ImageLimits) -> None:
    """Cheap first bound: nothing longer than a limit-sized image in base64 plus whitespace can be accepted."""
    if length > limits.max_payload_bytes * 3 // 2 + 4096:
        raise ImageTooLargeError(f"payload is {length:,} bytes, limit {limits.max_payload_bytes:,}")


def _check_payload_size(length: int, limits: ImageLimits, what: str = "payload") -> None:
    if length > limits.max_payload_bytes:
        raise ImageTooLargeError(f"{what} is {length:,} bytes, limit {limits.max_payload_bytes:,}")


def _check_dimensions(width: int, height: int, limits: ImageLimits) -> None:
    """Refuse from the header's size, before a single pixel buffer is allocated."""
    if width <= 0 or height <= 0:
        raise InvalidImageError(f"image is {width}x{height}: a side is empty")
    pixels = width * height
    if pixels > limits.max_pixels:
        raise ImageTooLargeError(f"image is {width}x{height} = {pixels:,} pixels, limit {limits.max_pixels:,}")
    if max(width, height) > limits.max_side:
        raise ImageTooLargeError(
            f"image is {width}x{height}: side {max(width, height):,} exceeds limit {limits.max_side:,}"
        )


# --- bytes: base64, npy, encoded images --------------------------------------------------------------------------


def _b64decode(data: bytes, limits: ImageLimits) -> bytes:
    """Decode base64 text (data URI prefix, whitespace, urlsafe alphabet, missing padding tolerated)."""
    body = data.lstrip()
    if body[:5].lower() == b"data:":
        comma = body.find(b",", 0, 512)
        if comma < 0:
            raise InvalidImageError("malformed data URI: no ',' after the media type")
        if not body[5:comma].strip().lower().endswith(b";base64"):
            raise InvalidImageError("data URI is not base64-encoded (expected 'data:image/...;base64,')")
        body = body[comma + 1 :]
    body = body.translate(_URLSAFE_TO_STANDARD, _WHITESPACE).rstrip(b"=")
    if not body:
        raise InvalidImageError("empty payload")
    bad = _NOT_BASE64.search(body)
    if bad is not None:
        raise InvalidImageError(f"payload is not valid base64: unexpected character {chr(bad.group()[0])!r}")
    if len(body) % 4 == 1:
        raise InvalidImageError(f"payload is not valid base64: {len(body)} characters cannot encode whole bytes")
    _check_payload_size(len(body) * 3 // 4, limits, "base64-decoded payload")
    try:
        return base64.b64decode(body + b"=" * (-len(body) % 4), validate=True)
    except binascii.Error as exc:  # misplaced '=' inside the text
        raise InvalidImageError(f"payload is not valid base64: {exc}") from None


def _decode_bytes(data: bytes, limits: ImageLimits, *, from_base64: bool) -> np.ndarray:
    """Dispatch raw bytes: .npy by magic, images by Pillow's content sniffing, else base64 text (one level)."""
    if not data:
        raise InvalidImageError("empty payload")
    if data.startswith(_NPY_MAGIC):
        _check_payload_size(len(data), limits)
        return _decode_npy(data, limits)
    image = _open_image(data, limits)
    if image is None:
        if not from_base64 and _looks_like_base64(data):
            return _decode_bytes(_b64decode(data, limits), limits, from_base64=True)
        raise InvalidImageError(_not_an_image_message(data, from_base64))
    with image:
        _check_payload_size(len(data), limits)
        return _decode_pil(image, limits)


def _looks_like_base64(data: bytes) -> bool:
    """Cheap sniff of the first bytes; :func:`_b64decode` does the real validation (and names the bad character)."""
    head = data.lstrip()
    return head[:5].lower() == b"data:" or _LOOKS_LIKE_BASE64.fullmatch(head, 0, 512) is not None


def _not_an_image_message(data: bytes, from_base64: bool) -> str:
    source = "base64-decoded payload" if from_base64 else "payload"
    for magic, name in _KNOWN_NON_IMAGES:
        if data.startswith(magic):
            return f"{source} is {name}, not an image"
    expected = _SUPPORTED if from_base64 else f"{_SUPPORTED}, raw or base64"
    return f"{source} is not a supported image ({expected} expected)"


def _genuine_pillow_open() -> Callable[..., Image.Image]:
    """Pillow's own ``Image.open``, even after a library replaced it.

    ultralytics replaces ``PIL.Image.open`` process-wide with a wrapper that, on an unidentified image, tries to
    install and import pi-heif (a network attempt, and a confusing error). Hostile payloads are exactly the
    unidentified images we see, so we unwrap to the function the wrapper saved (``_image_open`` in its module).
    """
    opener = Image.open
    while getattr(opener, "__module__", "PIL.Image") != "PIL.Image":
        inner = getattr(opener, "__globals__", {}).get("_image_open")
        if inner is None or inner is opener:
            break
        opener = inner
    return opener


def _claimed_size_message(pillow_message: str, limits: ImageLimits) -> str:
    """The configured limit and the size the header claims, from Pillow's "Image size (N pixels) exceeds..."."""
    found = re.search(r"\((\d+) pixels\)", pillow_message)
    if found is None:
        return f"image header claims more pixels than Pillow decodes, limit {limits.max_pixels:,} (MAX_IMAGE_PIXELS)"
    claimed = int(found.group(1))
    if claimed <= limits.max_pixels:  # only when the caller turned Pillow's warning into an error
        return (
            f"image header claims {claimed:,} pixels: within MAX_IMAGE_PIXELS but refused by Pillow's "
            "decompression-bomb guard"
        )
    return f"image header claims {claimed:,} pixels, limit {limits.max_pixels:,} (MAX_IMAGE_PIXELS)"


def _open_image(data: bytes, limits: ImageLimits) -> Image.Image | None:
    """Identify an image lazily (header only); ``None`` when no allowed format recognises the bytes."""
    try:
        return _genuine_pillow_open()(io.BytesIO(data), formats=_PIL_FORMATS)
    except UnidentifiedImageError:
        return None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's own guard (2x its MAX_IMAGE_PIXELS) fired on the header, before our limits could: report ours.
        raise ImageTooLargeError(_claimed_size_message(str(exc), limits)) from None
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - Pillow's plugins raise OSError, ValueError, SyntaxError... on junk
        raise InvalidImageError(f"corrupt image header: {exc}") from None


def _decode_pil(image: Image.Image, limits: ImageLimits) -> np.ndarray:
    """Check the header size, then decode the first frame, apply EXIF orientation and convert to RGB."""
    fmt = image.format or "image"
    _check_dimensions(*image.size, limits)
    try:
        image.load()  # LOAD_TRUNCATED_IMAGES stays False: a truncated file raises OSError here
        _check_dimensions(*image.size, limits)
        ImageOps.exif_transpose(image, in_place=True)
        return _to_rgb(_pil_to_uint8(image))
    except SegmentationError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(f"{fmt} image refused as a decompression bomb: {exc}") from None
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - truncated/corrupt data surfaces as many exception types
        raise InvalidImageError(f"cannot decode {fmt} image (truncated or corrupt): {exc}") from None


def _pil_to_uint8(image: Image.Image) -> np.ndarray:
    """Pixels as uint8 (H, W), (H, W, 3) or (H, W, 4), converting the modes a numpy uint8 view cannot hold."""
    mode = image.mode
    if mode in ("RGB", "L", "RGBA", "RGBX"):
        return np.asarray(image)
    if mode == "LA":
        return np.asarray(image)[:, :, 0]
    if mode == "1":
        return np.asarray(image.convert("L"))
    if mode in ("P", "PA"):
        # Through RGBA so a palette transparency never triggers Pillow's "convert to RGBA" warning; alpha dropped.
        return np.asarray(image.convert("RGBA"))
    if mode.startswith("I;16"):
        grey = np.asarray(image)
        if grey.dtype.kind != "u" or grey.dtype.itemsize != 2:
            raise InvalidImageError(f"unsupported 16-bit image mode {mode}")
        return (grey >> 8).astype(np.uint8)
    if mode == "I":
        return _int_to_uint8(np.asarray(image))
    if mode == "F":
        return _float_to_uint8(np.asarray(image))
    try:  # CMYK, YCbCr, LAB, HSV, RGBa...
        return np.asarray(image.convert("RGB"))
    except ValueError:
        raise InvalidImageError(f"unsupported image mode {mode}") from None


def _int_to_uint8(grey: np.ndarray) -> np.ndarray:
    """32-bit grey: kept as is when it already fits 0..255, otherwise read as 16-bit data (high byte kept)."""
    if grey.size and grey.min() >= 0 and grey.max() <= 255:
        return grey.astype(np.uint8)
    return (np.clip(grey, 0, 65535) >> 8).astype(np.uint8)


def _float_to_uint8(grey: np.ndarray) -> np.ndarray:
    """Float grey: 0..1 data is scaled to 0..255, anything else clipped to 0..255; NaN becomes 0."""
    values = np.nan_to_num(grey.astype(np.float32), nan=0.0, posinf=255.0, neginf=0.0)
    if values.size and values.min() >= 0.0 and values.max() <= 1.0:
        values = values * 255.0
    return np.rint(np.clip(values, 0.0, 255.0)).astype(np.uint8)


def _decode_npy(data: bytes, limits: ImageLimits) -> np.ndarray:
    """Load ``.npy`` bytes after checking dtype and shape in the header, so nothing big or pickled is loaded."""
    stream = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, _fortran_order, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, _fortran_order, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise InvalidImageError(f"unsupported .npy format version {version[0]}.{version[1]}")
    except SegmentationError:
        raise
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - numpy reports malformed headers as ValueError, EOFError, ...
        raise InvalidImageError(f"malformed .npy header: {exc}") from None
    if dtype.hasobject:
        raise InvalidImageError(".npy holds Python objects (pickle): refused, send a uint8 array")
    _check_array_form(tuple(shape), dtype, limits, source=".npy")
    expected = math.prod(shape) * dtype.itemsize
    available = len(data) - stream.tell()
    if available < expected:
        raise InvalidImageError(f"truncated .npy: {available:,} bytes of pixels, header promises {expected:,}")
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - belt and braces: the header was already checked
        raise InvalidImageError(f"cannot load .npy: {exc}") from None
    return _to_rgb(_array_to_uint8(array, ".npy"))


# --- arrays ------------------------------------------------------------------------------------------------------


def _decode_array(payload: np.ndarray, limits: ImageLimits) -> np.ndarray:
    array = np.asarray(payload)
    if array.dtype.hasobject:
        raise InvalidImageError("array of Python objects not supported: send uint8, uint16 or float pixels")
    _check_array_form(array.shape, array.dtype, limits, source="array")
    return _to_rgb(_array_to_uint8(array, "array"))


def _check_array_form(shape: tuple[int, ...], dtype: np.dtype, limits: ImageLimits, *, source: str) -> None:
    """The array forms an image may take: a numeric dtype (see :func:`_array_to_uint8`), (H, W) or (H, W, 1|3|4),
    no empty side, within the limits."""
    if dtype.kind not in "uif":
        raise InvalidImageError(
            f"{source} dtype {dtype} not supported: expected uint8, uint16, float16/32/64 in [0, 1] "
            "or another integer type holding 0..255"
        )
    if len(shape) not in (2, 3) or (len(shape) == 3 and shape[2] not in (1, 3, 4)):
        raise InvalidImageError(
            f"{source} shape {shape} not supported: expected (H, W), (H, W, 1), (H, W, 3) or (H, W, 4)"
        )
    if 0 in shape:
        raise InvalidImageError(f"{source} shape {shape} has an empty dimension")
    _check_dimensions(int(shape[1]), int(shape[0]), limits)


def _array_to_uint8(array: np.ndarray, source: str) -> np.ndarray:
    """Pixel values as uint8: uint16 and [0, 1] floats scaled, 0..255 integers kept; other ranges refused."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.uint16:
        return np.rint(array / 257.0).astype(np.uint8)
    kind = "float" if array.dtype.kind == "f" else "integer"
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise InvalidImageError(f"{source} of {array.dtype} holds NaN or infinite values: expected [0, 1]")
    low, high = array.min(), array.max()
    if kind == "float":
        if low < 0.0 or high > 1.0:
            raise InvalidImageError(
                f"{source} of {array.dtype} has values in [{float(low):g}, {float(high):g}]: a float image must be in "
                "[0, 1] (divide 0..255 data by 255, or send uint8)"
            )
        return np.rint(array.astype(np.float64) * 255.0).astype(np.uint8)
    if low < 0 or high > 255:
        raise InvalidImageError(
            f"{source} of {array.dtype} has values in [{int(low)}, {int(high)}]: an integer image must hold 0..255 "
            "(or be uint16, scaled to 0..255)"
        )
    return array.astype(np.uint8)


def _to_rgb(array: np.ndarray) -> np.ndarray:
    """(H, W[, 1|3|4]) uint8 -> C-contiguous writable (H, W, 3): grey replicated, alpha dropped."""
    if array.ndim == 2:
        array = array[:, :, np.newaxis]
    channels = array.shape[2]
    if channels == 1:
        return np.repeat(array, 3, axis=2)
    if channels == 4:
        array = array[:, :, :3]
    out = np.ascontiguousarray(array)
    if not out.flags.writeable:
        out = out.copy()
    return out
