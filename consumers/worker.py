"""The worker: a consumer-group member that segments requests and publishes Avro results, at least once.

Threads and their jobs:

- the **poll loop** (the caller's thread) owns the consumer and the producer: it takes records in batches, hands
  them to the decode pool, publishes finished outcomes, and stores an offset only after every message of that record
  (result, reply, dead letter) is delivered. It never blocks on the model, so a slow inference never exceeds
  ``max.poll.interval.ms``.
- the **decode pool** (MAX_WORKERS threads) runs the fast path on chunks of records (parse, answer repeats of stored
  payloads from Redis in bulk: no image decoded) and, for the rest, the model path's preparation (decode, check,
  pixel-level dedup), at most MAX_WORKERS records at a time; the others wait, undecoded, in a backlog;
- the **inference thread** runs micro-batches (up to BATCH_SIZE requests or BATCH_TIMEOUT_MS) through the engine.

Back-pressure: the worker pauses its partitions (and keeps polling, so the group keeps it) while MAX_IN_FLIGHT
records are uncommitted or MAX_WORKERS records wait in the model path's backlog, and resumes at half of both.

Offsets per partition advance to the lowest offset still in flight (:class:`OffsetTracker`), so a record is never
acknowledged before its result is delivered; stored offsets are committed right away, so a kill -9 redelivers only
what was in flight. On revocation the worker finishes and delivers the revoked partitions' in-flight work (bounded
by ``shutdown_timeout_s`` and half of ``max.poll.interval.ms``, since the whole group's rebalance waits) and commits;
what is not finished by then is handed back uncommitted and redelivered to the new owner, and this worker neither
publishes its late result nor keeps computing queued work of those partitions. SIGTERM/SIGINT: stop fetching,
finish, flush, commit, close.
"""

from __future__ import annotations

import argparse
import collections
import logging
import queue
import signal
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from consumers.dedup import DedupCache
from consumers.lag import LagCollector, LagTracker
from consumers.processor import (
    InboundRecord,
    InternalError,
    Outcome,
    ParsedRequest,
    PendingSegmentation,
    RequestProcessor,
)
from pipeline.checkpoints import describe_checkpoints, discover_checkpoints
from pipeline.segmenter import Segmenter
from pipeline.timing import ms_since
from schemas.registry import WireCodec
from segpipe.config import AppSettings
from segpipe.kafka import make_consumer, make_producer, resume_now
from segpipe.preflight import ServiceUnavailable, check_kafka, check_redis

log = logging.getLogger(__name__)

TopicPartitionKey = tuple[str, int]
_RETRY_DELAY_S = 1.0  # before producing again a message the client refused outright
GPU_BATCH_SIZE = 4  # BATCH_SIZE when unset on a GPU
_CONSUME_BATCH = 256  # most records taken from the client per poll
_FAST_PATH_CHUNK = 64  # records per fast-path task: several chunks run on the decode pool at once
_COMMIT_INTERVAL_S = 0.02  # stored offsets are committed at most this often (each commit is a broker round trip)


