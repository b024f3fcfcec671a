"""The worker fixtures (``pipeline_topics``, ``worker_env``, ``start_worker``) moved to ``tests/conftest.py`` so
every test folder can use them; their classes live in ``tests/worker_harness.py``. Re-exported here so that
``from conftest import PipelineTopics, WorkerProcess`` in this folder keeps working.

``worker_settings`` (the settings of a ``Worker`` run inside the test process), ``dedup_cache`` and
``unreachable_cache`` are this folder's own."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from worker_harness import REPO_ROOT, PipelineTopics, WorkerProcess

from consumers.dedup import DedupCache
from devstack.services import FAST_GROUP_CONFIG, LocalKafka, LocalRedis
from segpipe.config import AppSettings, RedisSettings

__all__ = ["REPO_ROOT", "PipelineTopics", "WorkerProcess"]


@pytest.fixture
def worker_settings(
    kafka: LocalKafka, redis_server: LocalRedis, demo_checkpoints: tuple[Path, Path]
) -> Callable[..., AppSettings]:
    """``make(topics, *, models=None, **sections) -> AppSettings`` for an in-process worker (``Worker(settings)``).

    The in-process counterpart of ``worker_env``: the session's broker (with tansu's fast group timeouts), its Redis
    and the tiny checkpoints, FastSAM answering at conf 0.005. ``models`` adds to (or overrides) the model settings;
    other keyword arguments are further ``AppSettings`` sections (``registry=...``).
    """
    fastsam, sam2 = demo_checkpoints

    def make(topics: PipelineTopics, *, models: dict[str, Any] | None = None, **sections: Any) -> AppSettings:
        return AppSettings(
            kafka={
                "bootstrap_servers": kafka.bootstrap,
                "input_topic": topics.input,
                "output_topic": topics.output,
                "dead_letter_topic": topics.dead_letter,
                "group_id": topics.group,
                "session_timeout_ms": FAST_GROUP_CONFIG["session.timeout.ms"],
                "heartbeat_interval_ms": FAST_GROUP_CONFIG["heartbeat.interval.ms"],
            },
            redis={"host": redis_server.host, "port": redis_server.port},
            models={
                "fastsam_model_path": fastsam,
                "sam_model_path": sam2,
                "device": "cpu",
                "default_conf": 0.005,
                "fastsam_imgsz": 640,
                **(models or {}),
            },
            **sections,
        )

    return make


@pytest.fixture
def dedup_cache(redis_server: LocalRedis, redis_client: redis.Redis) -> Iterator[DedupCache]:
    """A DedupCache on the session's redis-server, its DB emptied (``redis_client``); REDIS_TTL 100 s."""
    cache = DedupCache(RedisSettings(host=redis_server.host, port=redis_server.port, ttl=100, max_wait=2.0))
    try:
        yield cache
    finally:
        cache.close()


@pytest.fixture
def unreachable_cache() -> Iterator[DedupCache]:
    """A DedupCache pointed at a port nothing listens on: every call fails fast (0.2 s socket timeout), and the first
    failure opens the circuit breaker."""
    cache = DedupCache(RedisSettings(host="127.0.0.1", port=1, socket_timeout=0.2, breaker_failures=1))
    try:
        yield cache
    finally:
        cache.close()
