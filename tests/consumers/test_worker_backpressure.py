"""MAX_IN_FLIGHT_MB on a running worker (real broker, Redis and tiny models): a backlog of large requests is held
in memory only up to the byte bound, however many records MAX_IN_FLIGHT and MAX_WORKERS would let it take."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable

from kafka_harness import noise_png
from worker_harness import PipelineTopics

from consumers.offsets import OffsetTracker, TopicPartitionKey
from consumers.worker import Worker
from producers.publisher import SegmentationProducer
from producers.results import follow_results
from segpipe.config import AppSettings

REQUESTS = 24


class _PeakTracker(OffsetTracker):
    """The worker's own tracker, noting the most bytes it held right after each consumed record (not sampled)."""

    def __init__(self) -> None:
        super().__init__()
        self.peak = 0
        self.added = 0

    def add(self, tp: TopicPartitionKey, offset: int, size: int = 0) -> None:
        super().add(tp, offset, size)
        self.added += 1
        self.peak = max(self.peak, self.held_bytes())


def test_a_backlog_of_large_requests_is_held_up_to_the_byte_bound(
    worker_settings: Callable[..., AppSettings],
    topic_factory,  # type: ignore[no-untyped-def]
) -> None:
    topics = PipelineTopics(
        input=topic_factory("requests"),
        output=topic_factory("results"),
        dead_letter=topic_factory("dead"),
        group=f"g-{uuid.uuid4().hex[:8]}",
    )
    # 64 model-path slots and 4,096 records would let the worker take every request at once; 1 MiB lets it hold ~8.
    settings = worker_settings(topics, worker={"max_in_flight_mb": 1, "max_workers": 64, "max_in_flight": 4096})
    images = [noise_png(seed, 200, 200) for seed in range(REQUESTS)]  # ~120 KB each: distinct, all computed
    largest = max(len(image) for image in images)
    assert REQUESTS * largest > 2 * 2**20, "together they are well over the bound"

    worker = Worker(settings)
    tracker = worker.tracker = _PeakTracker()
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        assert worker.ready.wait(120), "the worker joined its group"
        with SegmentationProducer(settings.kafka) as producer:
            ids = {producer.publish(image) for image in images}
            producer.flush()
        results = list(follow_results(settings.kafka, request_ids=ids, timeout_s=300))
        assert {r.request_id for r in results} == ids
        assert all(r.status.value == "ok" for r in results), [r.error for r in results if r.error]
    finally:
        worker.stop()
        thread.join(60)
    # Each record's envelope (the Avro request around the PNG) adds a little to the image itself.
    record_bytes = largest + 1024
    assert tracker.added == REQUESTS
    assert tracker.peak <= 2**20 + record_bytes, f"held {tracker.peak} bytes, bound 1 MiB + one record"
    assert tracker.held_bytes() == 0, "every payload released once its result was delivered"
