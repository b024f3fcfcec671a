"""The worker: a consumer-group member that segments requests and publishes Avro results, at least once.

This module only composes the stages, each a module with its own state and one hand-off:

- :mod:`consumers.consumer_loop` (the caller's thread) polls records, follows the assignment, pauses and resumes,
  stores and commits offsets (:mod:`consumers.offsets`); back-pressure is :mod:`consumers.backpressure`;
- :mod:`consumers.decode` (MAX_WORKERS threads) answers repeats from the cache and prepares the rest for the model;
- :mod:`consumers.batcher` (the inference thread) runs micro-batches through the engine;
- :mod:`consumers.outbox` brings finished records back to the poll-loop thread, where :mod:`consumers.sink`
  publishes them; an offset is stored only once every message of its record is delivered.

One :class:`Lifecycle` stops them all (SIGTERM/SIGINT, :meth:`Worker.stop`): stop taking records, finish what
finishes within SHUTDOWN_TIMEOUT_S in total, hand the rest back uncommitted, flush, commit, close, exit 0.
"""

from __future__ import annotations

import os

# Before anything loads torch: the models run on the inference thread, and OpenMP's default spin-waiting of the
# other threads' pools took the cores from it (bench/README.md, "Where (b) loses to (a)"). An explicit value wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import gc
import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from consumers import backpressure
from consumers.batcher import MicroBatcher
from consumers.consumer_loop import ConsumerLoop
from consumers.decode import DecodeStage
from consumers.dedup import DedupCache
from consumers.lag import LagCollector, LagTracker
from consumers.lifecycle import Lifecycle
from consumers.offsets import OffsetTracker, TopicPartitionKey
from consumers.outbox import Outbox
from consumers.processor import InboundRecord, Outcome, RequestProcessor
from consumers.sink import ResultSink
from consumers.state import WorkerState
from pipeline.checkpoints import describe_checkpoints, discover_checkpoints
from pipeline.segmenter import Segmenter
from schemas.registry import WireCodec
from segpipe.config import AppSettings
from segpipe.kafka import make_consumer, make_producer
from segpipe.preflight import ServiceUnavailable, check_kafka, check_redis

log = logging.getLogger(__name__)

