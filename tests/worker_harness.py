"""Worker processes for end-to-end tests: the same ``python -m consumers.worker`` a deployment runs.

Plain classes and functions (no fixtures), so any test folder can import them (``tests/conftest.py`` puts
``tests/`` on ``sys.path``) and build fixtures of whatever scope it needs; ``tests/conftest.py`` wraps them in the
function-scoped ``pipeline_topics``, ``worker_env`` and ``start_worker`` fixtures.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from devstack.services import FAST_GROUP_CONFIG, LocalKafka, LocalRedis, stop_process

REPO_ROOT = Path(__file__).resolve().parents[1]


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
        stop_process(self.process, timeout=timeout)
        return self.process.returncode

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def worker_environment(
    kafka: LocalKafka, redis_server: LocalRedis, checkpoints: tuple[Path, Path], topics: PipelineTopics
) -> dict[str, str]:
    """Environment of a test worker: real broker, real Redis, real tiny checkpoints; FastSAM answers at conf 0.005."""
    fastsam, sam2 = checkpoints
    return {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap,
        "KAFKA_INPUT_TOPIC": topics.input,
        "KAFKA_OUTPUT_TOPIC": topics.output,
        "KAFKA_DEAD_LETTER_TOPIC": topics.dead_letter,
        "KAFKA_GROUP_ID": topics.group,
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
        # Small, so back-pressure (pause/resume) runs all the time in tests, and kill -9 redelivers little.
        "MAX_IN_FLIGHT": "4",
        "BATCH_SIZE": "4",
        "LOG_LEVEL": "INFO",
        "OMP_NUM_THREADS": "1",  # two workers share two cores
        "METRICS_PORT": "0",  # several workers (and test sessions) share this machine: none may claim port 9100
    }


def launch_worker(env: dict[str, str], log_path: Path) -> WorkerProcess:
    """Start ``python -m consumers.worker`` with ``env``, its stdout and stderr going to ``log_path``."""
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "consumers.worker"], env=env, cwd=REPO_ROOT, stdout=log_file, stderr=log_file
        )
    return WorkerProcess(process, log_path, env)
