"""Wire messages of the pipeline: what travels on Kafka, as frozen dataclasses.

They reuse the core's types (Prompts, SegmentParams, MaskRecord, ...) so the worker hands a decoded request to the
core without copying, and the core's result becomes a message without re-shaping. The Avro mapping lives in
:mod:`schemas.avro`; the header-only ("bare") request path in :mod:`schemas.headers`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum

from pipeline.errors import SegmentationError
from pipeline.types import FallbackReason, MaskRecord, ModelName, Prompts, SegmentationResult, SegmentParams


def now_ms() -> int:
    """Wall-clock milliseconds since the Unix epoch: the unit of every ``*_at_ms`` field."""
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class SegmentRequest:
    """One image to segment (the input topic's message).

    ``image`` is the payload exactly as received (encoded image, base64 text or .npy bytes): decoding it is the
    core's job, so it is left out of ``repr`` to keep logs readable.
    """

    request_id: str
    image: bytes = field(repr=False)
    prompts: Prompts = field(default_factory=Prompts)
    params: SegmentParams = field(default_factory=SegmentParams)
    source: str | None = None
    reply_to: str | None = None
    submitted_at_ms: int = 0


@dataclass(frozen=True, slots=True)
class RequestEnvelope:
    """Addressing of a request that failed to decode or validate, so its error result still reaches the caller.

    Returned by :func:`schemas.avro.peek_request_envelope` and :func:`schemas.headers.peek_bare_envelope`.
    """

    request_id: str
    source: str | None = None
    reply_to: str | None = None


class ResultStatus(StrEnum):
    """Outcome of a request: ``ok`` carries masks, ``error`` carries an :class:`ErrorInfo`."""

    OK = "ok"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """A typed failure on the wire: the stable code of a :class:`pipeline.errors.SegmentationError` and its text."""

    code: str
    message: str

    @classmethod
    def from_error(cls, error: SegmentationError) -> ErrorInfo:
        """Carry a core error's code and message without parsing its text."""
        return cls(code=error.code, message=error.message)


@dataclass(frozen=True, slots=True)
class RequestOrigin:
    """Where a request came from on Kafka, echoed in its result so any client can match the two: the record's key
    (byte for byte) and its topic, partition and offset."""

    key: bytes | None
    topic: str
    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class SegmentResultMessage:
    """The answer to one request (the output topic's message).

    Build it with :meth:`ok` or :meth:`failure` rather than field by field: they keep the invariants that
    ``__post_init__`` checks (an ``ok`` result names its model and has no error; an ``error`` result has an error).
    """

    request_id: str
    status: ResultStatus
    image_sha256: str | None
    width: int | None
    height: int | None
    inference_width: int | None
    inference_height: int | None
    model: ModelName | None
    fallback_reason: FallbackReason | None
    fallback_detail: str | None
    cached: bool
    masks: Sequence[MaskRecord]  # a tuple; a cache hit's stay encoded until read (schemas.stored.EncodedMasks)
    timings_ms: dict[str, float]
    error: ErrorInfo | None
    worker_id: str
    source: str | None
    created_at_ms: int
    origin: RequestOrigin | None = None  # the request record's key and position; None when not made from one

    def __post_init__(self) -> None:
        """Refuse inconsistent results early: a consumer must be able to trust ``status``."""
        if self.status == ResultStatus.OK:
            if self.error is not None:
                raise ValueError("an ok result cannot carry an error")
            if self.model is None:
                raise ValueError("an ok result must name the model that produced it")
        elif self.status == ResultStatus.ERROR:
            if self.error is None:
                raise ValueError("an error result must carry an ErrorInfo")
        else:
            raise ValueError(f"unknown result status {self.status!r}")

    @classmethod
    def ok(
        cls,
        request_id: str,
        result: SegmentationResult,
        *,
        image_sha256: str | None,
        worker_id: str,
        cached: bool = False,
        source: str | None = None,
        timings_ms: Mapping[str, float] | None = None,
        created_at_ms: int | None = None,
    ) -> SegmentResultMessage:
        """A successful result from the core's output.

        ``timings_ms`` adds the worker's own stages (decode, queue wait, ...) over the core's; on a clash the
        worker's value wins. ``created_at_ms`` defaults to now.
        """
        timings = {str(k): float(v) for k, v in result.timings_ms.items()}
        timings.update({str(k): float(v) for k, v in (timings_ms or {}).items()})
        return cls(
            request_id=request_id,
            status=ResultStatus.OK,
            image_sha256=image_sha256,
            width=result.width,
            height=result.height,
            inference_width=result.inference_width,
            inference_height=result.inference_height,
            model=result.model,
            fallback_reason=result.fallback_reason,
            fallback_detail=result.fallback_detail,
            cached=cached,
            masks=tuple(result.masks),
            timings_ms=timings,
            error=None,
            worker_id=worker_id,
            source=source,
            created_at_ms=now_ms() if created_at_ms is None else created_at_ms,
        )

    @classmethod
    def failure(
        cls,
        request_id: str,
        error: ErrorInfo,
        *,
        worker_id: str,
        source: str | None = None,
        image_sha256: str | None = None,
        timings_ms: Mapping[str, float] | None = None,
        created_at_ms: int | None = None,
    ) -> SegmentResultMessage:
        """An error result: no masks, no model, no sizes; ``created_at_ms`` defaults to now."""
        return cls(
            request_id=request_id,
            status=ResultStatus.ERROR,
            image_sha256=image_sha256,
            width=None,
            height=None,
            inference_width=None,
            inference_height=None,
            model=None,
            fallback_reason=None,
            fallback_detail=None,
            cached=False,
            masks=(),
            timings_ms={str(k): float(v) for k, v in (timings_ms or {}).items()},
            error=error,
            worker_id=worker_id,
            source=source,
            created_at_ms=now_ms() if created_at_ms is None else created_at_ms,
        )

    def with_cache_hit(
        self,
        request_id: str,
        worker_id: str,
        source: str | None,
        timings_ms: Mapping[str, float] | None = None,
        created_at_ms: int | None = None,
        origin: RequestOrigin | None = None,
    ) -> SegmentResultMessage:
        """This stored result re-addressed to another request: same masks, model and sizes, ``cached=True``.

        The stored timings described the original inference, not this request, so they are replaced (not merged)
        by ``timings_ms``; ``created_at_ms`` defaults to now.
        """
        return replace(
            self,
            request_id=request_id,
            worker_id=worker_id,
            source=source,
            cached=True,
            timings_ms={str(k): float(v) for k, v in (timings_ms or {}).items()},
            created_at_ms=now_ms() if created_at_ms is None else created_at_ms,
            origin=origin,
        )

    def with_origin(self, origin: RequestOrigin | None) -> SegmentResultMessage:
        """This result tagged with the request record it answers."""
        return replace(self, origin=origin)


@dataclass(frozen=True, slots=True)
class Header:
    """One Kafka header; a tuple of these (not a dict) because Kafka lets a key repeat."""

    key: str
    value: bytes | None


def headers_from_kafka(pairs: Iterable[tuple[str, bytes | str | None]] | None) -> tuple[Header, ...]:
    """Kafka clients hand headers over as ``(key, value)`` pairs (or ``None``); keep them all, in order.

    A ``str`` value (some clients allow one on produce) is stored as its UTF-8 bytes.
    """
    return tuple(Header(key, value.encode("utf-8") if isinstance(value, str) else value) for key, value in pairs or ())


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record the worker gave up on, with the original Kafka record kept byte for byte for inspection or replay."""

    request_id: str | None
    error: ErrorInfo
    original_value: bytes | None = field(repr=False)
    original_key: bytes | None
    original_headers: tuple[Header, ...]
    topic: str
    partition: int
    offset: int
    worker_id: str
    failed_at_ms: int
