"""The pipeline side of the benchmark: worker processes, a light request publisher and a light result reader.

Kept light on purpose: the machine may have as few cores as the model uses, so the measuring process must not
steal them. The reader decodes each result through a projection of the result schema that skips ``masks`` (the
bulk of a result), and timestamps records on a background thread so a busy main thread cannot delay them.
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
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import fastavro
import psutil
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition

from pipeline.types import SegmentParams
from schemas import RESULT_SCHEMA, SegmentRequest, encode_request, now_ms, request_headers, schema_text
from segpipe.config import KafkaSettings
from segpipe.kafka import make_producer
from segpipe.services import stop_process

REPO_ROOT = Path(__file__).resolve().parent.parent

#: The per-stage keys a result's ``timings_ms`` may carry, in pipeline order (batch_size is not a duration).
STAGES = ("decode", "dedup", "queue", "preprocess", "fastsam", "sam2", "postprocess")


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


class ResultReader:
    """Follows output topics from the beginning (assigned, no group) and keeps results by request id."""

    def __init__(self, bootstrap: str, topics: dict[str, int]) -> None:
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"bench-reader-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                # tansu holds a fetch for its whole wait even when data arrives: short, but each fetch costs it CPU
                "fetch.wait.max.ms": 25,
                "log_level": 3,
            }
        )
        self._consumer.assign(
            [TopicPartition(topic, p, OFFSET_BEGINNING) for topic, count in topics.items() for p in range(count)]
        )
        self._results: dict[str, Received] = {}
        self._total = 0  # results received so far, of any request
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._quiet = threading.Event()  # set: partitions paused, no polling (see quiet())
        self.errors: list[str] = []
        self.on_result: Callable[[Received], None] | None = None
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
            message = self._consumer.poll(0.05)
            if message is None:
                continue
            received_at = time.time()
            if message.error():
                if message.error().code() != KafkaError._PARTITION_EOF:
                    self.errors.append(str(message.error()))
                continue
            try:
                result = decode_light(message.value(), received_at)
            except Exception as exc:  # noqa: BLE001 - a foreign record must not kill the reader
                self.errors.append(f"undecodable result: {exc}")
                continue
            with self._cond:
                self._results[result.request_id] = result
                self._total += 1
                self._cond.notify_all()
            if self.on_result is not None:
                self.on_result(result)

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

    def wait(self, ids: Iterable[str], timeout: float, alive: Callable[[], None] | None = None) -> dict[str, Received]:
        """Results for every id, or TimeoutError naming how many are missing; ``alive`` may raise if a worker died."""
        wanted = set(ids)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                missing = wanted - self._results.keys()
                if not missing:
                    return {i: self._results[i] for i in wanted}
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
    """One published request: its id, where it went and when (epoch ms, as in the request's submitted_at_ms)."""

    request_id: str
    submitted_at_ms: int
    partition: int


class RequestPublisher:
    """Publishes Avro requests exactly as :class:`producers.publisher.SegmentationProducer` does (same encoding,
    headers and producer settings), but to an explicit partition so two workers get equal shares."""

    def __init__(self, settings: KafkaSettings) -> None:
        self._producer: Producer = make_producer(settings)
        self._errors: list[str] = []

    def publish(self, topic: str, payload: bytes, *, partition: int, params: SegmentParams, source: str) -> Sent:
        request_id = uuid.uuid4().hex
        submitted = now_ms()
        request = SegmentRequest(request_id, payload, params=params, source=source, submitted_at_ms=submitted)
        while True:
            try:
                self._producer.produce(
                    topic,
                    value=encode_request(request),
                    key=request_id.encode(),
                    headers=request_headers(request),
                    partition=partition,
                    on_delivery=self._delivered,
                )
                break
            except BufferError:
                self._producer.poll(0.05)
        self._producer.poll(0)
        return Sent(request_id, submitted, partition)

    def _delivered(self, error: KafkaError | None, _message: Any) -> None:
        if error is not None:
            self._errors.append(str(error))

    def flush(self, timeout: float = 60.0) -> None:
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
