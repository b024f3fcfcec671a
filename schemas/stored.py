"""Results as the dedup cache stores them, and cache hits built from them without decoding the masks.

A cache hit differs from the stored result only in the per-request fields (``request_id``, ``cached``,
``timings_ms``, ``error``, ``worker_id``, ``source``, ``created_at_ms``). Avro's binary encoding of a record is the
concatenation of its fields' encodings in schema order, so the stored form keeps the *encoded bytes* of the runs of
fields a hit shares with the original (the masks are nearly all of the bytes), and a hit encodes only the fields that
differ and splices: byte for byte what ``encode_result(original.with_cache_hit(...))`` gives (tested), without
decoding and re-encoding every mask — on a 40-mask result, ~20 µs instead of ~0.5 ms, which is what lets one worker
answer thousands of repeats per second.

Stored layout (``MAGIC`` first, so an entry of another format is recognised and ignored): for every shared run, its
length as an unsigned LEB128 varint then its bytes; then the mask count as a varint.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, overload

import fastavro
from fastavro.types import Schema

from pipeline.errors import MalformedRequestError
from pipeline.types import FallbackReason, MaskRecord, ModelName

from . import avro
from .messages import RequestOrigin, ResultStatus, SegmentResultMessage

MAGIC = b"SPR\x02"  # segpipe stored result, layout version 2 (the result schema gained mask_prompt_indices)

# The fields a cache hit sets afresh; every other field is copied from the stored result's bytes.
_ORIGIN_FIELDS = frozenset({"request_key", "request_topic", "request_partition", "request_offset"})
PER_REQUEST_FIELDS = frozenset(
    {"request_id", "cached", "timings_ms", "error", "worker_id", "source", "created_at_ms", *_ORIGIN_FIELDS}
)


@dataclass(frozen=True, slots=True)
class _Part:
    """A run of consecutive result fields, either shared by every hit or set per request."""

    fields: tuple[str, ...]
    shared: bool
    schema: Schema


def _parts() -> tuple[_Part, ...]:
    """Split today's result schema into runs of shared / per-request fields, each with a record schema of its own
    (encoding a record of a run's fields gives exactly that run's bytes of the whole record)."""
    full = json.loads(avro.schema_text("SegmentResult"))
    runs: list[list[dict[str, Any]]] = []
    for field in full["fields"]:
        shared = field["name"] not in PER_REQUEST_FIELDS
        if runs and (runs[-1][0]["name"] not in PER_REQUEST_FIELDS) == shared:
            runs[-1].append(field)
        else:
            runs.append([field])
    parts = []
    for index, run in enumerate(runs):
        record = {"type": "record", "name": f"SegmentResultPart{index}", "namespace": full["namespace"], "fields": run}
        # A fresh namespace of names per part: a named type (Mask, ErrorInfo) is defined in the field that uses it.
        schema = fastavro.parse_schema(record, named_schemas={})
        parts.append(_Part(tuple(f["name"] for f in run), run[0]["name"] not in PER_REQUEST_FIELDS, schema))
    return tuple(parts)


_PARTS = _parts()
_SHARED_PARTS = tuple(p for p in _PARTS if p.shared)
_MASKS_PART = next(p for p in _PARTS if "masks" in p.fields)
if _MASKS_PART.fields != ("masks",) or not _MASKS_PART.shared:  # pragma: no cover - guards a schema edit
    raise RuntimeError("the stored-result layout expects 'masks' alone in its run of shared fields")


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _read_varint(data: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise MalformedRequestError("stored result ends early")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def encode_stored(msg: SegmentResultMessage) -> bytes:
    """The cache entry for an ok result: its shared fields, encoded once."""
    if msg.status != ResultStatus.OK:
        raise ValueError("only ok results are stored")
    record = avro._result_record(msg)
    out = [MAGIC]
    for part in _PARTS:
        if part.shared:
            chunk = avro._write(part.schema, {name: record[name] for name in part.fields})
            out += [_varint(len(chunk)), chunk]
    out.append(_varint(len(msg.masks)))
    return b"".join(out)


class EncodedMasks(Sequence[MaskRecord]):
    """The masks of a stored result, still Avro-encoded: ``len()`` is free, the records are decoded on first use
    (a worker answering a hit only copies the bytes; a schema-registry codec or a test that looks at them decodes)."""

    def __init__(self, data: bytes, count: int, prompt_indices: Sequence[int | None] | None = None) -> None:
        self._data = data
        self._count = count
        self.prompt_indices = None if prompt_indices is None else tuple(prompt_indices)
        self._records: tuple[MaskRecord, ...] | None = None

    @property
    def encoded(self) -> bytes:
        return self._data

    @property
    def _decoded(self) -> tuple[MaskRecord, ...]:
        if self._records is None:
            record = avro._read(self._data, _MASKS_PART.schema, "stored masks")
            masks = tuple(avro._mask_from_record(mask) for mask in record["masks"])  # type: ignore[index,union-attr]
            indices = None if self.prompt_indices is None else list(self.prompt_indices)
            self._records = avro._with_prompt_indices(masks, indices)
        return self._records

    def __len__(self) -> int:
        return self._count

    @overload
    def __getitem__(self, index: int) -> MaskRecord: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[MaskRecord]: ...
    def __getitem__(self, index: int | slice) -> MaskRecord | Sequence[MaskRecord]:
        return self._decoded[index]

    def __iter__(self) -> Iterator[MaskRecord]:
        return iter(self._decoded)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, EncodedMasks):
            return self._data == other._data and self.prompt_indices == other.prompt_indices
        if isinstance(other, Sequence):
            return self._decoded == tuple(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._decoded)

    def __repr__(self) -> str:
        return f"EncodedMasks({self._count} masks, {len(self._data):,} bytes)"


@dataclass(frozen=True, slots=True)
class StoredResult:
    """A parsed cache entry: the shared runs' bytes, ready to splice into hits."""

    chunks: tuple[bytes, ...]  # one per shared part, in schema order
    mask_count: int

    @classmethod
    def parse(cls, data: bytes) -> StoredResult:
        """Raises :class:`MalformedRequestError` for an entry of another format or a damaged one."""
        if not data.startswith(MAGIC):
            raise MalformedRequestError("not a stored result of this layout")
        view, pos, chunks = memoryview(data), len(MAGIC), []
        for _ in _SHARED_PARTS:
            size, pos = _read_varint(view, pos)
            if pos + size > len(view):
                raise MalformedRequestError("stored result ends early")
            chunks.append(bytes(view[pos : pos + size]))
            pos += size
        count, pos = _read_varint(view, pos)
        if pos != len(view):
            raise MalformedRequestError("stored result has trailing bytes")
        return cls(tuple(chunks), count)

    def hit(
        self,
        request_id: str,
        worker_id: str,
        source: str | None,
        timings_ms: Mapping[str, float] | None = None,
        created_at_ms: int | None = None,
        origin: RequestOrigin | None = None,
    ) -> tuple[SegmentResultMessage, bytes]:
        """:meth:`SegmentResultMessage.with_cache_hit` of the stored result, and its Avro bytes: the message keeps its
        masks encoded; the bytes are the stored runs with the per-request fields encoded between them."""
        shared: dict[str, Any] = {}
        for part, chunk in zip(_SHARED_PARTS, self.chunks, strict=True):
            if part is not _MASKS_PART:
                shared |= avro._read(chunk, part.schema, "stored result")
        stored = SegmentResultMessage(
            request_id="",
            status=avro._enum(ResultStatus, shared["status"], "status"),
            image_sha256=shared["image_sha256"],
            width=shared["width"],
            height=shared["height"],
            inference_width=shared["inference_width"],
            inference_height=shared["inference_height"],
            model=None if shared["model"] is None else avro._enum(ModelName, shared["model"], "model"),
            fallback_reason=None
            if shared["fallback_reason"] is None
            else avro._enum(FallbackReason, shared["fallback_reason"], "fallback_reason"),
            fallback_detail=shared["fallback_detail"],
            cached=False,
            masks=EncodedMasks(
                self.chunks[_SHARED_PARTS.index(_MASKS_PART)], self.mask_count, shared.get("mask_prompt_indices")
            ),
            timings_ms={},
            error=None,
            worker_id="",
            source=None,
            created_at_ms=0,
        )
        message = stored.with_cache_hit(request_id, worker_id, source, timings_ms, created_at_ms, origin)
        chunks = iter(self.chunks)
        fresh = {name: getattr(message, name) for name in PER_REQUEST_FIELDS - _ORIGIN_FIELDS}
        fresh |= avro._origin_record(message.origin)
        out = [
            next(chunks) if part.shared else avro._write(part.schema, {name: fresh[name] for name in part.fields})
            for part in _PARTS
        ]
        return message, b"".join(out)


__all__ = ["MAGIC", "PER_REQUEST_FIELDS", "EncodedMasks", "StoredResult", "encode_stored"]
