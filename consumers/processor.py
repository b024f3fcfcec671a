"""What a worker does with records, with no Kafka in sight: request -> image -> dedup -> segment -> result.

The Kafka loop (:mod:`consumers.worker`) hands over :class:`InboundRecord` values and publishes the
:class:`Outcome` it gets back. Two paths:

- the **fast path**, :meth:`RequestProcessor.prepare_batch`, for a batch of records: parse each request and answer
  every repeat of a stored payload from the cache (one payload hash each, two Redis round trips per batch, the stored
  result spliced rather than re-encoded: see :mod:`schemas.stored`). No image is decoded.
- the **model path**, :meth:`RequestProcessor.prepare` then :meth:`RequestProcessor.segment`, for the rest: decode,
  check, look up / claim the pixel-level key (another encoding of the same image, or a peer computing it now), and
  run the model a micro-batch at a time.
 Every failure becomes an error result plus a dead-letter record carrying the original
payload and the reason: bad input never raises out of here (the ok/err split of a stream processor).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from consumers.dedup import DedupCache, answered_key, dedup_key, model_fingerprint, payload_key
from pipeline.errors import ImageTooLargeError, InvalidImageError, MalformedRequestError, SegmentationError
from pipeline.image_io import ImageLimits, decode_image, image_sha256
from pipeline.segmenter import Segmenter, resolve_params, validate_prompts
from pipeline.timing import ms_since
from pipeline.types import SegmentationResult, SegmentParams
from schemas import (
    DeadLetter,
    ErrorInfo,
    Header,
    RequestOrigin,
    SegmentRequest,
    SegmentResultMessage,
    encode_result,
    headers_from_kafka,
    is_avro_request,
    now_ms,
    parse_bare_request,
    peek_bare_envelope,
    peek_request_envelope,
)
from schemas.headers import REQUEST_ID_HEADER
from schemas.registry import PLAIN, WireCodec, looks_registry_framed
from schemas.stored import StoredResult, encode_stored

log = logging.getLogger(__name__)


class InternalError(SegmentationError):
    """A bug or an unexpected failure inside the worker: reported per request instead of killing the worker."""

    code = "internal_error"


@dataclass(frozen=True, slots=True)
class InboundRecord:
    """A consumed record, as plain data (the Kafka layer copies it out of confluent-kafka's Message)."""

    value: bytes | None
    key: bytes | None
    headers: tuple[tuple[str, bytes | None], ...]
    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None = None

    @property
    def fallback_request_id(self) -> str:
        """The request id when the record carries no ``segpipe-request-id`` header (and, for Avro, no readable
        body): its Kafka key when that is UTF-8 text of 1..256 bytes, else ``topic:partition:offset``."""
        key = self.key
        if key and len(key) <= MAX_KEY_REQUEST_ID_BYTES:
            try:
                return key.decode("utf-8")
            except UnicodeDecodeError:
                pass
        return f"{self.topic}:{self.partition}:{self.offset}"

    @property
    def header_request_id(self) -> str | None:
        """The ``segpipe-request-id`` header, when present, UTF-8 and not empty: it names the request whatever the
        value holds, so even a record whose body cannot be read is answered under the caller's id."""
        for key, value in self.headers:
            if isinstance(key, str) and key.lower() == REQUEST_ID_HEADER and value:
                try:
                    return bytes(value).decode("utf-8")
                except UnicodeDecodeError:
                    return None
        return None

    @property
    def origin(self) -> RequestOrigin:
        return RequestOrigin(self.key, self.topic, self.partition, self.offset)


#: Longest Kafka key used as a request id (longer keys are hashes or payloads, not names): topic:partition:offset.
MAX_KEY_REQUEST_ID_BYTES = 256


@dataclass(frozen=True, slots=True)
class Outcome:
    """What to publish for one record: always a result; a dead letter too when the request failed."""

    record: InboundRecord
    result: SegmentResultMessage
    result_bytes: bytes
    reply_to: str | None
    dead_letter: DeadLetter | None = None
    submitted_at_ms: int = 0  # when the producer sent the request (0: unknown), for end-to-end latency


@dataclass(frozen=True, slots=True)
class Answered:
    """A redelivered record whose result this group already delivered: its offset moves on, nothing is published."""

    record: InboundRecord


@dataclass(frozen=True, slots=True)
class ParsedRequest:
    """A record whose request parsed but that the cache did not answer by its payload: it needs the model path."""

    record: InboundRecord
    request: SegmentRequest
    params: SegmentParams
    payload_key: str
    started: float  # perf_counter when its handling began
    parsed_at: float  # perf_counter when parsing ended: from here it may wait in the worker's model-path backlog


@dataclass(slots=True)
class PendingSegmentation:
    """A request that passed every check and now needs a model (or another worker's stored result)."""

    record: InboundRecord
    request: SegmentRequest
    image: np.ndarray
    image_sha256: str
    params: SegmentParams
    cache_key: str
    timings_ms: dict[str, float] = field(default_factory=dict)
    payload_key: str | None = None
    backlog_ms: float = 0.0  # waited for a model-path slot before decoding: counted in the "queue" timing
    enqueued_at: float = field(default_factory=time.perf_counter)


class RequestProcessor:
    """Turns records into outcomes; thread-safe (decode/dedup run on a pool, segmentation on one thread)."""

    def __init__(
        self,
        segmenter: Segmenter,
        cache: DedupCache | None,
        *,
        worker_id: str,
        codec: WireCodec = PLAIN,
        max_record_bytes: int | None = None,
        scope: str | None = None,
    ) -> None:
        """``max_record_bytes`` (the worker passes KAFKA_MESSAGE_MAX_BYTES) is the largest record accepted, and the
        largest dead letter this worker can publish: bigger records are refused unread and referenced, not copied."""
        self.segmenter = segmenter
        self.cache = cache
        self.worker_id = worker_id
        self.codec = codec
        self.max_record_bytes = max_record_bytes
        self.limits = ImageLimits.from_settings(segmenter.settings)
        self.fingerprint = model_fingerprint(segmenter.settings)
        self.dedup_wait_s = cache.settings.max_wait if cache is not None else 0.0
        # The consumer group: records it delivered are marked so, and skipped when redelivered (None: not marked).
        self.scope = scope

    def answered_key(self, record: InboundRecord) -> str | None:
        if self.scope is None or self.cache is None:
            return None
        return answered_key(self.scope, record.topic, record.partition, record.offset, record.timestamp_ms)

    def mark_answered(self, records: Sequence[InboundRecord]) -> None:
        """Remember these delivered records (see :class:`Answered`); Redis round trip, so off the poll loop."""
        if self.cache is not None:
            self.cache.mark_answered([key for record in records if (key := self.answered_key(record)) is not None])

    # -- stage 1a: the fast path (a batch of records, on the decode pool) -------------------------------------
    def prepare_batch(self, records: Sequence[InboundRecord]) -> list[Outcome | ParsedRequest | Answered]:
        """Parse every record and answer the repeats of stored payloads; one item per record, in order: a final
        outcome (a cache hit, or a request that failed to parse), :class:`Answered` for a record this group already
        answered, or a :class:`ParsedRequest` for :meth:`prepare`."""
        if self.cache is None:
            return [self._parse_checked(record) for record in records]
        keys = [self.answered_key(record) for record in records]
        done = iter(self.cache.answered([key for key in keys if key is not None]))
        items: list[Outcome | ParsedRequest | Answered] = [
            Answered(record) if key is not None and next(done) else self._parse_checked(record)
            for record, key in zip(records, keys, strict=True)
        ]
        parsed = [(index, item) for index, item in enumerate(items) if isinstance(item, ParsedRequest)]
        lookup_started = time.perf_counter()
        stored = self.cache.lookup_payloads([item.payload_key for _, item in parsed])
        lookup_ms = ms_since(lookup_started)
        for (index, item), value in zip(parsed, stored, strict=True):
            if value is not None:
                timings = {"decode": (lookup_started - item.started) * 1000.0, "dedup": lookup_ms}
                hit = stored_outcome(
                    item.record, item.request, value, timings, item.payload_key, worker_id=self.worker_id
                )
                if hit is not None:
                    items[index] = hit
        return items

    def _parse_checked(self, record: InboundRecord) -> Outcome | ParsedRequest:
        started = time.perf_counter()
        size = len(record.value or b"")
        if self.max_record_bytes is not None and size > self.max_record_bytes:
            # The broker took it (its limit is larger than ours), but we do not handle records this big.
            limit = self.max_record_bytes
            too_large = ImageTooLargeError(f"record value is {size:,} bytes, over KAFKA_MESSAGE_MAX_BYTES={limit:,}")
            return self.failure(record, too_large, started=started)
        try:
            request = parse_request(record, self.codec)
        except SegmentationError as exc:
            return self.failure(record, exc, started=started)
        try:
            params = resolve_params(request.params, self.segmenter.settings)
        except SegmentationError as exc:
            return self.failure(record, exc, request=request, started=started)
        alias = payload_key(request.image, request.prompts, params, self.fingerprint)
        return ParsedRequest(record, request, params, alias, started, time.perf_counter())

    # -- stage 1b: the model path's preparation (one record, on the decode pool) -------------------------------
    def prepare(self, item: InboundRecord | ParsedRequest) -> Outcome | PendingSegmentation:
        """Decode, check and look up the cache by pixels. Returns a final outcome or work for the model.

        A bare :class:`InboundRecord` goes through the fast path first (a batch of one)."""
        if isinstance(item, InboundRecord):
            first = self.prepare_batch([item])[0]
            if isinstance(first, Outcome):
                return first
            item = first
        record, request, params, started = item.record, item.request, item.params, item.started
        decode_started = time.perf_counter()
        try:
            image = decode_image(request.image, limits=self.limits)
            validate_prompts(request.prompts, image.shape[1], image.shape[0])
            digest = image_sha256(image)
        except InvalidImageError as exc:
            return self.failure(
                record, explain_invalid_image(record, exc, self.codec), request=request, started=started
            )
        except SegmentationError as exc:
            return self.failure(record, exc, request=request, started=started)
        # The wait between parsing and decoding (the worker's backlog) is queueing, not decoding.
        timings = {"decode": (item.parsed_at - started) * 1000.0 + ms_since(decode_started)}
        key = dedup_key(digest, request.prompts, params, self.fingerprint)
        pending = PendingSegmentation(record, request, image, digest, params, key, timings, item.payload_key)
        pending.backlog_ms = (decode_started - item.parsed_at) * 1000.0
        if self.cache is None:
            return pending
        lookup_started = time.perf_counter()
        stored = self.cache.lookup_or_claim(key, self.worker_id, timeout=self.dedup_wait_s)
        timings["dedup"] = ms_since(lookup_started)
        if stored is not None:
            hit = stored_outcome(record, request, stored, timings, key, worker_id=self.worker_id)
            if hit is not None:
                # Another encoding of a stored image, or a peer's result we waited for: next time, by payload.
                self.cache.alias(item.payload_key, key)
                return hit
        pending.enqueued_at = time.perf_counter()
        return pending

    # -- stage 2: the model (runs on the inference thread, a micro-batch at a time) -----------------------------
    def segment(self, batch: list[PendingSegmentation], emit: Callable[[Outcome], None] | None = None) -> list[Outcome]:
        """Run one micro-batch through the engine; one outcome per pending request, in order.

        ``emit`` receives each outcome as soon as it is final (FastSAM answers before the batch's SAM2 fallbacks).
        """
        started = time.perf_counter()
        for pending in batch:
            pending.timings_ms["queue"] = pending.backlog_ms + (started - pending.enqueued_at) * 1000.0
        outcomes: list[Outcome | None] = [None] * len(batch)

        def ready(index: int, result: SegmentationResult | SegmentationError) -> None:
            outcomes[index] = self._settle(batch[index], result, len(batch))
            if emit is not None:
                emit(outcomes[index])  # type: ignore[arg-type]

        try:
            self.segmenter.segment_batch([(p.image, p.request.prompts, p.params) for p in batch], on_ready=ready)
        except Exception as exc:  # the engine reports per item; this is the last line of defence
            log.exception("segment_batch raised")
            for index, outcome in enumerate(outcomes):
                if outcome is None:
                    ready(index, InternalError(f"{type(exc).__name__}: {exc}"))
        return outcomes  # type: ignore[return-value]

    def _settle(
        self, pending: PendingSegmentation, result: SegmentationResult | SegmentationError, batch_size: int
    ) -> Outcome:
        """Turn the engine's answer into an outcome, and store (or release) the dedup entry."""
        if isinstance(result, SegmentationError):
            if self.cache is not None:
                self.cache.release(pending.cache_key, self.worker_id)
            return self.failure(pending.record, result, request=pending.request, digest=pending.image_sha256)
        message = SegmentResultMessage.ok(
            pending.request.request_id,
            result,
            image_sha256=pending.image_sha256,
            worker_id=self.worker_id,
            source=pending.request.source,
            timings_ms={**pending.timings_ms, "batch_size": float(batch_size)},
        ).with_origin(pending.record.origin)
        outcome = self._outcome(pending.record, message, pending.request)
        if self.cache is not None:  # the origin is per request: the stored entry leaves it out
            aliases = (pending.payload_key,) if pending.payload_key else ()
            self.cache.put(pending.cache_key, encode_stored(message), self.worker_id, aliases=aliases)
        return outcome

    def abandon(self, pending: PendingSegmentation) -> None:
        """Drop a request without answering it (its partition was handed back to another worker, which will):
        release its dedup claim so the new owner computes it at once instead of waiting for this one."""
        if self.cache is not None:
            self.cache.release(pending.cache_key, self.worker_id)

    # -- results and failures ------------------------------------------------------------------------------------
    def _outcome(self, record: InboundRecord, message: SegmentResultMessage, request: SegmentRequest) -> Outcome:
        return Outcome(
            record, message, encode_result(message), request.reply_to, submitted_at_ms=request.submitted_at_ms
        )

    def failure(
        self,
        record: InboundRecord,
        error: SegmentationError,
        *,
        request: SegmentRequest | None = None,
        digest: str | None = None,
        started: float | None = None,
    ) -> Outcome:
        """An error result addressed as well as the record allows, plus its dead-letter record."""
        return failure_outcome(
            record,
            error,
            worker_id=self.worker_id,
            max_record_bytes=self.max_record_bytes,
            request=request,
            digest=digest,
            started=started,
        )


# -- reading requests and serving stored results: no processor state beyond the codec and worker id, so
# module functions keep RequestProcessor to the stages themselves.
def parse_request(record: InboundRecord, codec: WireCodec) -> SegmentRequest:
    """The request a record carries: an Avro body (its request id overridden by the header) or a bare image."""
    if is_avro_request(record.headers):
        if not record.value:
            raise MalformedRequestError("Avro request record has no value")
        request = codec.decode_request(record.value, record.topic)
        header = record.header_request_id
        return request if header is None or header == request.request_id else replace(request, request_id=header)
    request = parse_bare_request(record.value, record.headers, fallback_request_id=record.fallback_request_id)
    if request.submitted_at_ms == 0 and record.timestamp_ms:
        request = replace(request, submitted_at_ms=record.timestamp_ms)
    return request


def explain_invalid_image(record: InboundRecord, error: InvalidImageError, codec: WireCodec) -> SegmentationError:
    """A bare record whose value is not an image may be an Avro request sent without its format header: say so
    instead of "not a supported image" (checked only on this failure path)."""
    if is_avro_request(record.headers) or not record.value:
        return error
    try:
        codec.decode_request(record.value, record.topic)
    except SegmentationError:
        if looks_registry_framed(record.value) and not codec.uses_registry:
            return MalformedRequestError(
                f"{error.message}; the value starts with byte 0, like Schema Registry framing (magic byte 0 + "
                "4-byte schema id): set SCHEMA_REGISTRY_URL on the worker, and the segpipe-format: avro-v1 header"
            )
        return error
    return MalformedRequestError(
        "the record value is an Avro SegmentRequest but the record has no segpipe-format: avro-v1 header: "
        "add the header (without it the value is read as a bare image)"
    )


def stored_outcome(
    record: InboundRecord,
    request: SegmentRequest,
    stored: bytes,
    timings: dict[str, float],
    key: str,
    *,
    worker_id: str,
) -> Outcome | None:
    """A cache hit's outcome: the stored entry spliced under this request's id and origin (None: unreadable)."""
    try:
        entry = StoredResult.parse(stored)
        message, data = entry.hit(
            request.request_id, worker_id, request.source, timings_ms=timings, origin=record.origin
        )
    except SegmentationError as exc:  # a corrupt or foreign entry: recompute rather than serve it
        log.warning("ignoring unreadable cache entry %s: %s", key, exc)
        return None
    return Outcome(record, message, data, request.reply_to, submitted_at_ms=request.submitted_at_ms)


_DEAD_LETTER_OVERHEAD = 64 * 1024  # the dead letter's own fields (error message, ids) and record framing


def failure_outcome(
    record: InboundRecord,
    error: SegmentationError,
    *,
    worker_id: str,
    max_record_bytes: int | None,
    request: SegmentRequest | None = None,
    digest: str | None = None,
    started: float | None = None,
) -> Outcome:
    """An error result addressed as well as the record allows, plus its dead-letter record."""
    if request is not None:
        request_id, source, reply_to = request.request_id, request.source, request.reply_to
    else:
        envelope = None
        try:
            if is_avro_request(record.headers):
                envelope = peek_request_envelope(record.value or b"")
            else:
                envelope = peek_bare_envelope(record.headers, fallback_request_id=record.fallback_request_id)
        except Exception:  # noqa: BLE001 - addressing is best effort; the key or position always works
            envelope = None
        # The header wins even over an unreadable body; then the body's own id; then the key or position.
        request_id = record.header_request_id or (envelope.request_id if envelope else record.fallback_request_id)
        source = envelope.source if envelope else None
        reply_to = envelope.reply_to if envelope else None
    info = ErrorInfo.from_error(error)
    original_value, original_key, original_headers = record.value, record.key, headers_from_kafka(record.headers)
    if not _fits_dead_letter(max_record_bytes, original_value, original_key, original_headers):
        # A dead letter must itself fit in a record this worker may produce, or publishing it would fail for
        # ever; the original stays in the input topic, where topic/partition/offset below point.
        size = len(original_value or b"")
        original_value = None
        if not _fits_dead_letter(max_record_bytes, None, original_key, original_headers):
            original_key, original_headers = None, ()
        info = ErrorInfo(
            info.code,
            f"{info.message} (original value of {size:,} bytes not copied: too large for a dead letter; "
            f"it is at {record.topic}:{record.partition}@{record.offset})",
        )
    timings = {"decode": ms_since(started)} if started is not None else {}
    message = SegmentResultMessage.failure(
        request_id, info, worker_id=worker_id, source=source, image_sha256=digest, timings_ms=timings
    ).with_origin(record.origin)
    dead_letter = DeadLetter(
        request_id=request_id,
        error=info,
        original_value=original_value,
        original_key=original_key,
        original_headers=original_headers,
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        worker_id=worker_id,
        failed_at_ms=now_ms(),
    )
    log.info("request %s failed: %s: %s", request_id, info.code, info.message, extra={"request_id": request_id})
    submitted = request.submitted_at_ms if request is not None else (record.timestamp_ms or 0)
    return Outcome(record, message, encode_result(message), reply_to, dead_letter, submitted_at_ms=submitted)


def _fits_dead_letter(
    max_record_bytes: int | None, value: bytes | None, key: bytes | None, headers: tuple[Header, ...]
) -> bool:
    """Whether a dead letter carrying this much of the original still fits in a record this worker may produce."""
    if max_record_bytes is None:
        return True
    size = len(value or b"") + len(key or b"") + sum(len(h.key) + len(h.value or b"") for h in headers)
    return size + _DEAD_LETTER_OVERHEAD <= max_record_bytes
