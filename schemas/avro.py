"""Avro codec of the wire messages: schemaless binary, schemas shipped as package data.

Why schemaless: Kafka records carry one message each and the format is named by the ``segpipe-format`` header,
so an Avro container's embedded schema would only add bytes. The price is that a reader must know the writer's
schema; every reader here passes today's schema as the writer schema.

Evolution rule (what keeps that safe): a new version only *appends* optional fields (``["null", T]``, default
null) at the end of a top-level record. Then:

* a new reader reads old records by passing its own schema as ``reader_schema`` (``decode_result(data,
  reader_schema=NEXT)``): fastavro resolves old writer -> new reader and fills the new fields with their defaults;
* an old reader reads new records: it decodes the fields it knows and the appended field is left unread as
  trailing bytes, which the decoders here deliberately tolerate (they never demand the whole buffer be consumed).

Fields must never be inserted in the middle, removed, renamed, or added inside nested records (Mask, Rle, ...):
schemaless readers of the previous version would misread every byte after them.

Decoding failures of any kind become :class:`pipeline.errors.MalformedRequestError` (the request decoder may also
raise :class:`~pipeline.errors.InvalidParametersError` for an unknown model and
:class:`~pipeline.errors.InvalidPromptError` for badly shaped prompts); nothing else escapes the decoders.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from functools import cache
from importlib import resources
from typing import Any, TypeVar

import fastavro
from fastavro.types import Schema

from pipeline.errors import MalformedRequestError, SegmentationError
from pipeline.params import PARAM_NAMES, params_from_values
from pipeline.types import RLE, FallbackReason, MaskRecord, ModelName

from .headers import prompts_from_lists
from .messages import (
    DeadLetter,
    ErrorInfo,
    Header,
    RequestEnvelope,
    RequestOrigin,
    ResultStatus,
    SegmentRequest,
    SegmentResultMessage,
)

_FILES = {"SegmentRequest": "segment_request", "SegmentResult": "segment_result", "DeadLetter": "dead_letter"}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)
_E = TypeVar("_E", bound=StrEnum)
_T = TypeVar("_T")


@cache
def schema_text(name: str) -> str:
    """The JSON text of a schema, by record name (``SegmentResult``) or file stem (``segment_result``).

    For publishing to a schema registry or handing to a Java producer; it is the file shipped in the package.
    """
    stem = _FILES.get(name, name)
    if stem not in _FILES.values():
        raise ValueError(f"unknown schema {name!r}: expected one of {', '.join(sorted(_FILES))}")
    return resources.files(__package__).joinpath(f"{stem}.avsc").read_text(encoding="utf-8")


def _parse(name: str) -> Schema:
    """Parse a shipped schema once; fastavro's parsed form is what its readers and writers want."""
    return fastavro.parse_schema(json.loads(schema_text(name)))


REQUEST_SCHEMA: Schema = _parse("SegmentRequest")
RESULT_SCHEMA: Schema = _parse("SegmentResult")
DEAD_LETTER_SCHEMA: Schema = _parse("DeadLetter")


def _first_version(name: str, first_appended: str) -> Schema:
    """A schema as it was before ``first_appended`` and the fields after it were appended (the writer of old data)."""
    schema = json.loads(schema_text(name))
    names = [field["name"] for field in schema["fields"]]
    schema["fields"] = schema["fields"][: names.index(first_appended)]
    return fastavro.parse_schema(schema, named_schemas={})


_RESULT_V1_SCHEMA: Schema = _first_version("SegmentResult", "request_key")

# Only the first field of SegmentRequest: schemaless readers stop where their schema ends, so this reads the
# request_id of a request whose later fields are corrupt or truncated.
_REQUEST_ID_ONLY: Schema = fastavro.parse_schema(
    {
        "type": "record",
        "name": "SegmentRequestId",
        "namespace": "io.segpipe.v1",
        "fields": [{"name": "request_id", "type": "string"}],
    }
)


def _write(schema: Schema, record: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, schema, record)
    return buf.getvalue()


