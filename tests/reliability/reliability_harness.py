"""Helpers for the reliability tests: publish while watching, follow topics in the background, read offsets.

Everything talks to the real broker from the test process, independently of the worker code under test, so a bug in
the worker cannot hide itself from the checks.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import cv2
import numpy as np
import psutil
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition
from worker_harness import PipelineTopics, WorkerProcess

from devstack.services import FAST_GROUP_CONFIG
from schemas import SegmentRequest, SegmentResultMessage, decode_dead_letter, decode_result, encode_request
from schemas.headers import request_headers
from schemas.messages import DeadLetter

Headers = list[tuple[str, bytes]]
TopicsFactory = Callable[..., PipelineTopics]  # the make_topics fixture
Launcher = Callable[..., WorkerProcess]  # the launcher fixture
Report = Callable[..., None]  # the report fixture
Follow = Callable[[str, str], "TopicFollower"]  # the follow fixture
Record = tuple[bytes | None, bytes | None, Headers]


def noise_image(seed: int, height: int, width: int, fmt: str = ".png") -> bytes:
    """An encoded image of seeded noise: distinct seeds give distinct pixels, equal seeds equal bytes.

    Noise, because the random-weight FastSAM finds masks in it at conf 0.005 (so SAM2, ~10 s an image on one core,
    is not needed); 96x128 is the smallest size where that holds for every seed used here.
    """
    pixels = (np.random.default_rng(seed).random((height, width, 3)) * 255).astype(np.uint8)
    ok, encoded = cv2.imencode(fmt, pixels)
    assert ok
    return encoded.tobytes()


def avro_record(request_id: str, image: bytes, **fields: object) -> Record:
    """An Avro request record as the producer API would publish it."""
    request = SegmentRequest(request_id=request_id, image=image, **fields)  # type: ignore[arg-type]
    return request_id.encode(), encode_request(request), request_headers(request)


@dataclass(frozen=True, slots=True)
class Placed:
    """Where the broker stored a request."""

    request_id: str
    partition: int
    offset: int


class Publisher:
    """An idempotent producer that remembers where each request landed (partition, offset) from delivery reports."""

    def __init__(self, bootstrap: str, topic: str, *, max_message_bytes: int = 20_000_000, **config: object) -> None:
        self.topic = topic
        self.placed: dict[str, Placed] = {}
        self.errors: list[str] = []
        self._producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "message.max.bytes": max_message_bytes,
                "enable.idempotence": True,
                "acks": "all",
                **config,
            }
        )

    def send(self, record: Record, partition: int | None = None) -> None:
        """Produce one record (to ``partition`` when given, else by key hash); delivery is recorded, not awaited."""
        key, value, headers = record
        request_id = (key or b"").decode()
        where = {} if partition is None else {"partition": partition}

        def delivered(error: KafkaError | None, message: Message) -> None:
            if error is not None:
                self.errors.append(f"{request_id}: {error}")
            else:
                self.placed[request_id] = Placed(request_id, message.partition(), message.offset())

        while True:
            try:
                self._producer.produce(
                    self.topic, key=key, value=value, headers=headers, on_delivery=delivered, **where
                )
                break
            except BufferError:
                self._producer.poll(0.1)
        self._producer.poll(0)

    def send_all(self, records: Iterable[Record]) -> None:
        for record in records:
            self.send(record)
        self.flush()

    def flush(self, timeout: float = 60.0) -> None:
        remaining = self._producer.flush(timeout)
        assert remaining == 0, f"{remaining} records not delivered after {timeout}s"
        assert not self.errors, self.errors

    def ends(self) -> dict[int, int]:
        """Partition -> next offset after the last record this publisher placed there."""
        ends: dict[int, int] = {}
        for placed in self.placed.values():
            ends[placed.partition] = max(ends.get(placed.partition, 0), placed.offset + 1)
        return ends


@dataclass(frozen=True, slots=True)
class Seen:
    """One record read from a topic, with the broker timestamp (ms) it carries."""

    value: bytes
    timestamp_ms: int
    partition: int
    offset: int


class TopicFollower:
    """Reads a topic from the beginning on a background thread, so a test can watch results arrive while it acts.

    Records are kept by (partition, offset): when the follower re-reads after a broker restart (its uncommitted
    group position is gone), a record read twice is still one record, not a duplicate result.
    """

    def __init__(self, bootstrap: str, topic: str) -> None:
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"follower-{uuid.uuid4().hex}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "fetch.max.bytes": 52_428_800,
            }
            | FAST_GROUP_CONFIG
        )
        self._consumer.subscribe([topic])
        self._seen: dict[tuple[int, int], Seen] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"follow-{topic}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                message = self._consumer.poll(0.2)
                if message is None or message.error():
                    continue
                seen = Seen(message.value(), message.timestamp()[1], message.partition(), message.offset())
                with self._lock:
                    self._seen.setdefault((seen.partition, seen.offset), seen)
        finally:
            self._consumer.close()

    def snapshot(self) -> list[Seen]:
        with self._lock:
            return sorted(self._seen.values(), key=lambda seen: (seen.partition, seen.offset))

    def results(self) -> list[SegmentResultMessage]:
        return [decode_result(seen.value) for seen in self.snapshot()]

    def dead_letters(self) -> list[DeadLetter]:
        return [decode_dead_letter(seen.value) for seen in self.snapshot()]

    def wait_for(self, done: Callable[[], bool], timeout: float, what: str) -> None:
        """Poll ``done()`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
            time.sleep(0.25)

    def wait_request_ids(self, request_ids: Iterable[str], timeout: float) -> list[SegmentResultMessage]:
        """Wait until every request id has at least one result; returns all results read so far."""
        wanted = set(request_ids)

        def missing() -> set[str]:
            return wanted - {result.request_id for result in self.results()}

        try:
            self.wait_for(lambda: not missing(), timeout, "results")
        except AssertionError:
            lost = sorted(missing())
            raise AssertionError(f"{len(lost)} requests without a result after {timeout:.0f}s: {lost[:20]}") from None
        return self.results()

    def close(self) -> None:
        """Stop reading (idempotent); the records read so far stay available."""
        self._stop.set()
        self._thread.join(10)


def committed_offsets(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    """The group's committed offsets, read without joining the group (negative: nothing committed yet)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        found = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
    finally:
        consumer.close()
    return {tp.partition: tp.offset for tp in found}


def duplicates(results: Iterable[SegmentResultMessage]) -> Counter[str]:
    """request_id -> extra copies (0 entries left out): what at-least-once delivery cost."""
    counts = Counter(result.request_id for result in results)
    return Counter({request_id: n - 1 for request_id, n in counts.items() if n > 1})


def rss(worker: WorkerProcess) -> int:
    """Resident memory of a worker process, in bytes (read from outside, like an orchestrator would)."""
    return int(psutil.Process(worker.process.pid).memory_info().rss)