class OffsetTracker:
    """Which offsets are in flight per partition, and how far each partition may be committed.

    A record is *uncommitted* from the moment it is consumed until a commit covering it is acknowledged: in flight,
    finished above a lower offset still in flight (not committable yet), or stored and waiting for the commit. Any
    uncommitted record is redelivered after a crash or a lost partition, so bounding :meth:`count` (backpressure)
    is what bounds the duplicates a kill -9 or an eviction can cause: to MAX_IN_FLIGHT per event.
    """

    def __init__(self) -> None:
        self._in_flight: dict[TopicPartitionKey, set[int]] = defaultdict(set)
        self._finished: dict[TopicPartitionKey, set[int]] = defaultdict(set)  # done, above the lowest in flight
        self._uncommitted: dict[TopicPartitionKey, set[int]] = defaultdict(set)  # done, stored, commit not acked
        self._highest_done: dict[TopicPartitionKey, int] = {}
        self._lock = threading.Lock()

    def add(self, tp: TopicPartitionKey, offset: int) -> None:
        with self._lock:
            self._in_flight[tp].add(offset)

    def is_pending(self, tp: TopicPartitionKey, offset: int) -> bool:
        """Whether this record is still ours to answer (False once its partition was revoked or lost)."""
        with self._lock:
            pending = self._in_flight.get(tp)
            return pending is not None and offset in pending

    def done(self, tp: TopicPartitionKey, offset: int) -> int | None:
        """Mark an offset finished; return the offset to store (next to read) if the partition can advance."""
        with self._lock:
            pending = self._in_flight.get(tp)
            if pending is None or offset not in pending:
                return None  # the partition was revoked or lost meanwhile: its new owner will redo it
            pending.discard(offset)
            self._highest_done[tp] = max(self._highest_done.get(tp, -1), offset)
            # Records of a partition arrive in offset order, so everything below the lowest one still in flight
            # is finished: that is the next offset to read after a restart.
            watermark = min(pending) if pending else self._highest_done[tp] + 1
            finished = self._finished[tp]
            finished.add(offset)
            storable = {o for o in finished if o < watermark}
            finished -= storable
            self._uncommitted[tp] |= storable
            return watermark

    def committed(self, tp: TopicPartitionKey, next_offset: int) -> None:
        """A commit up to ``next_offset`` was acknowledged: records below it will not be redelivered."""
        with self._lock:
            waiting = self._uncommitted.get(tp)
            if waiting:
                waiting.difference_update([o for o in waiting if o < next_offset])

    def count(self, partitions: set[TopicPartitionKey] | None = None, *, unacknowledged: bool = True) -> int:
        """Uncommitted records (see the class); ``unacknowledged=False`` leaves out the stored ones that only wait
        for a commit acknowledgement, i.e. counts the records whose results are not all delivered yet."""
        with self._lock:
            return sum(
                len(pending)
                + len(self._finished.get(tp, ()))
                + (len(self._uncommitted.get(tp, ())) if unacknowledged else 0)
                for tp, pending in self._in_flight.items()
                if partitions is None or tp in partitions
            )

    def forget(self, partitions: set[TopicPartitionKey]) -> None:
        """Stop tracking partitions (revoked or lost): late completions for them are ignored."""
        with self._lock:
            for tp in partitions:
                self._in_flight.pop(tp, None)
                self._finished.pop(tp, None)
                self._uncommitted.pop(tp, None)
                self._highest_done.pop(tp, None)


@dataclass(slots=True)
class _Publication:
    """One outcome being published: the offset is stored when ``waiting`` reaches zero."""

    outcome: Outcome
    waiting: int = 0
    failed: bool = False


@dataclass(slots=True)
class WorkerStats:
    """Counters for logs, tests and metrics."""

    consumed: int = 0
    results: int = 0
    errors: int = 0
    cache_hits: int = 0
    dead_letters: int = 0
    delivery_retries: int = 0
    batches: int = 0
    by_model: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    by_fallback: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    by_error: dict[str, int] = field(default_factory=lambda: defaultdict(int))