def _read(data: bytes, writer: Schema, what: str, reader: Schema | None = None) -> dict[str, Any]:
    """Decode one record, turning every failure into MalformedRequestError with a message a person can act on."""
    if data is None:
        raise MalformedRequestError(f"{what}: the record has no value")
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MalformedRequestError(f"{what}: expected bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise MalformedRequestError(f"{what}: the record value is empty")
    try:
        record = fastavro.schemaless_reader(io.BytesIO(data), writer, reader)
    except EOFError:
        reason = "the data ends early (truncated, or not an Avro message of this schema)"
    except UnicodeDecodeError:
        reason = "a string field is not valid UTF-8 (not an Avro message of this schema?)"
    except Exception as exc:  # noqa: BLE001 - fastavro raises many types on garbage (IndexError, ValueError...)
        reason = f"{type(exc).__name__}: {exc}"
    else:
        if not isinstance(record, dict):
            raise MalformedRequestError(f"{what}: decoded to {type(record).__name__}, expected a record")
        return record
    raise MalformedRequestError(f"cannot decode {what} ({len(data)} bytes) as Avro: {reason}")


def _ms(value: object) -> int:
    """fastavro reads timestamp-millis as an aware datetime; the messages carry plain epoch milliseconds."""
    if isinstance(value, datetime):
        return (value - _EPOCH) // _ONE_MS
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise TypeError(f"expected a timestamp, got {type(value).__name__}")


def _enum(kind: type[_E], value: str, field: str) -> _E:
    try:
        return kind(value)
    except ValueError:
        expected = ", ".join(member.value for member in kind)
        raise MalformedRequestError(f"{field} {value!r} is not one of {expected}") from None


def _convert(what: str, build: Callable[[dict[str, Any]], _T], record: dict[str, Any]) -> _T:
    """Run a record -> dataclass conversion, letting typed errors through and wrapping anything else."""
    try:
        return build(record)
    except SegmentationError:
        raise
    except Exception as exc:
        raise MalformedRequestError(f"{what} has invalid content: {type(exc).__name__}: {exc}") from exc


# --- SegmentRequest ------------------------------------------------------------------------------------------------


def _params_record_fields() -> frozenset[str]:
    """The fields of the nested ``Params`` record: the parameters of the first version. A parameter added later is
    appended to ``SegmentRequest`` itself as an optional field, as the evolution rule requires (nothing is ever added
    inside a nested record); the mapping below puts each spec parameter where the schema has it."""
    request = json.loads(schema_text("SegmentRequest"))
    (params,) = [field for field in request["fields"] if field["name"] == "params"]
    return frozenset(field["name"] for field in params["type"]["fields"])


_PARAMS_RECORD_FIELDS = _params_record_fields()


def _param_value(value: object) -> object:
    """A parameter as Avro carries it: enums as their string."""
    return value.value if isinstance(value, StrEnum) else value


def _request_record(req: SegmentRequest) -> dict[str, Any]:
    p = req.params
    return {
        "request_id": req.request_id,
        "image": req.image if isinstance(req.image, bytes) else bytes(req.image),
        "points": [{"x": float(x), "y": float(y)} for x, y in req.prompts.points],
        "point_labels": [int(label) for label in req.prompts.point_labels],
        "boxes": [
            {"x1": float(x1), "y1": float(y1), "x2": float(x2), "y2": float(y2)} for x1, y1, x2, y2 in req.prompts.boxes
        ],
        "params": {name: _param_value(getattr(p, name)) for name in PARAM_NAMES if name in _PARAMS_RECORD_FIELDS},
        "source": req.source,
        "reply_to": req.reply_to,
        "submitted_at_ms": req.submitted_at_ms,
        # Parameters added after the first version: top-level optional fields (never inside Params: the rule).
        **{name: _param_value(getattr(p, name)) for name in PARAM_NAMES if name not in _PARAMS_RECORD_FIELDS},
    }


def _request_from_record(rec: dict[str, Any]) -> SegmentRequest:
    request_id = rec["request_id"]
    if not request_id:
        raise MalformedRequestError("request_id is empty")
    params = params_from_values(
        {name: (rec["params"] if name in _PARAMS_RECORD_FIELDS else rec).get(name) for name in PARAM_NAMES}
    )
    prompts = prompts_from_lists(
        [(pt["x"], pt["y"]) for pt in rec["points"]],
        rec["point_labels"],
        [(b["x1"], b["y1"], b["x2"], b["y2"]) for b in rec["boxes"]],
    )
    return SegmentRequest(
        request_id=request_id,
        image=rec["image"],
        prompts=prompts,
        params=params,
        source=rec["source"],
        reply_to=rec["reply_to"],
        submitted_at_ms=_ms(rec["submitted_at_ms"]),
    )


def encode_request(req: SegmentRequest) -> bytes:
    """Schemaless Avro of a request; publish it with :func:`schemas.headers.request_headers`."""
    return _write(REQUEST_SCHEMA, _request_record(req))


def decode_request(data: bytes) -> SegmentRequest:
    """A request from its Avro bytes (trailing bytes from a newer writer are ignored).

    Raises only :class:`MalformedRequestError` (unreadable bytes, empty request_id),
    :class:`InvalidParametersError` (unknown model) or :class:`InvalidPromptError` (label count or value).
    """
    record = _read(data, REQUEST_SCHEMA, "SegmentRequest")
    return _convert("SegmentRequest", _request_from_record, record)


def peek_request_envelope(data: bytes) -> RequestEnvelope | None:
    """Request id, source and reply topic of a request that :func:`decode_request` refused; never raises.

    So the worker can still address an error result to the caller (``reply_to``) for an unknown model or bad
    prompts. When the record itself is corrupt only its leading request_id may be readable; ``None`` when even
    that is not.
    """
    for schema in (REQUEST_SCHEMA, _REQUEST_ID_ONLY):
        try:
            record = fastavro.schemaless_reader(io.BytesIO(data), schema, None)
        except Exception:  # noqa: BLE001 - best effort by design: the caller is already handling a failure
            continue
        if isinstance(record, dict) and isinstance(record.get("request_id"), str) and record["request_id"]:
            return RequestEnvelope(
                request_id=record["request_id"], source=record.get("source"), reply_to=record.get("reply_to")
            )
    return None


# --- SegmentResult -------------------------------------------------------------------------------------------------


def _mask_record(mask: MaskRecord) -> dict[str, Any]:
    # float()/int() so numpy scalars from the core neither upset fastavro nor leak into result_to_dict's JSON.
    return {
        "rle": {"size": [int(v) for v in mask.rle.size], "counts": str(mask.rle.counts)},
        "polygons": [[float(v) for v in polygon] for polygon in mask.polygons],
        "bbox": [float(v) for v in mask.bbox],
        "area": int(mask.area),
        "predicted_iou": float(mask.predicted_iou),
        "stability_score": float(mask.stability_score),
    }


def _result_record(msg: SegmentResultMessage) -> dict[str, Any]:
    return {
        "request_id": msg.request_id,
        "status": ResultStatus(msg.status).value,
        "image_sha256": msg.image_sha256,
        "width": msg.width,
        "height": msg.height,
        "inference_width": msg.inference_width,
        "inference_height": msg.inference_height,
        "model": None if msg.model is None else ModelName(msg.model).value,
        "fallback_reason": None if msg.fallback_reason is None else FallbackReason(msg.fallback_reason).value,
        "fallback_detail": msg.fallback_detail,
        "cached": bool(msg.cached),
        "masks": [_mask_record(mask) for mask in msg.masks],
        "timings_ms": {str(k): float(v) for k, v in msg.timings_ms.items()},
        "error": None if msg.error is None else {"code": msg.error.code, "message": msg.error.message},
        "worker_id": msg.worker_id,
        "source": msg.source,
        "created_at_ms": msg.created_at_ms,
        **_origin_record(msg.origin),
        "mask_prompt_indices": _prompt_indices(msg.masks),
    }


def _origin_record(origin: RequestOrigin | None) -> dict[str, Any]:
    """The request record's key and position as the result's four optional fields."""
    if origin is None:
        return {"request_key": None, "request_topic": None, "request_partition": None, "request_offset": None}
    return {
        "request_key": origin.key,
        "request_topic": origin.topic,
        "request_partition": origin.partition,
        "request_offset": origin.offset,
    }


def _origin_from_record(rec: dict[str, Any]) -> RequestOrigin | None:
    if rec.get("request_topic") is None:
        return None
    return RequestOrigin(rec.get("request_key"), rec["request_topic"], rec["request_partition"], rec["request_offset"])


def _prompt_indices(masks: Sequence[MaskRecord]) -> list[int | None] | None:
    """The parallel array of prompt indices; null when no mask answers a prompt (everything mode, no masks)."""
    indices = getattr(masks, "prompt_indices", None)  # a cache hit's masks carry theirs without being decoded
    if indices is not None:
        return list(indices) if any(i is not None for i in indices) else None
    found = [None if mask.prompt_index is None else int(mask.prompt_index) for mask in masks]
    return found if any(i is not None for i in found) else None


def _with_prompt_indices(masks: tuple[MaskRecord, ...], indices: list[int | None] | None) -> tuple[MaskRecord, ...]:
    if indices is None:
        return masks
    if len(indices) != len(masks):
        raise MalformedRequestError(f"mask_prompt_indices has {len(indices)} entries for {len(masks)} masks")
    return tuple(replace(mask, prompt_index=index) for mask, index in zip(masks, indices, strict=True))


def _mask_from_record(rec: dict[str, Any]) -> MaskRecord:
    size = rec["rle"]["size"]
    bbox = rec["bbox"]
    if len(size) != 2:
        raise MalformedRequestError(f"mask rle.size must be [height, width], got {len(size)} numbers")
    if len(bbox) != 4:
        raise MalformedRequestError(f"mask bbox must be [x, y, width, height], got {len(bbox)} numbers")
    return MaskRecord(
        rle=RLE(size=(size[0], size[1]), counts=rec["rle"]["counts"]),
        polygons=tuple(tuple(polygon) for polygon in rec["polygons"]),
        bbox=(bbox[0], bbox[1], bbox[2], bbox[3]),
        area=rec["area"],
        predicted_iou=rec["predicted_iou"],
        stability_score=rec["stability_score"],
    )


def _result_from_record(rec: dict[str, Any]) -> SegmentResultMessage:
    error = rec["error"]
    return SegmentResultMessage(
        request_id=rec["request_id"],
        status=_enum(ResultStatus, rec["status"], "status"),
        image_sha256=rec["image_sha256"],
        width=rec["width"],
        height=rec["height"],
        inference_width=rec["inference_width"],
        inference_height=rec["inference_height"],
        model=None if rec["model"] is None else _enum(ModelName, rec["model"], "model"),
        fallback_reason=None
        if rec["fallback_reason"] is None
        else _enum(FallbackReason, rec["fallback_reason"], "fallback_reason"),
        fallback_detail=rec["fallback_detail"],
        cached=rec["cached"],
        masks=_with_prompt_indices(
            tuple(_mask_from_record(mask) for mask in rec["masks"]), rec.get("mask_prompt_indices")
        ),
        timings_ms=dict(rec["timings_ms"]),
        error=None if error is None else ErrorInfo(code=error["code"], message=error["message"]),
        worker_id=rec["worker_id"],
        source=rec["source"],
        created_at_ms=_ms(rec["created_at_ms"]),
        origin=_origin_from_record(rec),
    )


def encode_result(msg: SegmentResultMessage) -> bytes:
    """Schemaless Avro of a result."""
    return _write(RESULT_SCHEMA, _result_record(msg))


def decode_result(data: bytes, reader_schema: Schema | None = None) -> SegmentResultMessage:
    """A result from its Avro bytes, written with today's schema or a later one that appended fields.

    ``reader_schema`` (parsed) lets a newer reader resolve today's records against its own schema; the writer
    schema is always today's :data:`RESULT_SCHEMA`. Fields the dataclass does not know are dropped. Raises
    :class:`MalformedRequestError` when the bytes cannot be read (the only error code there is for an
    unreadable message).
    """
    try:
        record = _read(data, RESULT_SCHEMA, "SegmentResult", reader_schema)
    except MalformedRequestError:
        # A record of the first version ends before the appended fields: read it as such, they become null.
        try:
            record = _read(data, _RESULT_V1_SCHEMA, "SegmentResult", reader_schema or RESULT_SCHEMA)
        except MalformedRequestError:
            pass
        else:
            return _convert("SegmentResult", _result_from_record, record)
        raise
    return _convert("SegmentResult", _result_from_record, record)


def result_to_dict(msg: SegmentResultMessage) -> dict[str, Any]:
    """The result as plain JSON types, shaped like the Avro record (enums as strings, tuples as lists).

    Non-finite floats stay floats: ``json.dumps`` writes them as NaN/Infinity unless told ``allow_nan=False``.
    """
    record = _result_record(msg)
    if record["request_key"] is not None:  # JSON has no bytes: UTF-8 text, undecodable bytes as lone surrogates
        record["request_key"] = record["request_key"].decode("utf-8", "surrogateescape")
    return record


def result_from_dict(record: dict[str, Any]) -> SegmentResultMessage:
    """The inverse of :func:`result_to_dict`: a result from its JSON form (what ``segpipe results --format json``
    prints), e.g. to draw it later with ``segpipe render``.

    Raises :class:`MalformedRequestError` when a field is missing or unusable (a result printed with
    ``--no-masks`` has no ``rle`` or ``polygons`` and cannot be read back).
    """
    if not isinstance(record, dict):
        raise MalformedRequestError(f"SegmentResult: expected a JSON object, got {type(record).__name__}")
    if isinstance(record.get("request_key"), str):
        record = {**record, "request_key": record["request_key"].encode("utf-8", "surrogateescape")}
    return _convert("SegmentResult", _result_from_record, record)


# --- DeadLetter ----------------------------------------------------------------------------------------------------


def _dead_letter_record(dl: DeadLetter) -> dict[str, Any]:
    return {
        "request_id": dl.request_id,
        "error": {"code": dl.error.code, "message": dl.error.message},
        "original_value": dl.original_value,
        "original_key": dl.original_key,
        "original_headers": [{"key": h.key, "value": h.value} for h in dl.original_headers],
        "topic": dl.topic,
        "partition": dl.partition,
        "offset": dl.offset,
        "worker_id": dl.worker_id,
        "failed_at_ms": dl.failed_at_ms,
    }


def _dead_letter_from_record(rec: dict[str, Any]) -> DeadLetter:
    return DeadLetter(
        request_id=rec["request_id"],
        error=ErrorInfo(code=rec["error"]["code"], message=rec["error"]["message"]),
        original_value=rec["original_value"],
        original_key=rec["original_key"],
        original_headers=tuple(Header(key=h["key"], value=h["value"]) for h in rec["original_headers"]),
        topic=rec["topic"],
        partition=rec["partition"],
        offset=rec["offset"],
        worker_id=rec["worker_id"],
        failed_at_ms=_ms(rec["failed_at_ms"]),
    )


def encode_dead_letter(dl: DeadLetter) -> bytes:
    """Schemaless Avro of a dead-letter record."""
    return _write(DEAD_LETTER_SCHEMA, _dead_letter_record(dl))


def decode_dead_letter(data: bytes, reader_schema: Schema | None = None) -> DeadLetter:
    """A dead-letter record from its Avro bytes; same evolution rules and errors as :func:`decode_result`."""
    record = _read(data, DEAD_LETTER_SCHEMA, "DeadLetter", reader_schema)
    return _convert("DeadLetter", _dead_letter_from_record, record)


__all__ = [
    "DEAD_LETTER_SCHEMA",
    "REQUEST_SCHEMA",
    "RESULT_SCHEMA",
    "decode_dead_letter",
    "decode_request",
    "decode_result",
    "encode_dead_letter",
    "encode_request",
    "encode_result",
    "peek_request_envelope",
    "result_from_dict",
    "result_to_dict",
    "schema_text",
]