GPU_BATCH_SIZE = 4  # BATCH_SIZE when unset on a GPU
CONSUME_BATCH = 256  # most records taken from the client per poll
CACHE_CLOSE_S = 0.5  # the cache's close (a Redis round trip) may run this long past the deadline
MIB = 1024 * 1024
MARK_INTERVAL_S = 0.02  # delivered records are marked answered at least this often (the commit interval)...
MARK_BATCH = 256  # ...or once this many are waiting


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
        freeze_gc: bool = False,
    ) -> None:
        """``freeze_gc``: once the models are loaded, move every object to the collector's permanent generation
        (for the worker's own process; not for one that starts several workers)."""
        self.settings = settings
        self._freeze_gc = freeze_gc
        self.lifecycle = Lifecycle(settings.worker.shutdown_timeout_s)
        self.segmenter = segmenter or Segmenter(settings.models)
        self._own_cache = cache is None and settings.redis.enabled
        if self._own_cache:  # its claim waits end on our stop
            cache = DedupCache(settings.redis, stop=self.lifecycle.stopping)
        self.codec = codec if codec is not None else WireCodec(settings.registry)
        self.processor = RequestProcessor(
            self.segmenter,
            cache,
            worker_id=settings.worker.worker_id,
            codec=self.codec,
            max_record_bytes=settings.kafka.message_max_bytes,
            scope=settings.kafka.group_id,
        )
        self.tracker = OffsetTracker()
        self._consumer_overrides = consumer_overrides or {}
        self.ready = threading.Event()  # set once partitions are assigned
        self.started = threading.Event()  # set once models are loaded and the worker has subscribed
        self.running = False
        self.consumed = self.published = 0
        self.answered_again = 0  # redelivered records skipped: this group had delivered their results
        self._delivered: list[InboundRecord] = []  # to mark as answered (poll-loop thread)
        self._last_mark = 0.0
        self.on_outcome: Callable[[Outcome], None] | None = None  # tests and metrics hook
        self.lingering: list[str] = []  # stage threads still busy at the end of run() (inside the model)
        self._loop: ConsumerLoop | None = None
        self._decode: DecodeStage | None = None

    @property
    def assigned(self) -> frozenset[TopicPartitionKey]:
        return frozenset(self._loop.assigned) if self._loop else frozenset()

    @property
    def paused(self) -> bool:
        return self._loop.paused if self._loop else False

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
        return self._decode.backlog if self._decode else 0

    def stop(self) -> None:
        """Ask the worker to finish and leave the group (safe from any thread or signal handler)."""
        self.lifecycle.stop()

    def snapshot(self) -> WorkerState:
        """What metrics and health read."""
        loop, cache = self._loop, self.processor.cache
        return WorkerState(
            worker_id=self.processor.worker_id,
            running=self.running,
            started=self.started.is_set(),
            stopping=self.lifecycle.is_stopping,
            since_last_poll_s=time.monotonic() - loop.last_poll if loop else 0.0,
            stall_after_s=self.settings.kafka.max_poll_interval_ms / 2000.0,
            assigned_partitions=len(self.assigned),
            paused=self.paused,
            in_flight=self.tracker.count(),
            held_bytes=self.tracker.held_bytes(),
            backlog=self.backlog,
            consumed=self.consumed,
            published=self.published,
            answered_again=self.answered_again,
            redis_healthy=None if cache is None else cache.healthy,
        )

    def run(self) -> WorkerState:
        """Consume until :meth:`stop` (or SIGTERM/SIGINT when run on the main thread); returns the final state."""
        kafka, lifecycle = self.settings.kafka, self.lifecycle
        lifecycle.install_signal_handlers()
        pipeline = self._build()
        self._loop, self._decode = pipeline.loop, pipeline.decode
        # The group join runs on librdkafka's thread while the models load (a scale-out pays the longer of the two,
        # not their sum); the assignment is taken at the first poll, once the models are ready.
        pipeline.loop.subscribe()
        try:
            self.segmenter.warm_up()
        except BaseException:
            pipeline.loop.close()  # leave the group now rather than after the session timeout
            raise
        if self._freeze_gc:
            # The models' objects live as long as the process; frozen, the collector's full passes, which the
            # per-record garbage of a stream of cache hits sets off, no longer walk them.
            gc.collect()
            gc.freeze()
        if lifecycle.is_stopping:  # stopped while the models loaded
            pipeline.loop.close()
            self._close_cache()
            return self.snapshot()
        try:
            pipeline.start()
            self.running = True
            self.started.set()
            log.info("worker %s consuming %s as group %s", self.processor.worker_id, kafka.input_topic, kafka.group_id)
            while not lifecycle.is_stopping:
                self.consumed += pipeline.turn()
        finally:
            lifecycle.stop()  # also after an unexpected error: the same bounded path
            self.lingering = pipeline.shut_down()
            self._close_cache()
            self.started.clear()
            self.running = False
            log.info(
                "worker %s stopped: consumed %d, published %d", self.processor.worker_id, self.consumed, self.published
            )
        return self.snapshot()

    def _build(self) -> _Pipeline:
        """The stages and their hand-offs."""
        kafka, worker, lifecycle = self.settings.kafka, self.settings.worker, self.lifecycle
        sink = ResultSink(make_producer(kafka), kafka, self.codec, published=self._published)
        outbox = Outbox(self.tracker, sink, lifecycle, answered=self._answered_before)
        model: MicroBatcher | None = None
        decode = DecodeStage(
            self.processor,
            lifecycle,
            threads=worker.max_workers,
            finish=outbox.put,
            to_model=lambda pending: model.put(pending),  # type: ignore[union-attr]
            ours=self._ours,
        )
        window = worker.batch_timeout_ms / 1000.0
        model = MicroBatcher(
            self.processor,
            lifecycle,
            size=self.batch_size,
            window_s=window,
            finish=decode.leave_model_path,
            ours=self._ours,
        )
        loop = ConsumerLoop(
            lambda **callbacks: make_consumer(kafka, **callbacks, **self._consumer_overrides),
            kafka,
            self.tracker,
            lifecycle,
            # The whole group's rebalance waits for a revocation, and a member that does not rejoin within
            # max.poll.interval.ms is expelled (another rebalance): so at most half of it.
            revoke_timeout_s=min(worker.shutdown_timeout_s, kafka.max_poll_interval_ms / 2000.0),
            ready=self.ready,
            drain=lambda partitions, deadline: self._drain(outbox, partitions, deadline),
            hand_back=decode.hand_back,
        )
        limits = backpressure.Limits(self.max_in_flight, worker.max_workers, worker.max_in_flight_mb * MIB)
        mark = lambda: self._mark_delivered(decode.run)  # noqa: E731
        # Until a poll shows what records weigh, assume the largest a record may be (kafka.message_max_bytes).
        return _Pipeline(
            lifecycle, self.tracker, limits, loop, decode, model, outbox, sink, mark, kafka.message_max_bytes
        )

    def _mark_delivered(self, run: Callable[[Callable[[], None]], None], *, now: bool = False) -> None:
        """Mark the records delivered so far as answered, by ``run`` (a stage thread, or at once): every
        MARK_INTERVAL_S or MARK_BATCH records (a Redis round trip per poll-loop turn cost more than the hits)."""
        due = now or len(self._delivered) >= MARK_BATCH or time.monotonic() - self._last_mark >= MARK_INTERVAL_S
        if self._delivered and due:
            records, self._delivered = self._delivered, []
            self._last_mark = time.monotonic()
            run(lambda: self.processor.mark_answered(records))

    def _drain(self, outbox: Outbox, partitions: set[TopicPartitionKey], deadline: float) -> bool:
        """A revocation's drain; then the marks, at once: the partitions' next owner may fetch these records next."""
        drained = outbox.drain(partitions, deadline)
        self._mark_delivered(lambda task: task(), now=True)
        return drained

    def _answered_before(self, record: InboundRecord) -> None:
        """A redelivered record this group had delivered: its offset moves on, nothing is published again."""
        self.answered_again += 1
        log.debug("%s:%s@%s was answered before: not published again", record.topic, record.partition, record.offset)
        self._done(record)

    def _done(self, record: InboundRecord) -> None:
        """The record is finished: store its partition's offset if it can advance."""
        next_offset = self.tracker.done((record.topic, record.partition), record.offset)
        if next_offset is not None and self._loop is not None:
            self._loop.store(record, next_offset)

    def _close_cache(self) -> None:
        """Drop our liveness key so peers take over claims we still hold at once. Against a hung Redis that is a
        socket timeout or two, so it gets what is left of the deadline (at least CACHE_CLOSE_S) and no more."""
        if not self._own_cache or self.processor.cache is None:
            return
        closer = threading.Thread(target=self.processor.cache.close, name="segpipe-cache-close", daemon=True)
        closer.start()
        closer.join(max(self.lifecycle.remaining(), CACHE_CLOSE_S))
        self.lingering += [closer.name] if closer.is_alive() else []

    def _ours(self, record: InboundRecord) -> bool:
        return self.tracker.is_pending((record.topic, record.partition), record.offset)

    def _published(self, outcome: Outcome) -> None:
        """Every message of ``outcome`` is delivered: account it and store its offset (poll-loop thread)."""
        record = outcome.record
        self.published += 1
        _log_result(outcome)
        if self.on_outcome is not None:
            self.on_outcome(outcome)
        self._done(record)
        if self.processor.scope is not None:
            self._delivered.append(record)