class Worker:
    """One consumer-group member; start more (more partitions) to scale."""

    def __init__(
        self,
        settings: AppSettings,
        *,
        segmenter: Segmenter | None = None,
        cache: DedupCache | None = None,
        consumer_overrides: dict | None = None,
        codec: WireCodec | None = None,
    ) -> None:
        self.settings = settings
        self.segmenter = segmenter or Segmenter(settings.models)
        self._stop = threading.Event()
        if cache is None and settings.redis.enabled:
            cache = DedupCache(settings.redis, stop=self._stop)  # a stopping worker waits on no peer's claim
        self.codec = codec if codec is not None else WireCodec(settings.registry)
        self.processor = RequestProcessor(
            self.segmenter,
            cache,
            worker_id=settings.worker.worker_id,
            codec=self.codec,
            max_record_bytes=settings.kafka.message_max_bytes,
        )
        self.stats = WorkerStats()
        self.tracker = OffsetTracker()
        self._consumer_overrides = consumer_overrides or {}
        # Finished work for the poll loop: (outcome or None when dropped unanswered, whether it took a model-path slot)
        self._completed: queue.Queue[tuple[Outcome | None, bool]] = queue.Queue()
        self._backlog: collections.deque[ParsedRequest] = collections.deque()  # model path, waiting for a slot
        self._backlog_lock = threading.Lock()
        self._model_path_active = 0  # records between the backlog and their outcome (poll-loop thread only)
        self._last_commit = 0.0
        self._model_queue: queue.Queue[PendingSegmentation | None] = queue.Queue()
        self._assigned: set[TopicPartitionKey] = set()
        self._paused = False
        self._commit_due = False  # offsets were stored since the last commit
        self._retries: list[tuple[float, str, bytes, bytes, _Publication]] = []  # (due, topic, key, value, ...)
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None
        self.ready = threading.Event()  # set once partitions are assigned
        self.started = threading.Event()  # set once models are loaded and the worker has subscribed
        self.running = False
        self.last_poll = time.monotonic()
        self.on_outcome: Callable[[Outcome], None] | None = None  # tests and metrics hook

    @property
    def assigned(self) -> frozenset[TopicPartitionKey]:
        return frozenset(self._assigned)

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def max_in_flight(self) -> int:
        """MAX_IN_FLIGHT bounds the uncommitted records (being answered, published, or waiting for the commit)."""
        return self.settings.worker.max_in_flight

    @property
    def batch_size(self) -> int:
        """BATCH_SIZE, or by device when unset: batching pays on a GPU, not on a CPU."""
        configured = self.settings.worker.batch_size
        if configured is not None:
            return configured
        return 1 if str(self.segmenter.device).startswith("cpu") else GPU_BATCH_SIZE

    @property
    def backlog(self) -> int:
        """Records waiting for a model-path slot (parsed, not answered by the cache, not decoded yet)."""
        return len(self._backlog)

    def stop(self) -> None:
        """Ask the loop to finish in-flight work and leave the group (safe from any thread or signal handler)."""
        self._stop.set()

    # -- main loop ---------------------------------------------------------------------------------------------------
    def run(self) -> WorkerStats:
        """Consume until :meth:`stop` (or SIGTERM/SIGINT when run on the main thread); returns the counters."""
        kafka = self.settings.kafka
        self.segmenter.warm_up()
        self._install_signal_handlers()
        consumer = make_consumer(kafka, on_commit=self._on_commit, **self._consumer_overrides)
        producer = make_producer(kafka)
        self._consumer, self._producer = consumer, producer
        decode_pool = ThreadPoolExecutor(self.settings.worker.max_workers, thread_name_prefix="segpipe-decode")
        inference = threading.Thread(target=self._inference_loop, name="segpipe-inference", daemon=True)
        inference.start()
        try:
            consumer.subscribe(
                [kafka.input_topic], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
            )
            self.running = True
            self.started.set()
            log.info("worker %s consuming %s as group %s", self.processor.worker_id, kafka.input_topic, kafka.group_id)
            while not self._stop.is_set():
                self._pump()
                self._feed_model_path(decode_pool)
                self._commit_stored()
                self._apply_backpressure()
                uncommitted = self.tracker.count()
                messages = consumer.consume(  # never more than MAX_IN_FLIGHT allows
                    num_messages=max(1, min(_CONSUME_BATCH, self.max_in_flight - uncommitted)),
                    timeout=self._poll_timeout(uncommitted),
                )
                self.last_poll = time.monotonic()
                records = []
                for message in messages:
                    if message.error():
                        if message.error().code() != KafkaError._PARTITION_EOF:
                            log.warning("consume error: %s", message.error())
                        continue
                    records.append(self._record(message))
                if records:
                    self._accept(records, decode_pool)
            self._drain(set(self._assigned), self.settings.worker.shutdown_timeout_s)
        finally:
            self._model_queue.put(None)
            decode_pool.shutdown(wait=False, cancel_futures=True)
            try:
                producer.flush(10)
            finally:
                consumer.close()  # commits the stored offsets and leaves the group
            self.ready.clear()
            self.started.clear()
            self.running = False
            log.info("worker %s stopped: %s", self.processor.worker_id, self.stats)
        return self.stats

    def _poll_timeout(self, uncommitted: int) -> float:
        """Short (5 ms) while an answer or a commit acknowledgement is due any moment, so it is published and the
        offset released without waiting out a poll; long (50 ms) while everything uncommitted is on the model path
        (seconds per image on a CPU): there, 200 wake-ups a second would only take the GIL and a core from the model.
        """
        on_model_path = self._model_path_active + len(self._backlog)
        if uncommitted > on_model_path or self._commit_due or not self._completed.empty():
            return 0.005
        return 0.05

    @staticmethod
    def _record(message: Message) -> InboundRecord:
        return InboundRecord(
            value=message.value(),
            key=message.key(),
            headers=tuple(message.headers() or ()),
            topic=message.topic(),
            partition=message.partition(),
            offset=message.offset(),
            timestamp_ms=message.timestamp()[1] if message.timestamp()[0] else None,
        )

    def _accept(self, records: list[InboundRecord], pool: ThreadPoolExecutor) -> None:
        self.stats.consumed += len(records)
        for record in records:
            self.tracker.add((record.topic, record.partition), record.offset)
        for start in range(0, len(records), _FAST_PATH_CHUNK):
            pool.submit(self._fast_path, records[start : start + _FAST_PATH_CHUNK])

    def _fast_path(self, records: list[InboundRecord]) -> None:
        """Answer what the cache can (decode pool); queue the rest for the model path. Never raises."""
        try:
            items = self.processor.prepare_batch(records)
        except Exception as exc:  # a bug must cost these requests, not the worker
            log.exception("fast path failed for %d records", len(records))
            items = [self.processor.failure(r, InternalError(f"{type(exc).__name__}: {exc}")) for r in records]
        for item in items:
            if isinstance(item, Outcome):
                self._completed.put((item, False))
            else:
                with self._backlog_lock:
                    self._backlog.append(item)

    def _feed_model_path(self, pool: ThreadPoolExecutor) -> None:
        """Start backlog records on the model path while fewer than MAX_WORKERS are on it (poll-loop thread)."""
        while self._backlog and self._model_path_active < self.settings.worker.max_workers:
            with self._backlog_lock:
                item = self._backlog.popleft()
            if not self._ours(item.record):  # its partition was handed back: the new owner answers it
                continue
            self._model_path_active += 1
            pool.submit(self._prepare, item)

    def _prepare(self, item: ParsedRequest) -> None:
        record = item.record
        if not self._ours(record):
            self._completed.put((None, True))
            return
        try:
            prepared = self.processor.prepare(item)
        except Exception as exc:  # a bug must cost one request, not the worker
            log.exception("prepare failed for %s", record.fallback_request_id)
            prepared = self.processor.failure(record, InternalError(f"{type(exc).__name__}: {exc}"))
        if isinstance(prepared, Outcome):
            self._completed.put((prepared, True))
        else:
            self._model_queue.put(prepared)

    def _inference_loop(self) -> None:
        """Collect up to BATCH_SIZE requests, waiting at most BATCH_TIMEOUT_MS after the first, then run them."""
        size = self.batch_size
        window = self.settings.worker.batch_timeout_ms / 1000.0
        while True:
            first = self._model_queue.get()
            if first is None:
                return
            batch = [first]
            deadline = time.monotonic() + window
            while len(batch) < size:
                remaining = deadline - time.monotonic()
                try:
                    item = self._model_queue.get(timeout=remaining) if remaining > 0 else self._model_queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._model_queue.put(None)
                    break
                batch.append(item)
            self.stats.batches += 1
            self._run_batch(batch)

    def _run_batch(self, batch: list[PendingSegmentation]) -> None:
        """One model call; outcomes go to the publisher as each becomes final. Never raises."""
        # Work of partitions handed back meanwhile is skipped: its new owner answers it, and releasing the dedup
        # claim now spares the new owner a wait for a result this worker would only throw away.
        for pending in [p for p in batch if not self._ours(p.record)]:
            self.processor.abandon(pending)
            self._completed.put((None, True))
        batch = [p for p in batch if self._ours(p.record)]
        if not batch:
            return
        emitted: set[int] = set()

        def emit(outcome: Outcome) -> None:
            emitted.add(id(outcome.record))
            self._completed.put((outcome, True))

        try:
            self.processor.segment(batch, emit=emit)
        except Exception as exc:  # never let the inference thread die
            log.exception("inference batch failed")
            for pending in batch:
                if id(pending.record) not in emitted:
                    self._completed.put((self.processor.failure(pending.record, InternalError(str(exc))), True))

    # -- publishing and offsets ----------------------------------------------------------------------------------
    def _pump(self) -> None:
        """Publish finished outcomes and serve delivery callbacks (on this thread)."""
        assert self._producer is not None
        if self._retries:
            now = time.monotonic()
            due = [retry for retry in self._retries if retry[0] <= now]
            self._retries = [retry for retry in self._retries if retry[0] > now]
            for _due, topic, key, value, publication in due:
                self._produce(topic, key, value, publication)
        while True:
            try:
                outcome, took_slot = self._completed.get_nowait()
            except queue.Empty:
                break
            if took_slot:
                self._model_path_active -= 1
            if outcome is None:  # dropped unanswered: its partition was handed back
                continue
            if not self._ours(outcome.record):
                # Its partition was revoked or lost before the work finished and was handed back uncommitted: the
                # new owner answers it (from the dedup cache when this worker stored the result), so publishing it
                # here too would only add a duplicate.
                log.info("not publishing %s: its partition was handed back", outcome.result.request_id)
                continue
            self._publish(_Publication(outcome))
        self._producer.poll(0)

    def _ours(self, record: InboundRecord) -> bool:
        return self.tracker.is_pending((record.topic, record.partition), record.offset)

    def _commit_stored(self) -> None:
        """Commit stored offsets now instead of at the next auto-commit tick (asynchronously, off the hot path).

        After a kill -9 the group redelivers everything above the committed offsets; committing as soon as results
        are delivered keeps that to what was in flight, rather than up to a second's worth of delivered results.
        """
        if not self._commit_due or self._consumer is None:
            return
        now = time.monotonic()
        if now - self._last_commit < _COMMIT_INTERVAL_S and self.tracker.count() < self.max_in_flight:
            return
        self._commit_due = False
        self._last_commit = now
        try:
            self._consumer.commit(asynchronous=True)
        except KafkaException as exc:  # nothing stored for our partitions any more, or mid-rebalance
            log.debug("commit: %s", exc)

    def _publish(self, publication: _Publication) -> None:
        assert self._producer is not None
        outcome, kafka = publication.outcome, self.settings.kafka
        key = outcome.result.request_id.encode()
        topics = [kafka.output_topic]
        if outcome.reply_to and outcome.reply_to != kafka.output_topic:
            topics.append(outcome.reply_to)
        # Without a registry the processor's plain encoding (also what the dedup cache stores) goes out as is.
        targets = [
            (
                topic,
                self.codec.encode_result(outcome.result, topic) if self.codec.uses_registry else outcome.result_bytes,
            )
            for topic in topics
        ]
        if outcome.dead_letter is not None:
            topic = kafka.dead_letter_topic
            targets.append((topic, self.codec.encode_dead_letter(outcome.dead_letter, topic)))
        publication.waiting = len(targets)
        for topic, value in targets:
            self._produce(topic, key, value, publication, best_effort=topic == outcome.reply_to)

    def _produce(
        self, topic: str, key: bytes, value: bytes, publication: _Publication, *, best_effort: bool = False
    ) -> None:
        """Produce until delivered. A reply topic is best effort: its gateway may be gone (and its topic deleted),
        and the output topic holds the same result, so a failed reply never holds back the offset."""
        assert self._producer is not None

        def delivered(error: KafkaError | None, _message: Message) -> None:
            if error is not None and not best_effort:
                self.stats.delivery_retries += 1
                log.warning("delivery to %s failed (%s): retrying", topic, error)
                self._produce(topic, key, value, publication)
                return
            if error is not None:
                log.warning("reply to %s not delivered (%s): the output topic has the result", topic, error)
            publication.waiting -= 1
            if publication.waiting == 0:
                self._published(publication.outcome)

        while True:
            try:
                self._producer.produce(topic, value=value, key=key, on_delivery=delivered)
                return
            except BufferError:  # local queue full: serve callbacks, then try again
                self._producer.poll(0.1)
            except KafkaException as exc:
                # Refused before sending (a topic name librdkafka rejects or has marked unknown, a message over
                # message.max.bytes...). Raised here it would escape poll() and kill the worker, and the record,
                # redelivered, would kill the next one: a poison pill.
                if best_effort:
                    log.warning("reply to %r not sent (%s): the output topic has the result", topic, exc.args[0])
                    delivered(None, None)  # type: ignore[arg-type]
                else:
                    self.stats.delivery_retries += 1
                    log.warning("produce to %s refused (%s): retrying in %.0f s", topic, exc.args[0], _RETRY_DELAY_S)
                    self._retries.append((time.monotonic() + _RETRY_DELAY_S, topic, key, value, publication))
                return

    def _published(self, outcome: Outcome) -> None:
        record = outcome.record
        result = outcome.result
        self.stats.results += 1
        if result.error is not None:
            self.stats.errors += 1
            self.stats.by_error[result.error.code] += 1
        else:
            self.stats.by_model[str(result.model)] += 1
            if result.fallback_reason is not None:
                self.stats.by_fallback[str(result.fallback_reason)] += 1
        if result.cached:
            self.stats.cache_hits += 1
        if outcome.dead_letter is not None:
            self.stats.dead_letters += 1
        log.log(
            logging.DEBUG if result.cached else logging.INFO,  # repeats can come by the thousand per second
            "result %s: %s model=%s fallback=%s masks=%d cached=%s",
            result.request_id,
            result.status,
            result.model,
            result.fallback_reason,
            len(result.masks),
            result.cached,
            extra={"request_id": result.request_id, "partition": record.partition, "offset": record.offset},
        )
        if self.on_outcome is not None:
            self.on_outcome(outcome)
        next_offset = self.tracker.done((record.topic, record.partition), record.offset)
        if next_offset is not None and self._consumer is not None:
            try:
                self._consumer.store_offsets(offsets=[TopicPartition(record.topic, record.partition, next_offset)])
                self._commit_due = True
            except KafkaException as exc:  # partition no longer ours: the new owner redoes it
                log.info("could not store offset %s:%s@%s: %s", record.topic, record.partition, next_offset, exc)

    def _apply_backpressure(self) -> None:
        """Pause fetching while MAX_IN_FLIGHT records are uncommitted or MAX_WORKERS wait for the model path; keep
        polling so the group keeps us. Resume at half of both (each resume costs a fetch round trip)."""
        assert self._consumer is not None
        in_flight, backlog, max_workers = self.tracker.count(), len(self._backlog), self.settings.worker.max_workers
        full = in_flight >= self.max_in_flight or backlog >= max_workers
        if not self._paused and full and self._assigned:
            self._consumer.pause([TopicPartition(t, p) for t, p in self._assigned])
            self._paused = True
            waiting = in_flight - self.tracker.count(unacknowledged=False)
            log.debug("paused: %d uncommitted (%d waiting for a commit), backlog %d", in_flight, waiting, backlog)
        elif self._paused and in_flight <= self.max_in_flight // 2 and backlog <= max_workers // 2:
            started = time.perf_counter()
            resume_now(self._consumer, [TopicPartition(t, p) for t, p in self._assigned])
            self._paused = False
            log.debug("resumed (%.1f ms): %d uncommitted, backlog %d", ms_since(started), in_flight, backlog)

    def _drain(self, partitions: set[TopicPartitionKey], timeout: float) -> bool:
        """Publish in-flight work of ``partitions`` until none is left or ``timeout``; True when all finished."""
        assert self._producer is not None
        deadline = time.monotonic() + timeout
        # Records still in the backlog are not started: handed back at once rather than waited for.
        while self.tracker.count(partitions, unacknowledged=False) > self._backlog_count(partitions):
            if time.monotonic() >= deadline:
                break
            self._pump()
            self._producer.poll(0.02)
        self._producer.flush(max(0.0, deadline - time.monotonic()))
        self._pump()
        return self.tracker.count(partitions, unacknowledged=False) == 0

    def _backlog_count(self, partitions: set[TopicPartitionKey]) -> int:
        with self._backlog_lock:
            return sum((item.record.topic, item.record.partition) in partitions for item in self._backlog)

    def _purge_backlog(self, partitions: set[TopicPartitionKey]) -> None:
        """Drop unstarted work of partitions handed back: if one came back to us, its records are redelivered, and
        a stale copy left here would be answered twice."""
        with self._backlog_lock:
            kept = [item for item in self._backlog if (item.record.topic, item.record.partition) not in partitions]
            self._backlog = collections.deque(kept)

    # -- rebalance callbacks (run inside consumer.poll on this thread) -------------------------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._assigned |= {(tp.topic, tp.partition) for tp in partitions}
        if self._paused and partitions:
            consumer.pause(partitions)
        self.ready.set()
        log.info("assigned %s", sorted(self._assigned))

    def _on_commit(self, error: KafkaError | None, partitions: list[TopicPartition]) -> None:
        """Commit acknowledgements (ours and auto-commit's, served by poll): release the backpressure they held."""
        if error is not None and error.code() != KafkaError._NO_OFFSET:
            log.debug("commit failed: %s", error)
        for tp in partitions or ():
            if tp.error is None and tp.offset >= 0:
                self.tracker.committed((tp.topic, tp.partition), tp.offset)

    def _revoke_timeout(self) -> float:
        """How long a revocation may wait for in-flight work of the revoked partitions.

        The whole group's rebalance waits for this callback, and a member that does not rejoin within the rebalance
        timeout (max.poll.interval.ms) is expelled, which starts another rebalance: so at most half of it. What is
        not finished by then is handed back uncommitted.
        """
        return min(self.settings.worker.shutdown_timeout_s, self.settings.kafka.max_poll_interval_ms / 2000.0)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        revoked = {(tp.topic, tp.partition) for tp in partitions}
        log.info("revoked %s", sorted(revoked))
        finished = self._drain(revoked, self._revoke_timeout())
        if not finished:
            unfinished = self.tracker.count(revoked, unacknowledged=False)
            log.warning("handing back %d unfinished records of %s", unfinished, sorted(revoked))
        try:
            consumer.commit(asynchronous=False)
        except KafkaException as exc:  # e.g. ILLEGAL_GENERATION mid-rebalance, or nothing stored yet
            log.info("commit on revoke: %s", exc)
        self.tracker.forget(revoked)
        self._purge_backlog(revoked)
        self._assigned -= revoked

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        lost = {(tp.topic, tp.partition) for tp in partitions}
        log.warning("partitions lost: %s (their in-flight work will be redone by the new owner)", sorted(lost))
        self.tracker.forget(lost)
        self._purge_backlog(lost)
        self._assigned -= lost

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: self.stop())


