"""Without a broker, ``segpipe publish`` and ``segpipe results`` say so in one line within seconds and exit 1."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from devstack.services import LocalKafka, LocalRedis, free_port
from segpipe.config import KafkaSettings, RedisSettings
from segpipe.preflight import ServiceUnavailable, check_kafka, check_redis

REPO_ROOT = Path(__file__).resolve().parents[2]
SAMPLE = REPO_ROOT / "samples" / "shapes-1.png"


def _run(args: list[str], **env: str) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    answer = subprocess.run(
        [sys.executable, "-m", "segpipe.cli", *args],
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    return answer, time.monotonic() - started


@pytest.mark.parametrize("command", [["publish", str(SAMPLE)], ["results"]])
def test_no_broker_one_line_within_seconds_and_exit_1(command: list[str]) -> None:
    port = free_port()  # nothing listens there
    answer, took = _run(command, KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{port}")
    assert answer.returncode == 1
    assert took < 5, f"took {took:.1f} s"
    assert answer.stderr.splitlines() == [
        f"segpipe-{command[0]}: error: no Kafka broker at 127.0.0.1:{port} (connection refused) — start one with "
        "`segpipe up` or set KAFKA_BOOTSTRAP_SERVERS"
    ]
    assert answer.stdout == ""


def test_results_exits_1_when_the_topic_never_appears(kafka: LocalKafka) -> None:
    answer, _ = _run(
        ["results", "--timeout", "1", "--topic", "segpipe-no-such-topic"], KAFKA_BOOTSTRAP_SERVERS=kafka.bootstrap
    )
    assert answer.returncode == 1
    assert f"topic segpipe-no-such-topic does not exist on {kafka.bootstrap}" in answer.stderr


def test_probes_pass_on_live_services_and_name_the_missing_one(kafka: LocalKafka, redis_server: LocalRedis) -> None:
    check_kafka(KafkaSettings(bootstrap_servers=kafka.bootstrap))
    check_redis(RedisSettings(host=redis_server.host, port=redis_server.port))

    port = free_port()
    with pytest.raises(ServiceUnavailable, match=rf"^no Redis at 127\.0\.0\.1:{port} \(connection refused\) — start"):
        check_redis(RedisSettings(host="127.0.0.1", port=port))
    # Something listens but is no Kafka broker (Redis here): the metadata request says so, within the timeout.
    started = time.monotonic()
    with pytest.raises(ServiceUnavailable, match=r"^no Kafka broker answers at 127\.0\.0\.1:"):
        check_kafka(KafkaSettings(bootstrap_servers=f"127.0.0.1:{redis_server.port}"), timeout=2.0)
    assert time.monotonic() - started < 4