def _log_result(outcome: Outcome) -> None:
    result, record = outcome.result, outcome.record
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


@dataclass(slots=True)
class _Pipeline:
    """One run's stages, wired: a turn of the poll loop, and the shutdown sequence."""

    lifecycle: Lifecycle
    tracker: OffsetTracker
    limits: backpressure.Limits
    loop: ConsumerLoop
    decode: DecodeStage
    model: MicroBatcher
    outbox: Outbox
    sink: ResultSink
    mark: Callable[[], None]  # marks the records delivered since the last turn as answered
    record_bytes: int  # the largest record of the last poll that took any: what the next poll expects per record

    def start(self) -> None:
        self.decode.start()
        self.model.start()

    def turn(self) -> int:
        """Publish what finished, feed the model path, commit, pace, poll and hand the records on; how many."""
        loop, decode, outbox, limits = self.loop, self.decode, self.outbox, self.limits
        outbox.pump()
        self.mark()
        decode.feed()
        loop.commit_stored(limits.max_in_flight)
        in_flight = self.tracker.count()
        held = self.tracker.held_bytes()
        loop.pause(backpressure.should_pause(loop.paused, in_flight, decode.backlog, limits, held))
        answer_due = loop.commit_due or not outbox.empty()
        timeout = backpressure.poll_timeout(in_flight, decode.active + decode.backlog, answer_due)
        most = backpressure.fetch_size(in_flight, limits, CONSUME_BATCH, held, self.record_bytes)
        records = loop.poll(most, timeout)
        sizes = [len(record.value or b"") for record in records]
        for record, size in zip(records, sizes, strict=True):
            self.tracker.add((record.topic, record.partition), record.offset, size)
        if sizes:
            self.record_bytes = max(1, max(sizes))
        decode.submit(records)
        return len(records)

    def shut_down(self) -> list[str]:
        """Every phase shares the one deadline: hand back, drain, flush, close, join. The names of the stage threads
        still busy at the deadline (inside the model)."""
        lifecycle = self.lifecycle
        log.info("stopping: up to %.1f s to finish in-flight work", lifecycle.remaining())
        self.decode.hand_back(None)
        if not self.outbox.drain(None, lifecycle.deadline):
            log.warning("handing back %d unfinished records at the shutdown deadline", self.tracker.owed())
        self.model.close()
        self.decode.close()
        undelivered = self.sink.flush(lifecycle.remaining())
        if undelivered:
            log.warning("%d messages not delivered by the deadline: their records stay uncommitted", undelivered)
        self.loop.close()  # commits what is stored and leaves the group; its revocation waits no further
        return self.model.join(lifecycle.deadline) + self.decode.join(lifecycle.deadline)


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
    worker = Worker(
        settings, consumer_overrides=lag.consumer_config() if settings.worker.metrics_port else None, freeze_gc=True
    )
    worker.lifecycle.install_signal_handlers()  # before the models load: a stop then ends the start-up
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
    if worker.lingering:
        log.warning("exiting with %s still busy past the shutdown deadline", ", ".join(worker.lingering))
    # Everything the process owes the outside is done here: results delivered or handed back uncommitted, offsets
    # committed, the group left, Redis claims released. What is left would only cost time or the exit code: a stage
    # thread still inside torch past the deadline (a Python thread cannot be interrupted there; interpreter exit
    # would wait for it, or, were it a daemon, abort inside torch: "terminate called without an active exception",
    # SIGABRT), and the interpreter's teardown of the loaded models (1.5-2.5 s measured here). Hence a plain exit 0.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
