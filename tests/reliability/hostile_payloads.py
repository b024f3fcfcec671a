"""Hostile inputs for the worker, built for real (no mocks): bytes a careless or malicious producer could send.

Each case is a Kafka record (key, value, headers) plus the error code the worker must answer it with. The property
test reuses the valid seeds below (PNG, JPEG, .npy, base64, Avro) as material to mutate.
"""

from __future__ import annotations

import base64
import io
import struct
import zlib
from dataclasses import dataclass

import cv2
import fastavro
import numpy as np

from pipeline.types import Prompts
from schemas import REQUEST_SCHEMA, SegmentRequest, encode_request, request_headers

Headers = list[tuple[str, bytes]]


@dataclass(frozen=True, slots=True)
class Hostile:
    """One hostile record and the error code it must be answered with."""

    name: str
    value: bytes | None
    headers: Headers
    code: str

    @property
    def key(self) -> bytes:
        return self.name.encode()


def noise_pixels(seed: int, height: int = 96, width: int = 128) -> np.ndarray:
    return (np.random.default_rng(seed).random((height, width, 3)) * 255).astype(np.uint8)


def encode(pixels: np.ndarray, ext: str) -> bytes:
    ok, data = cv2.imencode(ext, pixels)
    assert ok
    return data.tobytes()


def npy_bytes(array: np.ndarray, *, allow_pickle: bool = False) -> bytes:
    out = io.BytesIO()
    np.save(out, array, allow_pickle=allow_pickle)
    return out.getvalue()


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def png_claiming(width: int, height: int, rows: int = 4) -> bytes:
    """A well-formed PNG header (valid CRCs) declaring ``width`` x ``height`` grey pixels, with only a few rows of
    data: a few hundred bytes that would decode to ``width * height`` bytes (a decompression bomb)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    raw = zlib.compress(b"\x00" * min(rows * (width + 1), 1 << 20), 9)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", raw) + _png_chunk(b"IEND", b"")


def npy_header_claiming(shape: tuple[int, ...]) -> bytes:
    """A valid .npy v1.0 header declaring a uint8 array of ``shape``, followed by no data at all."""
    header = f"{{'descr': '|u1', 'fortran_order': False, 'shape': {shape!r}, }}".encode()
    header += b" " * (-(len(header) + 11) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header


def bmp_claiming(width: int, height: int) -> bytes:
    """A 54-byte BMP header declaring an absurd size with no pixel data after it."""
    header = struct.pack("<2sIHHI", b"BM", 54, 0, 0, 54)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return header + info


def avro(request_id: str, image: bytes, **fields: object) -> tuple[bytes, Headers]:
    request = SegmentRequest(request_id=request_id, image=image, **fields)  # type: ignore[arg-type]
    return encode_request(request), request_headers(request)


def with_raw_params(value: bytes, **params: object) -> bytes:
    """An Avro request with some params replaced by raw values, bypassing the spec's checks on construction."""
    record = fastavro.schemaless_reader(io.BytesIO(value), REQUEST_SCHEMA)
    record["params"].update(params)
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, REQUEST_SCHEMA, record)
    return buffer.getvalue()


def bare(request_id: str, **headers: str) -> Headers:
    found = [("segpipe-request-id", request_id.encode())]
    found += [(f"segpipe-{key.replace('_', '-')}", value.encode()) for key, value in headers.items()]
    return found


