"""Publish segmentation requests to the input topic, and know for certain which ones the broker accepted.

:class:`SegmentationProducer` turns an image (encoded bytes, base64 text, a numpy array or a file) plus optional
prompts and parameters into one Kafka record keyed by its request id, either as an Avro ``SegmentRequest`` (the
default) or as a *bare* record (image as value, parameters as ``segpipe-*`` headers, the form kcat or a Java client
would send). Sending is asynchronous; :meth:`SegmentationProducer.flush` waits for every delivery report and raises
:class:`PublishError` naming the requests that did not make it, so a caller never assumes a lost request was sent.

Everything that can be checked on the client is checked before sending (payload size against
``KAFKA_MESSAGE_MAX_BYTES``, prompt shapes, parameter types, the model name): a mistake fails here, at once, rather
than as an error result from a worker later. Value ranges (conf in [0, 1], points inside the image...) are left to
the worker, which is the one authority on them for every client.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import numpy as np
from confluent_kafka import KafkaError, Message, Producer
from tqdm import tqdm

from pipeline.errors import InvalidImageError, InvalidParametersError
from pipeline.image_io import ImageLimits, decode_image
from pipeline.types import Prompts, SegmentParams
from schemas import SegmentRequest, now_ms, prompts_from_lists, request_headers
from schemas.headers import (
    BOXES_HEADER,
    POINT_LABELS_HEADER,
    POINTS_HEADER,
    REPLY_TO_HEADER,
    REQUEST_ID_HEADER,
    SOURCE_HEADER,
    param_headers,
)
from schemas.registry import WireCodec
from segpipe.config import KafkaSettings
from segpipe.kafka import make_producer

__all__ = [
    "IMAGE_EXTENSIONS",
    "RECORD_OVERHEAD_BYTES",
    "Delivery",
    "Failure",
    "PublishError",
    "SegmentationProducer",
]

log = logging.getLogger(__name__)

#: File suffixes (lower case) that :meth:`SegmentationProducer.publish_directory` picks up.
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".npy"})

#: Bytes kept free under ``message.max.bytes`` for Kafka's record and batch framing, so a payload that passes the
#: client-side check is never refused by librdkafka or the broker for a few bytes of overhead.
RECORD_OVERHEAD_BYTES = 512

_DATA_URI = re.compile(r"^\s*data:[^,]*?;base64,", re.IGNORECASE)
_BASE64_TEXT = re.compile(r"[A-Za-z0-9+/=_\-\s]+")
_BUFFER_FULL_POLL_S = 0.1


@dataclass(frozen=True, slots=True)
class Delivery:
    """Where the broker stored one request (from its delivery report)."""

    request_id: str
    topic: str
    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class Failure:
    """A request that was not stored: failed delivery, or no delivery report before a flush timed out."""

    request_id: str
    reason: str


class PublishError(RuntimeError):
    """Some requests were not delivered; ``failures`` says which and why (the others were delivered)."""

    def __init__(self, failures: Iterable[Failure]) -> None:
        self.failures: tuple[Failure, ...] = tuple(failures)
        shown = "; ".join(f"{f.request_id}: {f.reason}" for f in self.failures[:5])
        more = f" (and {len(self.failures) - 5} more)" if len(self.failures) > 5 else ""
        super().__init__(f"{len(self.failures)} request(s) not delivered: {shown}{more}")

    @property
    def request_ids(self) -> list[str]:
        """Ids of the requests that were not delivered, in the order they failed."""
        return [f.request_id for f in self.failures]


ImageInput = bytes | bytearray | memoryview | str | np.ndarray | os.PathLike[str]


class SegmentationProducer:
    """Publishes segmentation requests; use it as a context manager so that leaving the block flushes.

    ``settings`` default to :class:`KafkaSettings` from the environment; ``topic`` to ``KAFKA_INPUT_TOPIC``.
    ``bare=True`` publishes bare records (see :mod:`schemas.headers`) instead of Avro. A ``producer`` passed in is
    used as is (its configuration is the caller's) and is not closed by :meth:`close`.

    ``keep_history=False`` is for long-running services (the HTTP gateway): every delivery report would otherwise
    be kept for :attr:`deliveries` and :meth:`flush` for the life of the process. Without history a caller learns
    each request's outcome from :meth:`publish`'s ``on_delivery`` callback, and :meth:`flush` reports only the
    requests still without a report.

    Delivery reports arrive through librdkafka callbacks served by ``poll``/``flush`` in the calling thread; the
    bookkeeping is locked, so publishing from several threads is safe, but one flush at a time is expected.
    """

    def __init__(
        self,
        settings: KafkaSettings | None = None,
        *,
        topic: str | None = None,
        bare: bool = False,
        producer: Producer | None = None,
        codec: WireCodec | None = None,
        keep_history: bool = True,
        key_by: Literal["image", "request_id"] = "image",
    ) -> None:
        self.settings = settings if settings is not None else KafkaSettings()
        # "image": records keyed by the image's hash (image_key), so repeats of an image land on one partition, and
        # so one worker: its SAM2 embedding cache and in-flight dedup see them. "request_id": the old key.
        self.key_by = key_by
        self.keep_history = keep_history
        # Avro requests use the Schema Registry wire format when SCHEMA_REGISTRY_URL is set (see schemas.registry).
        self.codec = codec if codec is not None else WireCodec()
        self.topic = topic or self.settings.input_topic
        self.bare = bare
        self._owns_producer = producer is None
        self._producer: Producer | None = producer if producer is not None else make_producer(self.settings)
        self._lock = threading.Lock()
        self._pending: Counter[str] = Counter()
        self._deliveries: list[Delivery] = []
        self._failures: list[Failure] = []
        # Index into _deliveries / _failures of what the last flush already reported.
        self._flushed_deliveries = 0
        self._flushed_failures = 0

    # --- publishing ------------------------------------------------------------------------------------------------

    def publish(
        self,
        image: ImageInput,
        *,
        points: Any = None,
        point_labels: Any = None,
        boxes: Any = None,
        params: SegmentParams | None = None,
        request_id: str | None = None,
        source: str | None = None,
        reply_to: str | None = None,
        on_delivery: Callable[[Delivery | Failure], None] | None = None,
    ) -> str:
        """Queue one request and return its id; delivery is confirmed by :meth:`flush`. The record key is
        :func:`image_key` of the payload (``key_by="request_id"``: the id).

        ``on_delivery``, when given, is called with this request's :class:`Delivery` or :class:`Failure` from the
        thread that serves the delivery report (``poll``/``flush``): it must be quick and must not raise.

        ``image``: ``bytes`` are sent as is (an encoded image or .npy bytes); ``str`` is base64 text (optionally a
        ``data:`` URI), sent as its UTF-8 bytes; a numpy ``uint8`` array is sent as ``.npy`` bytes; a
        :class:`~pathlib.Path` sends the file's bytes and names the request's ``source`` after the file.

        Raises ``ValueError`` for an empty, malformed or oversized payload (over ``KAFKA_MESSAGE_MAX_BYTES`` minus
        :data:`RECORD_OVERHEAD_BYTES`), :class:`~pipeline.errors.InvalidPromptError` for badly shaped prompts and
        :class:`~pipeline.errors.InvalidParametersError` for an unknown model or a parameter of the wrong type:
        the same typed errors a worker would report, raised before anything is sent.
        """
        if self._producer is None:
            raise RuntimeError("this SegmentationProducer is closed")
        payload, default_source = _payload(image)
        if source is None:
            source = default_source
        if request_id is None:
            request_id = uuid.uuid4().hex
        if not isinstance(request_id, str) or not request_id:
            raise ValueError(f"request_id must be a non-empty string, got {request_id!r}")
        prompts = prompts_from_lists(_listify(points), _listify(point_labels), _listify(boxes))
        params = _checked_params(params if params is not None else SegmentParams())

        key = image_key(payload) if self.key_by == "image" else request_id.encode("utf-8")
        if self.bare:
            value = payload
            headers = _bare_headers(request_id, prompts, params, source, reply_to)
        else:
            request = SegmentRequest(
                request_id=request_id,
                image=payload,
                prompts=prompts,
                params=params,
                source=source,
                reply_to=reply_to,
                submitted_at_ms=now_ms(),
            )
            value = self.codec.encode_request(request, self.topic)
            headers = request_headers(request)
        self._check_size(request_id, key, value, headers)
        self._produce(request_id, key, value, headers, on_delivery)
        return request_id

    def publish_files(
        self, paths: Iterable[str | os.PathLike[str]], *, progress: bool = False, **kwargs: Any
    ) -> list[str]:
        """Publish each file as its own request (same prompts and parameters for all) and return the ids in order.

        ``kwargs`` are :meth:`publish`'s keywords, except ``request_id``: every file gets a fresh one.
        """
        if "request_id" in kwargs:
            raise ValueError("request_id names a single request; publish_files gives every file its own")
        items = [(Path(path), None) for path in paths]
        return self._publish_paths(items, progress=progress, **kwargs)

    def publish_directory(
        self,
        directory: str | os.PathLike[str],
        *,
        recursive: bool = False,
        progress: bool = False,
        **kwargs: Any,
    ) -> list[str]:
        """Publish every image file (:data:`IMAGE_EXTENSIONS`) of a directory, sorted by path; return the ids.

        Other files are skipped. Each request's ``source`` is the file's path relative to ``directory`` (just the
        name unless ``recursive``), so same-named files in different sub-folders stay distinguishable.
        """
        if "request_id" in kwargs:
            raise ValueError("request_id names a single request; publish_directory gives every file its own")
        root = Path(directory)
        if not root.is_dir():
            raise NotADirectoryError(f"not a directory: {root}")
        source = kwargs.pop("source", None)
        items = [(path, source or path.relative_to(root).as_posix()) for path in image_files(root, recursive=recursive)]
        return self._publish_paths(items, progress=progress, **kwargs)

    def _publish_paths(self, items: list[tuple[Path, str | None]], *, progress: bool, **kwargs: Any) -> list[str]:
        ids: list[str] = []
        source_kwarg = kwargs.pop("source", None)
        for path, source in tqdm(items, desc="publishing", unit="img", disable=not progress):
            ids.append(self.publish(path, source=source or source_kwarg, **kwargs))
        return ids

    # --- delivery --------------------------------------------------------------------------------------------------

    def flush(self, timeout: float = 30.0) -> list[Delivery]:
        """Wait up to ``timeout`` s for every queued request's delivery report; return those delivered since the
        previous flush.

        Raises :class:`PublishError` listing the requests that failed since the previous flush and those still
        without a report (they stay queued: a later flush may still see them delivered).
        """
        producer = self._producer
        if producer is not None:
            producer.flush(timeout)
        with self._lock:
            delivered = self._deliveries[self._flushed_deliveries :]
            failed = self._failures[self._flushed_failures :]
            self._flushed_deliveries = len(self._deliveries)
            self._flushed_failures = len(self._failures)
            waiting = [
                Failure(request_id, f"no delivery report within {timeout:g} s (still queued)")
                for request_id, count in self._pending.items()
                for _ in range(count)
            ]
        if failed or waiting:
            raise PublishError([*failed, *waiting])
        return delivered

    def close(self, timeout: float = 30.0) -> list[Delivery]:
        """Flush, then release the client; this object cannot publish afterwards. Idempotent.

        A client this object created has what is still queued after ``timeout`` purged (reported as failed in the
        :class:`PublishError`) rather than waited for; a client passed in is left as it is, queue included.
        """
        producer = self._producer
        if producer is None:
            return self.flush(0)
        try:
            producer.flush(timeout)
            if self._owns_producer and len(producer) > 0:
                producer.purge()
                producer.flush(0)  # serves the purged messages' delivery reports
            return self.flush(0)
        finally:
            self._producer = None
            if self._owns_producer:
                producer.close()

    @property
    def deliveries(self) -> list[Delivery]:
        """Every delivery reported so far, in report order."""
        with self._lock:
            return list(self._deliveries)

    @property
    def failures(self) -> list[Failure]:
        """Every failed delivery reported so far (requests merely still queued are not failures yet)."""
        with self._lock:
            return list(self._failures)

    @property
    def in_flight(self) -> int:
        """Requests queued and not yet reported delivered or failed."""
        with self._lock:
            return sum(self._pending.values())

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Flush and close; when the block already raised, a PublishError is logged rather than masking it."""
        if exc_type is None:
            self.close()
            return
        try:
            self.close()
        except PublishError as error:
            log.error("while handling %s: %s", exc_type.__name__, error)

    # --- internals -------------------------------------------------------------------------------------------------

    def _check_size(self, request_id: str, key: bytes, value: bytes, headers: list[tuple[str, bytes]]) -> None:
        """Refuse what librdkafka or the broker would refuse anyway, but with a message saying what to change."""
        size = len(key) + len(value) + sum(len(k) + len(v) for k, v in headers)
        limit = self.settings.message_max_bytes - RECORD_OVERHEAD_BYTES
        if size > limit:
            raise ValueError(
                f"request {request_id}: the message would be {size} bytes, over the limit of {limit} bytes "
                f"(KAFKA_MESSAGE_MAX_BYTES={self.settings.message_max_bytes} minus {RECORD_OVERHEAD_BYTES} bytes of "
                "record overhead); send a smaller image or raise KAFKA_MESSAGE_MAX_BYTES (the broker's "
                "message.max.bytes and the topic's max.message.bytes must allow it too)"
            )

    def _produce(
        self,
        request_id: str,
        key: bytes,
        value: bytes,
        headers: list[tuple[str, bytes]],
        callback: Callable[[Delivery | Failure], None] | None = None,
    ) -> None:
        """Hand the record to librdkafka, waiting (and serving delivery reports) while its queue is full."""
        assert self._producer is not None
        with self._lock:
            self._pending[request_id] += 1
        try:
            while True:
                try:
                    self._producer.produce(
                        self.topic,
                        value=value,
                        key=key,
                        headers=headers,
                        on_delivery=partial(self._on_delivery, request_id, callback),
                    )
                    break
                except BufferError:
                    # Queue full: serving delivery reports frees room; undeliverable messages eventually time out
                    # (message.timeout.ms), so this wait is bounded.
                    self._producer.poll(_BUFFER_FULL_POLL_S)
        except BaseException:
            with self._lock:
                self._pending[request_id] -= 1
                if self._pending[request_id] <= 0:
                    del self._pending[request_id]
            raise
        self._producer.poll(0)

    def _on_delivery(
        self,
        request_id: str,
        callback: Callable[[Delivery | Failure], None] | None,
        err: KafkaError | None,
        msg: Message,
    ) -> None:
        outcome: Delivery | Failure
        if err is None:
            outcome = Delivery(request_id, msg.topic(), msg.partition(), msg.offset())
        else:
            outcome = Failure(request_id, f"{err.name()}: {err.str()}")
        with self._lock:
            self._pending[request_id] -= 1
            if self._pending[request_id] <= 0:
                del self._pending[request_id]
            if self.keep_history:
                if isinstance(outcome, Delivery):
                    self._deliveries.append(outcome)
                else:
                    self._failures.append(outcome)
        if callback is not None:
            try:
                callback(outcome)
            except Exception:  # a raising callback must not break librdkafka's poll loop
                log.exception("on_delivery callback for request %s raised", request_id)


def image_files(directory: Path, *, recursive: bool = False) -> list[Path]:
    """The image files (by suffix, case-insensitive) directly in ``directory`` or, if ``recursive``, below it."""
    candidates = directory.rglob("*") if recursive else directory.iterdir()
    return sorted(path for path in candidates if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file())


def image_key(payload: bytes) -> bytes:
    """The default record key: SHA-256 of the payload bytes, 32 hex characters. The bytes, not the decoded pixels:
    a producer does not decode images (~5 ms per 640x480 PNG); the same file sent again (an interactive user's next
    prompt) has the same bytes. An .npy array payload is its pixels."""
    return hashlib.sha256(payload).hexdigest()[:32].encode("ascii")


def _payload(image: ImageInput) -> tuple[bytes, str | None]:
    """The record's image bytes and, for a file, the default source name."""
    if isinstance(image, bytes | bytearray | memoryview):
        data = bytes(image)
        source = None
    elif isinstance(image, str):
        data = _base64_text(image)
        source = None
    elif isinstance(image, np.ndarray):
        data = _npy_bytes(image)
        source = None
    elif isinstance(image, os.PathLike):
        path = Path(image)
        data = path.read_bytes()
        source = path.name
    else:
        raise TypeError(
            f"unsupported image type {type(image).__name__}: expected bytes, base64 str, numpy array or Path"
        )
    if not data:
        raise ValueError("the image payload is empty")
    return data, source


def _base64_text(text: str) -> bytes:
    """Base64 text as UTF-8 bytes, after a cheap check that catches a file name passed as ``str`` by mistake."""
    body = _DATA_URI.sub("", text, count=1)
    if not body.strip() or _BASE64_TEXT.fullmatch(body) is None:
        raise ValueError(
            f"a str image must be base64 text (optionally a data: URI), got {text[:40]!r}: "
            "pass a pathlib.Path to send a file"
        )
    return text.encode("utf-8")


def _npy_bytes(array: np.ndarray) -> bytes:
    """``.npy`` bytes of an image array as the user holds it (uint8, uint16, [0, 1] floats...); what the worker's
    decoder would refuse is refused here first, with its message (raised as ``ValueError``)."""
    try:
        decode_image(array, limits=ImageLimits(max_pixels=2**62, max_side=2**62, max_payload_bytes=2**62))
    except InvalidImageError as exc:
        raise ValueError(f"unusable image array: {exc.message}") from None
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _listify(value: Any) -> Any:
    """Let numpy arrays stand in for prompt lists (the structural check wants lists or tuples)."""
    return value.tolist() if isinstance(value, np.ndarray) else value


def _checked_params(params: SegmentParams) -> SegmentParams:
    """Parameters as the spec validated them (construction already did), or a typed error for a foreign object."""
    if not isinstance(params, SegmentParams):
        raise InvalidParametersError(f"params must be a SegmentParams, got {type(params).__name__}")
    return params


def _bare_headers(
    request_id: str, prompts: Prompts, params: SegmentParams, source: str | None, reply_to: str | None
) -> list[tuple[str, bytes]]:
    """The ``segpipe-*`` headers of a bare request; unset parameters are left out so the worker's defaults apply."""
    text: list[tuple[str, str | None]] = [
        (REQUEST_ID_HEADER, request_id),
        (POINTS_HEADER, json.dumps([list(p) for p in prompts.points]) if prompts.points else None),
        (POINT_LABELS_HEADER, json.dumps(list(prompts.point_labels)) if prompts.point_labels else None),
        (BOXES_HEADER, json.dumps([list(b) for b in prompts.boxes]) if prompts.boxes else None),
        (SOURCE_HEADER, source),
        (REPLY_TO_HEADER, reply_to),
    ]
    # Parameter headers are derived from the spec (pipeline.params), not listed here.
    return [(name, value.encode("utf-8")) for name, value in text if value is not None] + param_headers(params)
    return [(name, value.encode("utf-8")) for name, value in text if value is not None]
