"""Fixtures of the reliability suite: fresh topics of any width, and worker subprocesses built from the shared
``worker_harness`` (the same ``python -m consumers.worker`` a deployment runs, on the real broker, Redis and tiny
checkpoints)."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from reliability_harness import Report, TopicFollower, TopicsFactory
from worker_harness import PipelineTopics, WorkerProcess, launch_worker, worker_environment

from devstack.services import LocalKafka, LocalRedis, LocalS3, start_kafka, start_s3


@pytest.fixture
def make_topics(topic_factory: Callable[..., str]) -> TopicsFactory:
    """``make(partitions=6) -> PipelineTopics``: fresh input/output/dead-letter topics and a fresh group id."""

    def make(partitions: int = 6) -> PipelineTopics:
        return PipelineTopics(
            input=topic_factory("requests", partitions=partitions),
            output=topic_factory("results", partitions=1),
            dead_letter=topic_factory("dead-letter", partitions=1),
            group=f"workers-{uuid.uuid4().hex[:8]}",
        )

    return make


@pytest.fixture
def launcher(
    kafka: LocalKafka, redis_server: LocalRedis, demo_checkpoints: tuple[Path, Path], tmp_path: Path
) -> Iterator[Callable[..., WorkerProcess]]:
    """``launch(topics, **env_overrides) -> WorkerProcess``; every worker started is SIGKILLed at teardown.

    ``METRICS_PORT=0``: several workers share this machine, so none may claim a fixed port.
    """
    started: list[WorkerProcess] = []

    def launch(topics: PipelineTopics, **overrides: str) -> WorkerProcess:
        base = worker_environment(kafka, redis_server, demo_checkpoints, topics)
        env = {**base, "METRICS_PORT": "0", "WORKER_ID": f"worker-{len(started)}", **overrides}
        worker = launch_worker(env, tmp_path / f"{env['WORKER_ID']}.log")
        started.append(worker)
        return worker

    yield launch
    for worker in started:
        worker.kill()


@pytest.fixture
def report(request: pytest.FixtureRequest) -> Report:
    """``report(**figures)``: print a scenario's figures and, when SEGPIPE_RELIABILITY_REPORT names a file, append
    them there as one JSON line (docs/RELIABILITY.md is written from those lines)."""

    def write(**figures: object) -> None:
        line = json.dumps({"test": request.node.name, "date": time.strftime("%Y-%m-%d"), **figures}, default=str)
        print(f"\nRELIABILITY {line}")
        target = os.environ.get("SEGPIPE_RELIABILITY_REPORT")
        if target:
            with open(target, "a", encoding="utf-8") as out:
                out.write(line + "\n")

    return write


@pytest.fixture
def follow() -> Iterator[Callable[[str, str], TopicFollower]]:
    """``follow(bootstrap, topic) -> TopicFollower``; every follower is closed at teardown, even after a failure
    (a consumer left polling on a daemon thread while the interpreter exits can crash it)."""
    followers: list[TopicFollower] = []

    def make(bootstrap: str, topic: str) -> TopicFollower:
        follower = TopicFollower(bootstrap, topic)
        followers.append(follower)
        return follower

    yield make
    for follower in followers:
        follower.close()


@pytest.fixture(scope="module")
def s3_storage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalS3]:
    """A moto S3 server with the bucket tansu stores in. Missing moto skips, except under CI where it must be."""
    try:
        server = start_s3(log_dir=tmp_path_factory.mktemp("s3"))
    except ModuleNotFoundError as exc:
        if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
            pytest.fail(f"{exc} (CI is set, so this is an error, not a skip)", pytrace=False)
        pytest.skip(str(exc))
    try:
        server.create_bucket("tansu")
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_kafka(s3_storage: LocalS3, tmp_path: Path) -> Iterator[LocalKafka]:
    """A tansu broker of its own on S3 storage: unlike the session's memory broker it may be stopped and restarted."""
    broker = start_kafka(storage="s3://tansu/", env=s3_storage.env(), log_dir=tmp_path / "kafka")
    try:
        yield broker
    finally:
        broker.stop()
