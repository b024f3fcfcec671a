"""HTTP gateway compatible with the original synchronous API: ``POST /segment`` answers with the masks.

The original service segmented an image inside the HTTP request. Here the gateway turns the HTTP request into a
Kafka request-reply: it publishes an Avro ``SegmentRequest`` to the input topic (through
:class:`~producers.publisher.SegmentationProducer`) with ``reply_to`` naming this gateway instance's own reply
topic, and waits for the result carrying the same request id there. Old clients keep their JSON shape
(``success``, ``num_masks``, ``masks[].segmentation/area/bbox/predicted_iou/stability_score``); new keys are only
added (``request_id``, ``model``, ``fallback_reason``, ``cached``, ``image_size``, ``timings_ms``, ``masks[].rle``).

Why a reply topic per gateway instance (``segpipe.replies.<instance id>``, one partition) rather than the shared
output topic: the output topic carries every result of the pipeline (batch producers included), so each gateway
would fetch and decode all of them to find its few, and N gateways would each read everything; with its own topic
a gateway reads exactly its replies. It also needs no consumer group: the one partition is assigned directly, as
:mod:`producers.results` does, so start-up never waits for a group join (slow on tansu) and gateways never steal
each other's replies. The price is one topic per instance: created at start-up and deleted at shutdown (best
effort); it is created with ``retention.ms`` (``GATEWAY_REPLY_RETENTION_MS``) so the topic of a gateway that
crashed holds little, and a stable ``GATEWAY_INSTANCE_ID`` (e.g. a StatefulSet pod name) makes a restarted gateway
reuse its topic instead of leaving one behind.

Threads: librdkafka clients are blocking, so one thread polls the producer (delivery reports) and one polls the
reply consumer; both complete :class:`concurrent.futures.Future` objects that the asyncio handlers await through
:func:`asyncio.wrap_future` (which hops back onto the event loop thread-safely). Results nobody waits for any
more (timed out, duplicates of at-least-once delivery) and results for unknown ids are dropped and counted.

Status codes: 200 with the masks; 400 for bad input (``invalid_image``, ``invalid_prompt``, ``invalid_parameters``,
``malformed_request``, from the gateway's own checks or from the worker's error result); 401 ``unauthorized`` (API keys
on, no valid key); 413 ``image_too_large``; 429 ``rate_limited``;
500 ``model_failed``/``internal_error``; 503 when Kafka does not take the request (``kafka_unavailable``) or a
model is unavailable; 504 ``timeout`` when no result arrives within ``GATEWAY_TIMEOUT_S``.

Keys, rate limit and body limit: :mod:`gateway.security` (``GATEWAY_API_KEYS``, ``GATEWAY_API_KEYS_FILE``,
``GATEWAY_RATE_LIMIT_PER_S``, ``GATEWAY_MAX_BODY_BYTES``), applied before a request reaches the handlers.

Run it with ``python -m gateway.app`` or ``segpipe gateway`` (``PORT``, ``GATEWAY_HOST``, ``KAFKA_*``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import re
import socket
import sys
import threading
import time
import uuid
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Mapping, Sequence
from concurrent.futures import Future, InvalidStateError
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from starlette.datastructures import UploadFile

from gateway.security import ApiKeys, GatewayGuard, KeyFileError, RateLimiter
from pipeline.errors import SegmentationError
from pipeline.params import PARAM_NAMES, SegmentParams, params_from_values
from producers.publisher import RECORD_OVERHEAD_BYTES, Delivery, Failure, SegmentationProducer
from schemas import SegmentResultMessage
from schemas.registry import WireCodec
from segpipe.config import KafkaSettings
from segpipe.kafka import ensure_topics, make_admin, make_consumer, make_producer

__all__ = ["Gateway", "GatewayError", "GatewaySettings", "create_app", "main", "result_to_api"]

log = logging.getLogger("gateway.app")  # not __name__: "__main__" under python -m

#: HTTP status for each error code a result (or the gateway itself) can carry; unknown codes are 500.
STATUS_BY_CODE: dict[str, int] = {
    "invalid_image": 400,
    "invalid_prompt": 400,
    "invalid_parameters": 400,
    "malformed_request": 400,
    "unauthorized": 401,
    "image_too_large": 413,
    "rate_limited": 429,
    "model_unavailable": 503,
    "model_failed": 500,
    "internal_error": 500,
    "kafka_unavailable": 503,
    "shutting_down": 503,
    "timeout": 504,
}

_TOPIC_CHARS = re.compile(r"[^A-Za-z0-9._-]")
_POLL_S = 0.2
_STATS_INTERVAL_MS = 1000
#: Room left in a Kafka message for the Avro request's other fields and headers besides the image.
_REQUEST_FIELDS_BYTES = 64 * 1024
#: Finished request ids remembered to tell a late result (timed out, duplicate) from one for an unknown id.
_RECENT_IDS = 10_000


def _default_instance_id() -> str:
    return f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"


class GatewaySettings(BaseSettings):
    """How the gateway listens and waits. Environment: ``GATEWAY_<FIELD>``, and ``PORT`` like the original API."""

    model_config = SettingsConfigDict(
        env_prefix="GATEWAY_", extra="ignore", frozen=True, populate_by_name=True, hide_input_in_errors=True
    )

    host: str = "0.0.0.0"
    port: int = Field(5000, ge=1, le=65535, validation_alias=AliasChoices("GATEWAY_PORT", "PORT", "port"))
    timeout_s: float = Field(60.0, gt=0, description="most seconds a request waits for its result (then 504)")
    publish_timeout_s: float = Field(
        10.0, gt=0, description="most seconds to wait for the broker to acknowledge a request (then 503)"
    )
    health_timeout_s: float = Field(2.0, gt=0, description="metadata round trip allowed to /health")
    instance_id: str = Field(default_factory=_default_instance_id, description="names the reply topic")
    reply_topic_prefix: str = "segpipe.replies."
    reply_retention_ms: int = Field(3_600_000, ge=60_000, description="retention of the reply topic")
    delete_reply_topic: bool = Field(True, description="delete the reply topic at shutdown")
    shutdown_timeout_s: float = Field(5.0, gt=0)
    # Who may send and how much (gateway.security). Keys on = any of these set; off by default for the local stack.
    api_keys: SecretStr | None = Field(None, description="comma-separated API keys a client may send")
    api_keys_file: Path | None = Field(None, description="file of 'sha256:<hex> [name]' lines (hashed keys)")
    max_body_bytes: int | None = Field(
        None, ge=1024, description="largest request body read (then 413); default 2 x KAFKA_MESSAGE_MAX_BYTES"
    )
    rate_limit_per_s: float | None = Field(None, gt=0, description="requests/s per key (keys on) or client address")
    rate_limit_burst: int | None = Field(None, ge=1, description="requests at once; default ceil(rate), at least 1")

    @field_validator("instance_id")
    @classmethod
    def _topic_safe(cls, value: str) -> str:
        """Kafka topic names allow only ``[A-Za-z0-9._-]``: replace anything else rather than fail at start-up."""
        cleaned = _TOPIC_CHARS.sub("-", value.strip())[:200]
        if not cleaned:
            raise ValueError("GATEWAY_INSTANCE_ID must not be empty")
        return cleaned

    @property
    def reply_topic(self) -> str:
        return f"{self.reply_topic_prefix}{self.instance_id}"


class GatewayError(Exception):
    """A request the gateway answers with an error body: HTTP status, stable code, message."""

    def __init__(self, code: str, message: str, *, status: int | None = None, request_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status if status is not None else STATUS_BY_CODE.get(code, 500)
        self.request_id = request_id


class Gateway:
    """The Kafka side of the gateway: publish a request, await its reply; no HTTP here.

    :meth:`start` creates the reply topic and the clients (blocking: call it from a thread in async code),
    :meth:`segment` is awaited by the HTTP handlers, :meth:`close` fails what is still waiting with 503 and
    releases everything.
    """

    def __init__(
        self, settings: GatewaySettings, kafka: KafkaSettings | None = None, *, codec: WireCodec | None = None
    ) -> None:
        self.settings = settings
        self.kafka = kafka if kafka is not None else KafkaSettings()
        self.codec = codec if codec is not None else WireCodec()
        self.reply_topic = settings.reply_topic
        self.counters: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._pending: dict[str, Future[SegmentResultMessage]] = {}
        self._recent: OrderedDict[str, None] = OrderedDict()
        self._stop = threading.Event()
        self._closing = False
        self._raw_producer: Producer | None = None
        self._producer: SegmentationProducer | None = None
        self._consumer: Consumer | None = None
        self._threads: list[threading.Thread] = []
        self._consumer_error: str | None = None
        # (monotonic time, broker name -> state) from the reply consumer's latest statistics; see health().
        self._consumer_stats: tuple[float, dict[str, str]] | None = None

    # --- life cycle ------------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Create the reply topic, the producer and the reply consumer (assigned at the topic's end), start threads.

        Raises ``KafkaException``/``TimeoutError`` when the broker cannot be reached: a gateway that cannot
        receive replies should not accept requests, so start-up fails and the process exits.
        """
        ensure_topics(
            self.kafka,
            {self.reply_topic: 1},
            timeout=30.0,
            config={"retention.ms": str(self.settings.reply_retention_ms)},
        )
        # message.timeout.ms bounds how long librdkafka retries a request before reporting it failed, so an
        # unreachable broker becomes a 503 after publish_timeout_s rather than after librdkafka's 5 minutes.
        self._raw_producer = make_producer(
            self.kafka, **{"message.timeout.ms": max(1000, int(self.settings.publish_timeout_s * 1000))}
        )
        self._producer = SegmentationProducer(
            self.kafka, producer=self._raw_producer, codec=self.codec, keep_history=False
        )
        # Statistics (served by the reply thread's poll) say whether this consumer holds a live broker connection:
        # asking it for metadata from another thread would queue behind its fetch on some brokers (tansu).
        consumer = make_consumer(
            self.kafka,
            f"segpipe-gateway-{self.settings.instance_id}",
            **{
                "enable.auto.commit": False,
                "enable.partition.eof": False,
                "auto.offset.reset": "latest",
                "statistics.interval.ms": _STATS_INTERVAL_MS,
                "stats_cb": self._on_consumer_stats,
            },
        )
        # Start at the current end, read explicitly: every reply produced after start-up is seen, and replies a
        # previous gateway of the same instance id left behind are not.
        _low, high = consumer.get_watermark_offsets(TopicPartition(self.reply_topic, 0), timeout=10.0, cached=False)
        consumer.assign([TopicPartition(self.reply_topic, 0, high)])
        self._consumer = consumer
        self._threads = [
            threading.Thread(target=self._poll_producer, name="gateway-producer", daemon=True),
            threading.Thread(target=self._consume_replies, name="gateway-replies", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        # The first statistics arrive within a second: wait for them so /health is ok once the server listens.
        deadline = time.monotonic() + 5 * _STATS_INTERVAL_MS / 1000
        while self._consumer_stats is None and time.monotonic() < deadline:
            time.sleep(0.05)
        log.info(
            "gateway %s ready: requests to %s, replies on %s",
            self.settings.instance_id,
            self.kafka.input_topic,
            self.reply_topic,
        )

    def close(self) -> None:
        """Fail waiting requests (503), stop the threads, close the clients, delete the reply topic (best effort)."""
        with self._lock:
            self._closing = True
            waiting = list(self._pending.values())
            self._pending.clear()
        for future in waiting:
            with contextlib.suppress(InvalidStateError):
                future.set_exception(GatewayError("shutting_down", "the gateway is shutting down"))
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self.settings.shutdown_timeout_s)
        if self._consumer is not None:
            with contextlib.suppress(RuntimeError, KafkaException):
                self._consumer.close()
            self._consumer = None
        if self._producer is not None:
            with contextlib.suppress(Exception):  # PublishError: nobody waits for those requests any more
                self._producer.close(timeout=self.settings.shutdown_timeout_s)
            self._producer = None
        if self._raw_producer is not None:
            self._raw_producer.purge()
            self._raw_producer.flush(0)
            self._raw_producer = None
        if self.settings.delete_reply_topic:
            self._delete_reply_topic()

    def _delete_reply_topic(self) -> None:
        try:
            admin = make_admin(self.kafka)  # keep a reference: a collected client fails its futures (_DESTROY)
            futures = admin.delete_topics([self.reply_topic], operation_timeout=5, request_timeout=5)
            for future in futures.values():
                future.result(timeout=self.settings.shutdown_timeout_s)
            log.info("deleted reply topic %s", self.reply_topic)
        except Exception as exc:  # noqa: BLE001 - best effort: the broker may be gone; retention bounds the rest
            log.warning("could not delete reply topic %s: %s", self.reply_topic, exc)

    # --- threads ---------------------------------------------------------------------------------------------------

    def _poll_producer(self) -> None:
        """Serve delivery reports, which resolve each request's delivery future (see :meth:`segment`)."""
        producer = self._raw_producer
        assert producer is not None
        while not self._stop.is_set():
            producer.poll(_POLL_S)

    def _consume_replies(self) -> None:
        """Read the reply topic and hand each result to the request waiting for its id."""
        consumer = self._consumer
        assert consumer is not None
        while not self._stop.is_set():
            try:
                record = consumer.poll(_POLL_S)
            except (RuntimeError, KafkaException) as exc:  # closed under us, or a fatal client error
                self._consumer_error = str(exc)
                log.error("reply consumer stopped: %s", exc)
                return
            if record is None:
                continue
            error = record.error()
            if error is not None:
                if error.fatal():
                    self._consumer_error = str(error)
                    log.error("reply consumer failed: %s", error)
                    return
                log.warning("reply consumer: %s", error)
                continue
            try:
                result = self.codec.decode_result(record.value(), self.reply_topic)
            except SegmentationError as exc:
                self._count("replies_undecodable")
                log.warning("dropping an undecodable reply at offset %d: %s", record.offset(), exc.message)
                continue
            self._dispatch(result)

    def _on_consumer_stats(self, stats_json: str) -> None:
        """Keep the reply consumer's broker connection states (librdkafka statistics, every second)."""
        try:
            brokers = json.loads(stats_json).get("brokers", {})
            states = {str(name): str(broker.get("state")) for name, broker in brokers.items()}
        except (ValueError, AttributeError) as exc:
            log.debug("unreadable consumer statistics: %s", exc)
            return
        self._consumer_stats = (time.monotonic(), states)

    def _dispatch(self, result: SegmentResultMessage) -> None:
        with self._lock:
            future = self._pending.pop(result.request_id, None)
            late = future is None and result.request_id in self._recent
        if future is None:
            self._count("replies_late" if late else "replies_unknown")
            log.info("dropping a %s result for request %s", "late" if late else "unknown", result.request_id)
            return
        try:
            future.set_result(result)
        except InvalidStateError:  # the request gave up (timed out) between the lookup and now
            self._count("replies_late")
            return
        self._count("replies")

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.counters[name] += n

    # --- requests --------------------------------------------------------------------------------------------------

    async def segment(
        self,
        image: bytes | str,
        *,
        points: Any = None,
        point_labels: Any = None,
        boxes: Any = None,
        params: SegmentParams | None = None,
        source: str | None = None,
    ) -> SegmentResultMessage:
        """Publish one request and return its result (``ok`` or ``error``) once the reply topic has it.

        Raises :class:`GatewayError`: the request's own errors found before sending (400/413), the broker not
        acknowledging it within ``publish_timeout_s`` (503), no result within ``timeout_s`` (504).
        """
        producer = self._producer
        started = time.monotonic()
        request_id = uuid.uuid4().hex
        reply: Future[SegmentResultMessage] = Future()
        delivered: Future[None] = Future()
        with self._lock:
            if self._closing or producer is None:
                raise GatewayError("shutting_down", "the gateway is not running")
            self._pending[request_id] = reply  # before publishing: a fast reply must find its future
            self.counters["requests"] += 1

        def on_delivery(outcome: Delivery | Failure) -> None:
            with contextlib.suppress(InvalidStateError):
                if isinstance(outcome, Failure):
                    delivered.set_exception(
                        GatewayError("kafka_unavailable", f"Kafka refused the request: {outcome.reason}")
                    )
                else:
                    delivered.set_result(None)

        try:
            limit = self.kafka.message_max_bytes - RECORD_OVERHEAD_BYTES - _REQUEST_FIELDS_BYTES
            if len(image) > limit:
                raise GatewayError(
                    "image_too_large",
                    f"the image payload is {len(image)} bytes; this deployment takes at most {limit} "
                    "(KAFKA_MESSAGE_MAX_BYTES)",
                )
            try:
                await asyncio.to_thread(
                    producer.publish,
                    image,
                    points=points,
                    point_labels=point_labels,
                    boxes=boxes,
                    params=params,
                    request_id=request_id,
                    source=source,
                    reply_to=self.reply_topic,
                    on_delivery=on_delivery,
                )
            except SegmentationError as exc:  # prompt shapes, parameter types, unknown model
                raise GatewayError(exc.code, exc.message) from None
            except ValueError as exc:  # empty payload, a str that is not base64
                raise GatewayError("invalid_image", str(exc)) from None
            except (KafkaException, BufferError, RuntimeError) as exc:
                raise GatewayError("kafka_unavailable", f"cannot publish to Kafka: {exc}") from None

            publish_wait = min(self.settings.publish_timeout_s, self.settings.timeout_s)
            try:
                await asyncio.wait_for(asyncio.wrap_future(delivered), publish_wait)
            except TimeoutError:
                raise GatewayError(
                    "kafka_unavailable", f"Kafka did not acknowledge the request within {publish_wait:g} s"
                ) from None

            remaining = self.settings.timeout_s - (time.monotonic() - started)
            try:
                return await asyncio.wait_for(asyncio.wrap_future(reply), max(remaining, 0.001))
            except TimeoutError:
                raise GatewayError(
                    "timeout", f"no result within {self.settings.timeout_s:g} s (GATEWAY_TIMEOUT_S)"
                ) from None
        except GatewayError as exc:
            exc.request_id = request_id
            self._count(f"failed_{exc.code}")
            raise
        finally:
            with self._lock:
                self._pending.pop(request_id, None)
                self._recent[request_id] = None
                while len(self._recent) > _RECENT_IDS:
                    self._recent.popitem(last=False)

    async def health(self) -> tuple[bool, dict[str, Any]]:
        """Whether the producer and the reply consumer are connected.

        The producer must fetch the input and reply topics' metadata within ``health_timeout_s``; the reply
        consumer must be polling (its thread alive, statistics fresh) with a broker connection up.
        """
        producer_state = await asyncio.to_thread(self._probe_producer)
        consumer_state = self._consumer_state()
        with self._lock:
            counters = dict(self.counters)
            in_flight = len(self._pending)
        details = {
            "producer": producer_state,
            "reply_consumer": consumer_state,
            "instance_id": self.settings.instance_id,
            "input_topic": self.kafka.input_topic,
            "reply_topic": self.reply_topic,
            "in_flight": in_flight,
            "counters": counters,
        }
        return producer_state == "ok" and consumer_state == "ok", details

    def _probe_producer(self) -> str:
        producer = self._raw_producer
        if producer is None:
            return "not started"
        deadline = time.monotonic() + self.settings.health_timeout_s
        for topic in (self.kafka.input_topic, self.reply_topic):
            try:
                timeout = max(deadline - time.monotonic(), 0.05)
                metadata = producer.list_topics(topic, timeout=timeout).topics.get(topic)
            except (KafkaException, RuntimeError) as exc:
                return f"broker unreachable: {exc}"
            if metadata is None or metadata.error is not None or not metadata.partitions:
                return f"topic {topic} unavailable: {'missing' if metadata is None else metadata.error}"
        return "ok"

    def _consumer_state(self) -> str:
        if not self._threads or not all(thread.is_alive() for thread in self._threads):
            return f"stopped: {self._consumer_error or 'thread not running'}"
        stats = self._consumer_stats
        if stats is None:
            return "starting: no statistics yet"
        age = time.monotonic() - stats[0]
        if age > max(3 * _STATS_INTERVAL_MS / 1000, self.settings.health_timeout_s):
            return f"stuck: no statistics for {age:.1f} s"
        states = {name: state for name, state in stats[1].items() if name != "GroupCoordinator"}
        if not any(state == "UP" for state in states.values()):
            return f"not connected: {states}"
        return "ok"


# --- HTTP ----------------------------------------------------------------------------------------------------------


def _score(value: float) -> float | None:
    """A JSON-safe float: NaN and infinities (which strict JSON has no words for) become null."""
    number = float(value)
    return number if math.isfinite(number) else None


def _coordinate(value: float) -> float | int | None:
    """A JSON-safe coordinate: integral values as ints, as the original API wrote pixel coordinates."""
    number = _score(value)
    return int(number) if number is not None and number.is_integer() else number


#: How ``masks[].segmentation`` is written: ``points`` (default, the original API's documented shape: the mask's
#: largest polygon as ``[[x, y], ...]``) or ``coco`` (every polygon as a flat ``[x1, y1, x2, y2, ...]`` list).
SEGMENTATION_FORMATS = ("points", "coco")


def _points(polygon: Sequence[float]) -> list[list[float | int | None]]:
    """A flat polygon as ``[x, y]`` pairs."""
    return [[_coordinate(polygon[i]), _coordinate(polygon[i + 1])] for i in range(0, len(polygon) - 1, 2)]


def checked_segmentation_format(value: object) -> str:
    """The requested segmentation format, or a 400 ``invalid_parameters`` naming the choices."""
    if value not in SEGMENTATION_FORMATS:
        raise GatewayError(
            "invalid_parameters",
            f"segmentation_format must be one of {', '.join(SEGMENTATION_FORMATS)}, got {value!r:.40}",
        )
    return str(value)


def result_to_api(result: SegmentResultMessage, segmentation_format: str = "points") -> dict[str, Any]:
    """An ``ok`` result in the original API's shape, plus the keys old clients ignore.

    ``segmentation``: with ``points`` (default) the largest polygon as ``[[x, y], ...]``, as the original API
    documents, and every polygon (largest first, at most ``max_contours``) under ``polygons``; with ``coco`` every
    polygon as a flat COCO list. ``prompt_index`` says which prompt a mask answers (null in everything mode).
    """
    segmentation_format = checked_segmentation_format(segmentation_format)
    masks = []
    for mask in result.masks:
        entry: dict[str, Any] = {}
        if segmentation_format == "coco":
            entry["segmentation"] = [[_coordinate(v) for v in polygon] for polygon in mask.polygons]
        else:
            polygons = [_points(polygon) for polygon in mask.polygons]
            entry["segmentation"] = polygons[0] if polygons else []
            entry["polygons"] = polygons
        entry |= {
            "area": int(mask.area),
            "bbox": [_coordinate(v) for v in mask.bbox],
            "predicted_iou": _score(mask.predicted_iou),
            "stability_score": _score(mask.stability_score),
            "prompt_index": mask.prompt_index,
            "rle": {"size": [int(v) for v in mask.rle.size], "counts": mask.rle.counts},
        }
        masks.append(entry)
    return {
        "success": True,
        "num_masks": len(masks),
        "masks": masks,
        "request_id": result.request_id,
        "model": None if result.model is None else str(result.model),
        "fallback_reason": None if result.fallback_reason is None else str(result.fallback_reason),
        "fallback_detail": result.fallback_detail,
        "cached": bool(result.cached),
        "image_size": {"width": result.width, "height": result.height},
        "timings_ms": {key: _score(value) for key, value in result.timings_ms.items()},
    }


def _error_response(error: GatewayError) -> JSONResponse:
    body: dict[str, Any] = {"success": False, "error": error.message, "code": error.code}
    if error.request_id is not None:
        body["request_id"] = error.request_id
    return JSONResponse(body, status_code=error.status)


def _form_value(value: str) -> Any:
    """A form field as the JSON body would carry it: ``"[[1,2]]"`` -> list, ``"0.3"`` -> 0.3, ``"sam2"`` as is."""
    try:
        return json.loads(value)
    except (ValueError, RecursionError):  # not JSON (or absurdly nested): the text itself, judged by the field's rule
        return value


def _one_or_many(value: Any, arity: int) -> Any:
    """Accept a single flat point/box (``[x, y]``) where a list of them is expected, as lenient clients send."""
    if isinstance(value, list) and len(value) == arity and all(isinstance(v, int | float) for v in value):
        return [value]
    return value


def _params(fields: Mapping[str, Any]) -> SegmentParams:
    """Per-request parameters: the spec's fields by name (:mod:`pipeline.params`), validated by the spec, so a bad
    value gets the same 400 ``invalid_parameters`` message as through Kafka; an empty form field means unset."""
    return params_from_values({name: fields.get(name) for name in PARAM_NAMES if fields.get(name) != ""})


async def _read_body(request: Request, max_part_bytes: int) -> tuple[bytes | str, dict[str, Any]]:
    """The image (bytes of an uploaded file, or base64 text) and the other fields, from JSON or a form.

    A body announced larger than ``max_part_bytes`` is refused before it is read: it could not fit in a Kafka
    message anyway, and reading it would only cost the gateway memory.
    """
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > max_part_bytes:
        raise GatewayError("image_too_large", f"the request body is {length} bytes; at most {max_part_bytes} are read")
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    fields: dict[str, Any]
    if content_type in ("multipart/form-data", "application/x-www-form-urlencoded"):
        try:
            form = await request.form(max_part_size=max_part_bytes)
        except Exception as exc:  # noqa: BLE001 - starlette/python-multipart raise several types on bad forms
            raise GatewayError("malformed_request", f"cannot read the form: {exc}") from None
        fields = {}
        image: Any = None
        for key, value in form.multi_items():
            if key == "image":
                image = await value.read() if isinstance(value, UploadFile) else value
            elif isinstance(value, str):
                fields[key] = _form_value(value)
    else:
        try:
            body = await request.json()
        except RecursionError:
            raise GatewayError("malformed_request", "the JSON body is nested too deeply") from None
        except ValueError:
            raise GatewayError(
                "malformed_request", "the body must be JSON, or multipart/form-data with an 'image' file"
            ) from None
        if not isinstance(body, dict):
            raise GatewayError("malformed_request", f"the JSON body must be an object, got {type(body).__name__}")
        fields = body
        image = body.get("image")
    if image is None or image == "" or image == b"":
        raise GatewayError("invalid_image", "no image: send 'image' as base64 text (JSON) or as a file (multipart)")
    if not isinstance(image, bytes | str):
        raise GatewayError("invalid_image", f"'image' must be base64 text, got {type(image).__name__}")
    return image, fields


def create_app(settings: GatewaySettings | None = None, kafka: KafkaSettings | None = None) -> FastAPI:
    """The FastAPI application; its lifespan starts and stops one :class:`Gateway`."""
    settings = settings if settings is not None else GatewaySettings()
    kafka = kafka if kafka is not None else KafkaSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        gateway = Gateway(settings, kafka)
        try:
            await asyncio.to_thread(gateway.start)
        except BaseException:
            await asyncio.to_thread(gateway.close)
            raise
        app.state.gateway = gateway
        try:
            yield
        finally:
            await asyncio.to_thread(gateway.close)

    app = FastAPI(title="segpipe gateway", version="1", lifespan=lifespan)
    _guard(app, settings, kafka)

    @app.exception_handler(GatewayError)
    async def _gateway_error(_request: Request, exc: GatewayError) -> JSONResponse:
        return _error_response(exc)

    @app.post("/segment")
    async def segment(request: Request) -> JSONResponse:
        """Segment one image: JSON (base64 ``image``) or multipart (``image`` file), as the original API."""
        gateway: Gateway = request.app.state.gateway
        image, fields = await _read_body(request, max_part_bytes=kafka.message_max_bytes * 2)
        # Refused before anything is published.
        segmentation_format = checked_segmentation_format(fields.get("segmentation_format") or "points")
        labels = fields.get("point_labels", fields.get("labels"))
        try:
            params = _params(fields)
        except SegmentationError as exc:
            raise GatewayError(exc.code, exc.message) from None
        source = fields.get("source")
        result = await gateway.segment(
            image,
            points=_one_or_many(fields.get("points"), 2),
            point_labels=labels,
            boxes=_one_or_many(fields.get("boxes"), 4),
            params=params,
            source=source if isinstance(source, str) and source else f"gateway:{settings.instance_id}",
        )
        if result.error is not None:
            raise GatewayError(result.error.code, result.error.message, request_id=result.request_id)
        return JSONResponse(result_to_api(result, segmentation_format))

    @app.get("/health")
    async def health(request: Request) -> JSONResponse:
        """``{"status": "ok"}`` when the producer and the reply consumer reach the broker, else 503."""
        ok, details = await request.app.state.gateway.health()
        return JSONResponse({"status": "ok" if ok else "unavailable", **details}, status_code=200 if ok else 503)

    return app


def _guard(app: FastAPI, settings: GatewaySettings, kafka: KafkaSettings) -> None:
    """Keys, rate limit and body limit in front of every handler (raises :class:`KeyFileError` on a bad key file)."""
    keys = ApiKeys.load(
        None if settings.api_keys is None else settings.api_keys.get_secret_value(), settings.api_keys_file
    )
    limiter = None
    if settings.rate_limit_per_s is not None:
        burst = settings.rate_limit_burst or max(1, math.ceil(settings.rate_limit_per_s))
        limiter = RateLimiter(settings.rate_limit_per_s, burst)
    max_body = settings.max_body_bytes or kafka.message_max_bytes * 2
    app.add_middleware(GatewayGuard, max_body_bytes=max_body, keys=keys, limiter=limiter)
    if keys.enabled:
        log.info("API keys required: %d accepted", len(keys))
    elif settings.host not in ("127.0.0.1", "::1", "localhost"):
        log.warning(
            "no API keys: anyone who reaches %s:%d may send (set GATEWAY_API_KEYS or GATEWAY_API_KEYS_FILE)",
            settings.host,
            settings.port,
        )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the gateway under uvicorn until SIGINT/SIGTERM; returns the exit status."""
    parser = argparse.ArgumentParser(prog="segpipe gateway", description="HTTP gateway: POST /segment, GET /health")
    parser.add_argument("--host", help="listen address (default: GATEWAY_HOST or 0.0.0.0)")
    parser.add_argument("--port", type=int, help="listen port (default: PORT or 5000)")
    parser.add_argument("--timeout", type=float, help="seconds to wait for a result (default: GATEWAY_TIMEOUT_S)")
    args = parser.parse_args(argv)

    from segpipe.logs import configure_logging

    configure_logging()
    overrides = {
        key: value
        for key, value in (("host", args.host), ("port", args.port), ("timeout_s", args.timeout))
        if value is not None
    }
    try:
        settings = GatewaySettings(**overrides)
        kafka = KafkaSettings()
    except (ValidationError, ValueError) as exc:
        print(f"segpipe gateway: invalid configuration: {exc}", file=sys.stderr)
        return 1

    import uvicorn

    try:
        app = create_app(settings, kafka)
    except KeyFileError as exc:
        print(f"segpipe gateway: invalid configuration: {exc}", file=sys.stderr)
        return 1
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_config=None)
    server = uvicorn.Server(config)
    server.run()
    # uvicorn exits without raising when start-up fails (the broker unreachable, the port taken).
    return 0 if server.started else 3


if __name__ == "__main__":
    raise SystemExit(main())
