"""The result sink: publishes each outcome (result, reply, dead letter) and reports it once every part is delivered.

librdkafka already retries transient failures (broker down, leader moves) inside ``message.timeout.ms``, in order
and without duplicates (idempotent producer), so the sink adds one policy of its own for what still fails — a
delivery that timed out, or a produce the client refused outright: produce it again after ``RETRY_DELAY_S``, for ever,
since the record's offset must not move before its result is out. A reply topic is best effort: its gateway may be
gone (and its topic deleted), and the output topic holds the same result, so a failed reply never holds back the
offset. Everything here runs on the poll-loop thread (delivery callbacks are served by :meth:`ResultSink.poll`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from confluent_kafka import KafkaError, KafkaException, Producer

from consumers.processor import Outcome
from schemas.registry import WireCodec
from segpipe.config import KafkaSettings

log = logging.getLogger(__name__)

RETRY_DELAY_S = 1.0  # before producing again a message that failed or was refused


@dataclass(slots=True)
class _Publication:
    """One outcome being published: reported when ``waiting`` reaches zero."""

    outcome: Outcome
    waiting: int = 0


@dataclass(frozen=True, slots=True)
class _Message:
    topic: str
    key: bytes
    value: bytes
    publication: _Publication
    best_effort: bool


class ResultSink:
    """Produce, deliver, retry; ``published(outcome)`` once all of an outcome's messages are delivered."""

    def __init__(
        self, producer: Producer, settings: KafkaSettings, codec: WireCodec, *, published: Callable[[Outcome], None]
    ) -> None:
        self._producer = producer
        self._settings = settings
        self._codec = codec
        self._published = published
        self._retries: list[tuple[float, _Message]] = []  # (due, message)
        self.retried = 0

    def publish(self, outcome: Outcome) -> None:
        kafka, codec = self._settings, self._codec
        key = outcome.result.request_id.encode()
        topics = [kafka.output_topic]
        if outcome.reply_to and outcome.reply_to != kafka.output_topic:
            topics.append(outcome.reply_to)
        # Without a registry the processor's plain encoding (also what the dedup cache stores) goes out as is.
        targets = [
            (topic, codec.encode_result(outcome.result, topic) if codec.uses_registry else outcome.result_bytes)
            for topic in topics
        ]
        if outcome.dead_letter is not None:
            topic = kafka.dead_letter_topic
            targets.append((topic, codec.encode_dead_letter(outcome.dead_letter, topic)))
        publication = _Publication(outcome, waiting=len(targets))
        for topic, value in targets:
            self._produce(_Message(topic, key, value, publication, best_effort=topic == outcome.reply_to))

    def poll(self, timeout: float = 0.0) -> None:
        """Produce the retries that are due, and serve delivery callbacks (waiting up to ``timeout``)."""
        if self._retries:
            now = time.monotonic()
            due = [message for at, message in self._retries if at <= now]
            self._retries = [(at, message) for at, message in self._retries if at > now]
            for message in due:
                self._produce(message)
        self._producer.poll(timeout)

    def flush(self, timeout: float) -> int:
        """Wait up to ``timeout`` for what is in the producer's queue; how many messages are still not delivered
        (their records stay uncommitted and are redelivered to the partitions' next owner)."""
        self.poll(0)
        return int(self._producer.flush(timeout)) + len(self._retries)

    def _produce(self, message: _Message) -> None:
        try:
            self._producer.produce(
                message.topic,
                value=message.value,
                key=message.key,
                on_delivery=lambda error, _delivered: self._delivered(message, error),
            )
        except BufferError:  # the client's queue is full: try again on the next poll, once callbacks freed room
            self._retries.append((0.0, message))
        except KafkaException as exc:
            # Refused before sending (a topic name librdkafka rejects or has marked unknown, a message over
            # message.max.bytes...). Raised out of here it would kill the worker, and the record, redelivered, the
            # next one: a poison pill.
            self._failed(message, str(exc.args[0]))

    def _delivered(self, message: _Message, error: KafkaError | None) -> None:
        if error is not None:
            self._failed(message, str(error))
            return
        self._settled(message)

    def _failed(self, message: _Message, reason: str) -> None:
        if message.best_effort:
            log.warning("reply to %r not delivered (%s): the output topic has the result", message.topic, reason)
            self._settled(message)
            return
        self.retried += 1
        log.warning("delivery to %s failed (%s): producing it again in %.0f s", message.topic, reason, RETRY_DELAY_S)
        self._retries.append((time.monotonic() + RETRY_DELAY_S, message))

    def _settled(self, message: _Message) -> None:
        publication = message.publication
        publication.waiting -= 1
        if publication.waiting == 0:
            self._published(publication.outcome)
