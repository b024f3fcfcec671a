"""Shared fixtures: one real tansu broker and one real redis-server per test session (no Docker, no fakes)."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# tests/ has no __init__.py, so pytest puts tests/ (not the repo root) on sys.path; make `import segpipe` work
# under a plain `pytest` as well as `python -m pytest`.
_REPO_ROOT = str(Path(__file__).resolve().parent.parent)
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)
# ...and make tests/ itself importable (worker_harness) whatever pytest's import mode.
_TESTS_DIR = str(Path(__file__).resolve().parent)
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)

import redis  # noqa: E402
from worker_harness import (  # noqa: E402
    PipelineTopics,
    WorkerProcess,
    launch_worker,
    worker_environment,
)

from devstack.services import (  # noqa: E402
    LocalKafka,
    LocalRedis,
    RedisServerNotFound,
    create_topics,
    delete_topics,
    docker_available,
    start_kafka,
    start_redis,
)


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: long reliability / end-to-end tests")
    config.addinivalue_line("markers", "docker: needs a reachable Docker daemon (skipped otherwise)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip docker-marked tests with the probe's reason; probe once, and only if such a test was collected."""
    docker_items = [item for item in items if item.get_closest_marker("docker") is not None]
    if not docker_items:
        return
    ok, reason = docker_available()
    if not ok:
        for item in docker_items:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka]:
    """A tansu broker (memory storage) for the whole session; topics should come from ``topic_factory``."""
    broker = start_kafka(log_dir=tmp_path_factory.mktemp("kafka"))
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedis]:
    """A redis-server for the whole session. Skips when it is not installed, except under CI where it must be."""
    try:
        server = start_redis(workdir=tmp_path_factory.mktemp("redis"))
    except RedisServerNotFound as e:
        missing = str(e)
    else:
        missing = ""
    if missing:
        if _in_ci():
            pytest.fail(f"{missing} (CI is set, so this is an error, not a skip)", pytrace=False)
        pytest.skip(missing)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_client(redis_server: LocalRedis) -> Iterator[redis.Redis]:
    """A client on an emptied DB, so tests never see each other's keys."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushdb()
    try:
        yield client
    finally:
        client.close()


TopicFactory = Callable[..., str]


@pytest.fixture
def topic_factory(kafka: LocalKafka) -> Iterator[TopicFactory]:
    """``make(prefix="t", partitions=1) -> name``: a fresh topic, deleted after the test.

    Deleting matters: tansu's memory storage keeps every stored byte in RAM until the topic goes.
    """
    created: list[str] = []

    def make(prefix: str = "t", partitions: int = 1) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        create_topics(kafka.bootstrap, {name: partitions})
        created.append(name)
        return name

    yield make
    if created and kafka.process.poll() is None:
        delete_topics(kafka.bootstrap, created)


@pytest.fixture(scope="session")
def demo_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The random-weight FastSAM and SAM2.1 checkpoints, built once (or reused from SEGPIPE_CHECKPOINT_DIR)."""
    from pipeline.checkpoints import ensure_demo_checkpoints

    directory = os.environ.get("SEGPIPE_CHECKPOINT_DIR")
    return ensure_demo_checkpoints(Path(directory) if directory else tmp_path_factory.mktemp("checkpoints"))


# --------------------------------------------------------------------------------------------------- workers
# Shared by every folder (end-to-end, gateway, reliability tests); the classes and the environment live in
# tests/worker_harness.py so that module- or session-scoped variants can be built from the same pieces.


@pytest.fixture
def pipeline_topics(topic_factory: TopicFactory) -> PipelineTopics:
    """Fresh input (4 partitions), output and dead-letter topics and a fresh group id for one test."""
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
    return worker_environment(kafka, redis_server, demo_checkpoints, pipeline_topics)


@pytest.fixture
def start_worker(worker_env: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """``start(**env_overrides) -> WorkerProcess``: worker subprocesses named worker-0, worker-1...; killed after."""
    started: list[WorkerProcess] = []

    def start(**overrides: str) -> WorkerProcess:
        env = {**worker_env, "WORKER_ID": f"worker-{len(started)}", **overrides}
        worker = launch_worker(env, tmp_path / f"{env['WORKER_ID']}.log")
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.kill()