def hostile_cases() -> list[Hostile]:
    """Every hostile record the e2e test sends, each with the error code it must get."""
    good = noise_pixels(1)
    png = encode(good, ".png")
    jpeg = encode(good, ".jpg")
    cases: list[Hostile] = []

    def add_avro(name: str, image: bytes, code: str, **fields: object) -> None:
        value, headers = avro(name, image, **fields)
        cases.append(Hostile(name, value, headers, code))

    def add_bare(name: str, value: bytes | None, code: str, **headers: str) -> None:
        cases.append(Hostile(name, value, bare(name, **headers), code))

    # corrupt, truncated, empty, non-image
    add_avro("corrupt-png", b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 20, "invalid_image")
    add_avro("truncated-png", png[: len(png) // 2], "invalid_image")
    add_avro("truncated-jpeg", jpeg[: len(jpeg) // 3], "invalid_image")
    add_avro("empty", b"", "invalid_image")
    add_bare("tombstone", None, "malformed_request")
    add_bare("pdf", b"%PDF-1.7\n1 0 obj<<>>endobj\n%%EOF", "invalid_image")
    add_bare("zip", b"PK\x03\x04" + bytes(40), "invalid_image")
    add_bare("text", b"hello, this is not an image at all!", "invalid_image")
    add_bare("random-bytes", np.random.default_rng(5).bytes(4096), "invalid_image")
    add_bare("bad-base64", b"data:image/png;base64,!!!not base64!!!", "invalid_image")
    add_bare("base64-of-garbage", base64.b64encode(b"\x00\x01garbage" * 30), "invalid_image")
    # decompression bombs and absurd dimensions
    add_bare("png-bomb-100000x100000", png_claiming(100_000, 100_000), "image_too_large")
    add_bare("png-20000x20000", png_claiming(20_000, 20_000), "image_too_large")
    add_bare("png-1x70000", png_claiming(1, 70_000), "image_too_large")
    add_bare("png-0x0", png_claiming(0, 0), "invalid_image")
    add_bare("bmp-absurd", bmp_claiming(2**31 - 1, 2**31 - 1), "image_too_large")
    add_bare("npy-huge-shape", npy_header_claiming((100_000, 100_000, 3)), "image_too_large")
    # pickled numpy: object dtype needs pickle, which the worker never unpickles
    add_bare(
        "npy-object-pickle", npy_bytes(np.array([{"x": 1}, "evil"], dtype=object), allow_pickle=True), "invalid_image"
    )
    add_bare("npy-float-out-of-range", npy_bytes(np.full((8, 8, 3), 2.0, dtype=np.float64)), "invalid_image")
    # malformed Avro
    cases.append(
        Hostile("avro-garbage", b"\x02\xff\xff\xff garbage", [("segpipe-format", b"avro-v1")], "malformed_request")
    )
    valid_avro, avro_headers = avro("avro-truncated", png)
    cases.append(Hostile("avro-truncated", valid_avro[:20], avro_headers, "malformed_request"))
    cases.append(Hostile("avro-empty", b"", [("segpipe-format", b"avro-v1")], "malformed_request"))
    # an Avro request without its format header; a registry-framed one to a worker without a registry
    no_format = "avro-without-format-header"
    cases.append(Hostile(no_format, valid_avro, bare(no_format), "malformed_request"))
    framed = b"\x00" + struct.pack(">I", 3) + valid_avro
    framed_headers = [("segpipe-format", b"avro-v1"), ("segpipe-request-id", b"registry-framed")]
    cases.append(Hostile("registry-framed", framed, framed_headers, "malformed_request"))
    # prompts outside the image, NaN, negative, wrong shapes
    add_avro("point-outside", png, "invalid_prompt", prompts=Prompts(points=((500.0, 10.0),)))
    add_avro("point-nan", png, "invalid_prompt", prompts=Prompts(points=((float("nan"), 10.0),)))
    add_avro("point-negative", png, "invalid_prompt", prompts=Prompts(points=((-5.0, 10.0),)))
    add_avro("box-inverted", png, "invalid_prompt", prompts=Prompts(boxes=((50.0, 50.0, 10.0, 10.0),)))
    add_avro("box-infinite", png, "invalid_prompt", prompts=Prompts(boxes=((0.0, 0.0, float("inf"), 10.0),)))
    add_bare("points-wrong-shape", png, "invalid_prompt", points="[[1, 2, 3]]")
    add_bare("boxes-wrong-shape", png, "invalid_prompt", boxes="[[1, 2]]")
    add_bare("labels-mismatch", png, "invalid_prompt", points="[[1, 2]]", point_labels="[1, 0]")
    add_bare("points-not-json", png, "malformed_request", points="[[1, 2")
    add_bare("points-nan-json", png, "invalid_prompt", points="[[NaN, 2]]")
    add_bare("points-nested-deeply", png, "malformed_request", points="[" * 100_000 + "]" * 100_000)
    # unknown model names and bad parameters
    add_bare("model-unknown", png, "invalid_parameters", model="sam3")
    # the spec refuses conf=7.0 in SegmentParams itself, so write the Avro record as a foreign producer would
    value, headers = avro("conf-out-of-range", png)
    cases.append(Hostile("conf-out-of-range", with_raw_params(value, conf=7.0), headers, "invalid_parameters"))
    add_bare("imgsz-huge", png, "invalid_parameters", imgsz="999999")
    # header abuse
    cases.append(
        Hostile("unknown-header", png, [*bare("unknown-header"), ("segpipe-colour", b"red")], "malformed_request")
    )
    cases.append(
        Hostile(
            "repeated-header",
            png,
            [*bare("repeated-header", model="sam2"), ("segpipe-model", b"auto")],
            "malformed_request",
        )
    )
    cases.append(
        Hostile(
            "header-not-utf8", png, [*bare("header-not-utf8"), ("segpipe-source", b"\xff\xfe\xfd")], "malformed_request"
        )
    )
    return cases
