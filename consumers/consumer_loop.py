"""The consumer loop's Kafka side: poll records, follow the assignment (assign, revoke, lost), pause and resume,
store and commit offsets. It owns the confluent-kafka Consumer and runs on the poll-loop thread only (rebalance and
commit callbacks are served inside its polls).

Offsets per partition advance to the lowest offset still in flight (:class:`OffsetTracker`), so a record is never
acknowledged before its result is delivered; stored offsets are committed right away, so a kill -9 redelivers only
what was in flight. On revocation the revoked partitions' unstarted work is handed back at once and their in-flight
work is drained (bounded by ``shutdown_timeout_s`` and half of ``max.poll.interval.ms``, since the whole group's
rebalance waits, and never past the shutdown deadline once stopping, so ``close()`` does not wait a second time);
what is not finished by then is handed back uncommitted to the new owner.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from consumers.lifecycle import Lifecycle
from consumers.offsets import OffsetTracker, TopicPartitionKey
from consumers.processor import InboundRecord
from pipeline.timing import ms_since
from segpipe.config import KafkaSettings
from segpipe.kafka import resume_now

log = logging.getLogger(__name__)

COMMIT_INTERVAL_S = 0.02  # stored offsets are committed at most this often (each commit is a broker round trip)


class ConsumerLoop:
    """One group member's consumer: ``drain(partitions, deadline)`` and ``hand_back(partitions)`` come from the
    stages (what a revocation must finish or give back)."""

    def __init__(
        self,
        consumer_factory: Callable[..., Consumer],
        settings: KafkaSettings,
        tracker: OffsetTracker,
        lifecycle: Lifecycle,
        *,
        revoke_timeout_s: float,
        ready: threading.Event,
        drain: Callable[[set[TopicPartitionKey], float], bool],
        hand_back: Callable[[set[TopicPartitionKey]], int],
    ) -> None:
        self.settings = settings
        self.tracker = tracker
        self.assigned: set[TopicPartitionKey] = set()
        self.paused = False
        self.commit_due = False  # offsets were stored since the last commit
        self.last_poll = time.monotonic()
        self.ready = ready  # set once partitions are assigned
        self._lifecycle = lifecycle
        self._revoke_timeout_s = revoke_timeout_s
        self._drain = drain
        self._hand_back = hand_back
        self._last_commit = 0.0
        self.consumer = consumer_factory(on_commit=self._on_commit)

    def subscribe(self) -> None:
        self.consumer.subscribe(
            [self.settings.input_topic], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )

    def poll(self, most: int, timeout: float) -> list[InboundRecord]:
        messages = self.consumer.consume(num_messages=most, timeout=timeout)
        self.last_poll = time.monotonic()
        records = []
        for message in messages:
            if message.error():
                if message.error().code() != KafkaError._PARTITION_EOF:
                    log.warning("consume error: %s", message.error())
                continue
            records.append(_record(message))
        return records

    def pause(self, pause: bool) -> None:
        """Pause or resume fetching every assigned partition (polling goes on, so the group keeps us)."""
        if pause == self.paused or (pause and not self.assigned):
            return
        partitions = [TopicPartition(t, p) for t, p in sorted(self.assigned)]
        started = time.perf_counter()
        if pause:
            self.consumer.pause(partitions)
        elif partitions:
            resume_now(self.consumer, partitions)
        self.paused = pause
        log.debug(
            "%s (%.1f ms): %d uncommitted", "paused" if pause else "resumed", ms_since(started), self.tracker.count()
        )

    def store(self, record: InboundRecord, next_offset: int) -> None:
        try:
            self.consumer.store_offsets(offsets=[TopicPartition(record.topic, record.partition, next_offset)])
            self.commit_due = True
        except KafkaException as exc:  # partition no longer ours: the new owner redoes it
            log.info("could not store offset %s:%s@%s: %s", record.topic, record.partition, next_offset, exc)

    def commit_stored(self, max_in_flight: int) -> None:
        """Commit stored offsets now instead of at the next auto-commit tick (asynchronously, off the hot path).

        After a kill -9 the group redelivers everything above the committed offsets; committing as soon as results
        are delivered keeps that to what was in flight, rather than up to a second's worth of delivered results.
        """
        if not self.commit_due:
            return
        now = time.monotonic()
        if now - self._last_commit < COMMIT_INTERVAL_S and self.tracker.count() < max_in_flight:
            return
        self.commit_due = False
        self._last_commit = now
        try:
            self.consumer.commit(asynchronous=True)
        except KafkaException as exc:  # nothing stored for our partitions any more, or mid-rebalance
            log.debug("commit: %s", exc)

    def close(self) -> None:
        """Commit what is stored and leave the group (the revocation it triggers waits no further: stopping)."""
        self.consumer.close()
        self.ready.clear()

    # -- callbacks, served inside poll() and close() on this thread ------------------------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.assigned |= {(tp.topic, tp.partition) for tp in partitions}
        # librdkafka keeps a partition's pause across a revocation or loss and a new assignment (confluent-kafka-go
        # #193): one paused before it was lost would come back paused while this loop believes it fetches. So each
        # assigned partition is set to the loop's state explicitly.
        if partitions:
            (consumer.pause if self.paused else consumer.resume)(partitions)
        self.ready.set()
        log.info("assigned %s", sorted(self.assigned))

    def _on_commit(self, error: KafkaError | None, partitions: list[TopicPartition]) -> None:
        """Commit acknowledgements (ours and auto-commit's): release the back-pressure they held."""
        if error is not None and error.code() != KafkaError._NO_OFFSET:
            log.debug("commit failed: %s", error)
        for tp in partitions or ():
            if tp.error is None and tp.offset >= 0:
                self.tracker.committed((tp.topic, tp.partition), tp.offset)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        revoked = {(tp.topic, tp.partition) for tp in partitions}
        log.info("revoked %s", sorted(revoked))
        self._hand_back(revoked)  # not started: given back at once rather than waited for
        deadline = min(time.monotonic() + self._revoke_timeout_s, self._lifecycle.deadline)
        if not self._drain(revoked, deadline):
            unfinished = self.tracker.owed(revoked)
            log.warning("handing back %d unfinished records of %s", unfinished, sorted(revoked))
        # With enable.auto.commit librdkafka also commits the stored offsets of revoked partitions itself (librdkafka
        # #1647); when stopping that one commit is enough: close() must not wait on the broker a second time.
        if not self._lifecycle.is_stopping:
            try:
                consumer.commit(asynchronous=False)
            except KafkaException as exc:  # e.g. ILLEGAL_GENERATION mid-rebalance, or nothing stored yet
                log.info("commit on revoke: %s", exc)
        self.tracker.forget(revoked)
        self.assigned -= revoked

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        lost = {(tp.topic, tp.partition) for tp in partitions}
        log.warning("partitions lost: %s (their in-flight work will be redone by the new owner)", sorted(lost))
        self.tracker.forget(lost)
        self._hand_back(lost)
        self.assigned -= lost


def _record(message: Message) -> InboundRecord:
    """A consumed record as plain data (copied out of confluent-kafka's Message)."""
    return InboundRecord(
        value=message.value(),
        key=message.key(),
        headers=tuple(message.headers() or ()),
        topic=message.topic(),
        partition=message.partition(),
        offset=message.offset(),
        timestamp_ms=message.timestamp()[1] if message.timestamp()[0] else None,
    )
