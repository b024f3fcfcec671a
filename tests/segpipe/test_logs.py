"""Structured logs: JSON lines carry the request id, plain lines stay readable."""

from __future__ import annotations

import json
import logging
import re
import time
from collections import Counter

import pytest

from segpipe.config import KafkaSettings
from segpipe.kafka import make_consumer, make_producer
from segpipe.logs import RateLimitFilter, configure_logging


@pytest.fixture(autouse=True)
def _restore_root_logger() -> None:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_lines_carry_request_ids(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(level="INFO", fmt="json")
    logging.getLogger("consumers.worker").info("result %s: ok", "r-42", extra={"request_id": "r-42", "offset": 7})
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("x").exception("failed", extra={"request_id": "r-43"})
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert lines[0]["request_id"] == "r-42" and lines[0]["offset"] == 7 and lines[0]["message"] == "result r-42: ok"
    assert lines[0]["level"] == "INFO" and lines[0]["logger"] == "consumers.worker" and lines[0]["ts"].endswith("Z")
    assert lines[1]["request_id"] == "r-43" and "ValueError: boom" in lines[1]["exc"]


def test_plain_format_and_level_from_environment(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOG_LEVEL", "WARNING")
    monkeypatch.setenv("LOG_FORMAT", "plain")
    configure_logging()
    logging.getLogger("a").info("hidden")
    logging.getLogger("a").warning("shown %d", 1)
    err = capsys.readouterr().err
    assert "hidden" not in err and "WARNING a: shown 1" in err
    with pytest.raises(json.JSONDecodeError):
        json.loads(err.splitlines()[0])


def test_repeated_warnings_pass_once_per_interval_and_count_the_rest() -> None:
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    handler = Keep()
    handler.addFilter(RateLimitFilter(interval=0.3))
    logger = logging.getLogger("test.ratelimit")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        for attempt in range(50):  # one error, its counters changing: "after 0ms", the port, the attempt
            logger.warning(
                "Connect to 127.0.0.1:%d failed (after %dms, %d identical suppressed)", 9092, attempt, attempt
            )
        logger.warning("another error")  # distinct: passes
        logger.error("Connect to 127.0.0.1:%d failed (after %dms, %d identical suppressed)", 9092, 1, 1)  # level too
        for i in range(5):
            logger.info("result req-%03d: ok", i)  # INFO is never limited: one line per result
        time.sleep(0.35)
        logger.warning("Connect to 127.0.0.1:%d failed (after %dms, %d identical suppressed)", 9092, 99, 99)
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    messages = [r.getMessage() for r in seen]
    assert messages[:3] == [
        "Connect to 127.0.0.1:9092 failed (after 0ms, 0 identical suppressed)",
        "another error",
        "Connect to 127.0.0.1:9092 failed (after 1ms, 1 identical suppressed)",
    ]
    assert messages[3:8] == [f"result req-{i:03d}: ok" for i in range(5)]
    assert messages[8:] == [
        "Connect to 127.0.0.1:9092 failed (after 99ms, 99 identical suppressed) (49 similar suppressed in 0 s)"
    ]


def test_librdkafka_lines_go_through_python_logging_rate_limited(capfd: pytest.CaptureFixture[str]) -> None:
    """A consumer and a producer pointed at a port nobody listens on (a broker that is down): librdkafka's own
    connect failures (``%3|...|FAIL|``) come out as ``segpipe.kafka.librdkafka`` lines, each at most once per 10 s."""
    configure_logging(level="INFO", fmt="plain")
    settings = KafkaSettings(bootstrap_servers="127.0.0.1:1", input_topic="t")
    consumer = make_consumer(settings, group_id="g", **{"reconnect.backoff.ms": 10, "reconnect.backoff.max.ms": 50})
    producer = make_producer(settings, **{"reconnect.backoff.ms": 10, "reconnect.backoff.max.ms": 50})
    try:
        consumer.subscribe(["t"])
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            consumer.poll(0.05)
            producer.poll(0.05)
    finally:
        consumer.close()
        producer.flush(0)
    err = capfd.readouterr().err.splitlines()
    assert not [line for line in err if line.startswith("%")], "no raw librdkafka line on stderr"
    client = [line for line in err if "segpipe.kafka.librdkafka" in line]
    assert any("FAIL" in line and "Connection refused" in line for line in client), err[:10]
    keys = Counter(re.sub(r"\d+", "#", line.split(": ", 1)[1]) for line in err if "WARNING" in line or "ERROR" in line)
    assert keys and max(keys.values()) == 1, keys  # dozens of failures in 3 s, each distinct one printed once
