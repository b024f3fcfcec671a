"""Worker processes for end-to-end tests: the same ``python -m consumers.worker`` a deployment runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from segpipe.services import FAST_GROUP_CONFIG, LocalKafka, LocalRedis

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class PipelineTopics:
    input: str
    output: str
    dead_letter: str
    group: str


@dataclass
class WorkerProcess:
    """A worker subprocess with its log file; ``stop`` sends SIGTERM (graceful), ``kill`` SIGKILL."""

    process: subprocess.Popen
    log_path: Path
    env: dict[str, str] = field(repr=False)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_assigned(self, timeout: float = 60.0) -> None:
        """Block until the worker has joined the group and received partitions (it logs 'assigned [...]')."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "assigned [(" in self.log():
                return
            if self.process.poll() is not None:
                raise AssertionError(f"worker exited with {self.process.returncode}:\n{self.log()[-3000:]}")
            time.sleep(0.1)
        raise AssertionError(f"worker got no partitions in {timeout}s:\n{self.log()[-3000:]}")

    def stop(self, timeout: float = 60.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def pipeline_topics(topic_factory: Callable[..., str]) -> PipelineTopics:
    return PipelineTopics(
        input=topic_factory("requests", partitions=4),
        output=topic_factory("results", partitions=1),
        dead_letter=topic_factory("dead-letter", partitions=1),
        group=f"workers-{uuid.uuid4().hex[:8]}",
    )


@pytest.fixture
def worker_env(
    kafka: LocalKafka, redis_server: LocalRedis, demo_checkpoints: tuple[Path, Path], pipeline_topics: PipelineTopics
) -> dict[str, str]:
    """Environment of a test worker: real broker, real Redis, real tiny checkpoints; FastSAM answers at conf 0.005."""
    fastsam, sam2 = demo_checkpoints
    return {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap,
        "KAFKA_INPUT_TOPIC": pipeline_topics.input,
        "KAFKA_OUTPUT_TOPIC": pipeline_topics.output,
        "KAFKA_DEAD_LETTER_TOPIC": pipeline_topics.dead_letter,
        "KAFKA_GROUP_ID": pipeline_topics.group,
        "KAFKA_SESSION_TIMEOUT_MS": str(FAST_GROUP_CONFIG["session.timeout.ms"]),
        "KAFKA_HEARTBEAT_INTERVAL_MS": str(FAST_GROUP_CONFIG["heartbeat.interval.ms"]),
        "REDIS_HOST": redis_server.host,
        "REDIS_PORT": str(redis_server.port),
        "REDIS_LOCK_TTL": "3",
        "FASTSAM_MODEL_PATH": str(fastsam),
        "SAM_MODEL_PATH": str(sam2),
        "DEVICE": "cpu",
        "DEFAULT_CONF": "0.005",
        "FASTSAM_IMGSZ": "640",
        "SAM2_POINTS_PER_SIDE": "4",
        "SAM2_PRED_IOU_THRESH": "0",
        "SAM2_STABILITY_SCORE_THRESH": "0",
        "MAX_WORKERS": "2",
        "BATCH_SIZE": "4",
        "LOG_LEVEL": "INFO",
        "OMP_NUM_THREADS": "1",  # two workers share two cores
    }


@pytest.fixture
def start_worker(worker_env: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start(**overrides: str) -> WorkerProcess:
        env = {**worker_env, "WORKER_ID": f"worker-{len(started)}", **overrides}
        log_path = tmp_path / f"{env['WORKER_ID']}.log"
        with open(log_path, "wb") as log_file:
            process = subprocess.Popen(
                [sys.executable, "-m", "consumers.worker"], env=env, cwd=REPO_ROOT, stdout=log_file, stderr=log_file
            )
        worker = WorkerProcess(process, log_path, env)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.kill()