def _preflight(settings: AppSettings) -> None:
    """Say in one line at start when the broker or Redis is missing; the worker still starts and waits for them
    (in a deployment they may come up later), but the reason is not lost among the client's reconnect logs."""
    try:
        check_kafka(settings.kafka)
    except ServiceUnavailable as exc:
        log.error("%s; waiting for it", exc)
    if settings.redis.enabled:
        try:
            check_redis(settings.redis, timeout=2.0)
        except ServiceUnavailable as exc:
            log.warning("%s; working without dedup until it answers", exc)


def main(argv: list[str] | None = None) -> None:
    """``segpipe worker``: every flag is also an environment variable (shown in --help)."""
    parser = argparse.ArgumentParser(description="segpipe worker: segment images from Kafka")
    parser.add_argument("--log-level", default=None, help="env LOG_LEVEL (default INFO)")
    parser.parse_args(argv)
    from segpipe.logs import configure_logging

    configure_logging()
    settings = AppSettings()
    settings.models = discover_checkpoints(settings.models)  # unset paths: the files set-up built
    log.info("%s", describe_checkpoints(settings.models))
    _preflight(settings)
    # Per-partition lag for /metrics, from librdkafka's statistics (served on the poll loop's thread).
    lag = LagTracker()
    worker = Worker(settings, consumer_overrides=lag.consumer_config() if settings.worker.metrics_port else None)
    server = None
    if settings.worker.metrics_port:
        from consumers.metrics import MetricsServer, WorkerMetrics

        metrics = WorkerMetrics()
        metrics.attach(worker)
        metrics.registry.register(LagCollector(lag, worker))
        server = MetricsServer(worker, metrics, port=settings.worker.metrics_port).start()
        log.info("metrics and health on :%d (/metrics, /health/live, /health/ready)", server.port)
    try:
        worker.run()
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
