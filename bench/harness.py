"""The pipeline side of the benchmark: worker processes, a light request publisher and a light result reader.

Kept light on purpose: the machine may have as few cores as the model uses, so the measuring process must not
steal them, and it must keep up with a worker answering dedup hits (thousands of results per second). The reader
takes records in batches (``consume(500)``), keeps each one's raw bytes and arrival time under its request id (read
straight from the Avro bytes: the first field) and decodes nothing on its thread; :func:`decode_arrivals` decodes
them, through a projection of the result schema that skips ``masks``, after the scenario's clock has stopped. The
publisher produces a burst whole, then flushes, with a local queue large enough for it.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import fastavro
import psutil
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition

from devstack.services import stop_process
from pipeline.types import SegmentParams
from schemas import RESULT_SCHEMA, SegmentRequest, encode_request, now_ms, request_headers, schema_text
from segpipe.config import KafkaSettings
from segpipe.kafka import make_producer

REPO_ROOT = Path(__file__).resolve().parent.parent

#: The per-stage keys a result's ``timings_ms`` may carry, in pipeline order (batch_size is not a duration).
STAGES = ("decode", "dedup", "queue", "preprocess", "fastsam", "sam2", "postprocess")

#: Records the reader takes per ``consume`` call.
CONSUME_BATCH = 500

#: The publisher's local queue: room for a burst of 10,000+ requests without BufferError (librdkafka's defaults
#: are 100,000 messages and 1 GiB, i.e. ~1,800 requests of a 0.55 MB PNG). Past it, produce() waits for
#: deliveries and the publisher counts a stall (``RequestPublisher.stalls``, reported per scenario).
PRODUCER_QUEUE = {"queue.buffering.max.messages": 1_000_000, "queue.buffering.max.kbytes": 4 * 2**20}


def _light_result_schema() -> Any:
    """The result schema without ``masks``: fastavro skips the masks instead of building Python objects."""
    schema = json.loads(schema_text("SegmentResult"))
    schema["fields"] = [f for f in schema["fields"] if f["name"] != "masks"]
    return fastavro.parse_schema(schema)


_LIGHT_SCHEMA = _light_result_schema()


@dataclass(frozen=True, slots=True)
class Received:
    """What the benchmark needs from one result, and when it arrived (epoch seconds)."""

    request_id: str
    status: str
    model: str | None
    cached: bool
    worker_id: str
    timings_ms: dict[str, float]
    created_at_ms: int
    error_code: str | None
    size_bytes: int
    received_at: float


@dataclass(frozen=True, slots=True)
class Arrival:
    """One result as the reader keeps it: the raw record value and when it arrived (epoch seconds)."""

    value: bytes
    received_at: float


def peek_request_id(data: bytes) -> str:
    """The ``request_id`` of a schemaless Avro result without decoding the rest: it is the schema's first field
    (a string: zig-zag varint length, then UTF-8), and fields are only ever appended, so it stays first."""
    shift = value = position = 0
    while True:
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            break
        shift += 7
        if shift > 63:
            raise ValueError("bad varint")
    length = (value >> 1) ^ -(value & 1)
    if length < 0 or position + length > len(data):
        raise ValueError(f"bad request_id length {length}")
    return data[position : position + length].decode("utf-8")


def decode_light(data: bytes, received_at: float) -> Received:
    """Decode a result's header fields only (not its masks)."""
    record = fastavro.schemaless_reader(io.BytesIO(data), RESULT_SCHEMA, _LIGHT_SCHEMA)
    created = record["created_at_ms"]
    if isinstance(created, datetime):
        created = int((created - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds() * 1000)
    error = record.get("error")
    return Received(
        request_id=record["request_id"],
        status=record["status"],
        model=record.get("model"),
        cached=bool(record["cached"]),
        worker_id=record["worker_id"],
        timings_ms=dict(record["timings_ms"]),
        created_at_ms=int(created),
        error_code=error["code"] if error else None,
        size_bytes=len(data),
        received_at=received_at,
    )


def decode_arrivals(arrivals: Mapping[str, Arrival]) -> dict[str, Received]:
    """Decode what :meth:`ResultReader.wait` returned (call it after the scenario's clock has stopped)."""
    return {request_id: decode_light(a.value, a.received_at) for request_id, a in arrivals.items()}


class ResultReader:
    """Follows output topics from the beginning (assigned, no group) and keeps results by request id.

    Its thread only takes batches of records, stamps them with their arrival time and files their raw bytes by
    request id (read in ~0.3 us): 11-19 us of CPU per record in all, librdkafka included, so it is not what
    limits a scenario at 10,000 results/s on one core.
    """

    def __init__(self, bootstrap: str, topics: dict[str, int]) -> None:
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"bench-reader-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                # tansu holds a fetch for its whole wait even when data arrives: short, but each fetch costs it CPU
                "fetch.wait.max.ms": 25,
                # tansu answers a fetch only when its wait is over: let one answer carry a burst of results
                "max.partition.fetch.bytes": 16 * 2**20,
                "fetch.max.bytes": 64 * 2**20,
                "log_level": 3,
            }
        )
        self._consumer.assign(
            [TopicPartition(topic, p, OFFSET_BEGINNING) for topic, count in topics.items() for p in range(count)]
        )
        self._arrivals: dict[str, Arrival] = {}
        self._total = 0  # results received so far, of any request
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._quiet = threading.Event()  # set: partitions paused, no polling (see quiet())
        self.errors: list[str] = []
        self._thread = threading.Thread(target=self._loop, name="bench-reader", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        paused = False
        while not self._stop.is_set():
            if self._quiet.is_set() != paused:
                paused = self._quiet.is_set()
                assignment = self._consumer.assignment()
                (self._consumer.pause if paused else self._consumer.resume)(assignment)
            if paused:
                self._stop.wait(0.05)
                continue
            messages = self._consumer.consume(num_messages=CONSUME_BATCH, timeout=0.05)
            if not messages:
                continue
            received_at = time.time()
            batch: list[tuple[str, Arrival]] = []
            for message in messages:
                error = message.error()
                if error is not None:
                    if error.code() != KafkaError._PARTITION_EOF:
                        self.errors.append(str(error))
                    continue
                value = message.value()
                try:
                    batch.append((peek_request_id(value), Arrival(value, received_at)))
                except Exception as exc:  # noqa: BLE001 - a foreign record must not kill the reader
                    self.errors.append(f"unreadable result: {exc}")
            with self._cond:
                self._arrivals.update(batch)
                self._total += len(batch)
                self._cond.notify_all()

    @contextlib.contextmanager
    def quiet(self, settle_s: float = 1.5) -> Iterator[None]:
        """Stop fetching and polling while in-process scenarios run, so this process adds no wake-ups to the cores
        the model uses; on leaving, give librdkafka ``settle_s`` to fetch again (a resume takes it ~1 s)."""
        self._quiet.set()
        try:
            yield
        finally:
            self._quiet.clear()
            time.sleep(settle_s)

    @property
    def total(self) -> int:
        """Results received so far, of any request."""
        with self._cond:
            return self._total

    def wait_total(self, at_least: int, timeout: float) -> int:
        """Block until ``total >= at_least`` or ``timeout``; returns the total."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._total < at_least:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            return self._total

    def wait(self, ids: Iterable[str], timeout: float, alive: Callable[[], None] | None = None) -> dict[str, Arrival]:
        """The arrival of every id (raw, undecoded: see :func:`decode_arrivals`), or TimeoutError naming how many
        are missing; ``alive`` may raise if a worker died. The reader forgets what it returns."""
        wanted = set(ids)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                missing = wanted - self._arrivals.keys()
                if not missing:
                    return {i: self._arrivals.pop(i) for i in wanted}
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"{len(missing)} of {len(wanted)} results missing after {timeout:.0f}s")
                self._cond.wait(min(remaining, 1.0))
                if alive is not None:
                    alive()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._consumer.close()


@dataclass(frozen=True, slots=True)
class Sent:
    """One published request: its id, where it went, when (epoch ms, as in the request's submitted_at_ms) and its
    size on the wire (the Avro value)."""

    request_id: str
    submitted_at_ms: int
    partition: int
    size_bytes: int


class RequestPublisher:
    """Publishes Avro requests exactly as :class:`producers.publisher.SegmentationProducer` does (same encoding,
    headers and producer settings, plus a local queue sized for a burst: :data:`PRODUCER_QUEUE`), but to an
    explicit partition so two workers get equal shares."""

    def __init__(self, settings: KafkaSettings) -> None:
        self._producer: Producer = make_producer(settings, **PRODUCER_QUEUE)
        self._errors: list[str] = []
        #: produce() calls refused with BufferError (local queue full) so far; each waited for deliveries
        self.stalls = 0

    def _produce(self, topic: str, payload: bytes, partition: int, params: SegmentParams, source: str) -> Sent:
        request_id = uuid.uuid4().hex
        submitted = now_ms()
        request = SegmentRequest(request_id, payload, params=params, source=source, submitted_at_ms=submitted)
        value = encode_request(request)
        while True:
            try:
                self._producer.produce(
                    topic,
                    value=value,
                    key=request_id.encode(),
                    headers=request_headers(request),
                    partition=partition,
                    on_delivery=self._delivered,
                )
                return Sent(request_id, submitted, partition, len(value))
            except BufferError:
                self.stalls += 1
                self._producer.poll(0.05)

    def publish(self, topic: str, payload: bytes, *, partition: int, params: SegmentParams, source: str) -> Sent:
        """One request, handed to librdkafka at once (it sends after ``linger.ms``); for closed loops."""
        sent = self._produce(topic, payload, partition, params, source)
        self._producer.poll(0)
        return sent

    def publish_burst(
        self, topic: str, payloads: Sequence[bytes], *, partitions: int, params: SegmentParams, source: str
    ) -> list[Sent]:
        """All of ``payloads`` round robin over ``partitions``, produced back to back, then flushed."""
        sent = []
        for i, payload in enumerate(payloads):
            sent.append(self._produce(topic, payload, i % partitions, params, source))
            if i % 256 == 255:
                self._producer.poll(0)  # delivery callbacks, so the queue's bookkeeping does not pile up
        self.flush()
        return sent

    def _delivered(self, error: KafkaError | None, _message: Any) -> None:
        if error is not None:
            self._errors.append(str(error))

    def flush(self, timeout: float = 120.0) -> None:
        left = self._producer.flush(timeout)
        if left or self._errors:
            raise RuntimeError(f"publishing failed: {left} undelivered, errors {self._errors[:3]}")

    def close(self) -> None:
        """Flush and drop the producer (librdkafka's client goes with its last reference), before the broker stops."""
        with contextlib.suppress(RuntimeError):
            self.flush(5.0)
        del self._producer


@dataclass
class WorkerProcess:
    """A ``python -m consumers.worker`` subprocess (what a deployment runs), with its log and psutil handle."""

    worker_id: str
    process: subprocess.Popen[bytes]
    log_path: Path
    ps: psutil.Process = field(init=False)

    def __post_init__(self) -> None:
        self.ps = psutil.Process(self.process.pid)

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(f"worker {self.worker_id} exited with {self.process.returncode}:\n{self.log_tail()}")

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "<no log>"

    def cpu_s(self) -> float:
        """User + system CPU seconds of the worker so far (all its threads)."""
        with contextlib.suppress(psutil.Error):
            times = self.ps.cpu_times()
            return float(times.user + times.system)
        return float("nan")

    def rss_mb(self) -> float:
        with contextlib.suppress(psutil.Error):
            return self.ps.memory_info().rss / 2**20
        return float("nan")

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (finish, flush, commit, leave the group), then SIGKILL after ``timeout``."""
        stop_process(self.process, timeout=timeout)


def start_worker(worker_id: str, env: dict[str, str], log_dir: Path) -> WorkerProcess:
    """Start a worker process with ``env`` (the caller builds it from the same settings as the in-process model)."""
    log_path = log_dir / f"{worker_id}.log"
    module = "bench.patched_worker" if env.get("BENCH_WORKER_PATCH") else "consumers.worker"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", module],
            env={**env, "WORKER_ID": worker_id},
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    return WorkerProcess(worker_id, process, log_path)


def worker_environment(
    *,
    bootstrap: str,
    redis_host: str,
    redis_port: int,
    topics: tuple[str, str, str],
    group: str,
    model_env: dict[str, str],
    extra: dict[str, str] | None = None,
) -> dict[str, str]:
    """Environment of a benchmark worker: the bench's model settings, loopback services, fast group joins."""
    input_topic, output_topic, dead_letter_topic = topics
    return {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        **model_env,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "KAFKA_INPUT_TOPIC": input_topic,
        "KAFKA_OUTPUT_TOPIC": output_topic,
        "KAFKA_DEAD_LETTER_TOPIC": dead_letter_topic,
        "KAFKA_GROUP_ID": group,
        "KAFKA_SESSION_TIMEOUT_MS": "6000",  # tansu holds a JoinGroup for half of this
        "KAFKA_HEARTBEAT_INTERVAL_MS": "1000",
        "REDIS_HOST": redis_host,
        "REDIS_PORT": str(redis_port),
        "METRICS_PORT": "0",  # several workers on one host: no port clashes
        "LOG_LEVEL": os.environ.get("BENCH_WORKER_LOG_LEVEL", "WARNING"),
        **(extra or {}),
    }


class ProcessCpu:
    """CPU seconds of a set of processes between two points, e.g. the broker, Redis and the workers."""

    def __init__(self, processes: dict[str, psutil.Process]) -> None:
        self.processes = processes
        self._start = self._sample()

    def _sample(self) -> dict[str, float]:
        sample = {}
        for name, process in self.processes.items():
            try:
                times = process.cpu_times()
                sample[name] = float(times.user + times.system)
            except psutil.Error:
                sample[name] = float("nan")
        return sample

    def delta(self) -> dict[str, float]:
        end = self._sample()
        return {name: end[name] - self._start[name] for name in self.processes}


def own_cpu_s() -> float:
    """CPU seconds of this process, all threads (torch's pool and librdkafka's included)."""
    return time.process_time()
