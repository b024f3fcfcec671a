"""Sick services, as opposed to dead ones: a Redis that accepts connections and never answers (SIGSTOP), and a broker
that stays down long enough for librdkafka to fail over and over.

- Redis hung: the dedup cache's circuit breaker must skip it, so the worker keeps at least half the throughput it has
  with Redis plainly stopped (connection refused), and says so once when the breaker opens and once when it closes.
- Broker down: the worker's log must stay readable: each distinct error at most once per 10 s, librdkafka's own lines
  included (they go through Python logging and its rate-limiting filter).
"""

from __future__ import annotations

import re
import signal
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from reliability_harness import Follow, Launcher, Publisher, Report, TopicsFactory, avro_record, noise_image
from worker_harness import PipelineTopics

from devstack.services import LocalKafka, LocalRedis, create_topics, start_kafka
from segpipe.config import WorkerSettings

pytestmark = pytest.mark.slow

OUTAGE_S = 20.0  # the operator's scenario: Redis SIGSTOPped for 20 s
BACKLOG = 120  # queued before each outage: more than the worker answers in OUTAGE_S (asserted), so it never runs dry
# What the product runs with (BATCH_SIZE unset resolves to 1 on a CPU); REDIS_SOCKET_TIMEOUT stays at its 2 s default.
PRODUCT = {
    "MAX_IN_FLIGHT": str(WorkerSettings.model_fields["max_in_flight"].default),
    "MAX_WORKERS": str(WorkerSettings.model_fields["max_workers"].default),
    "BATCH_SIZE": "1",
}
_SUPPRESSED = re.compile(r" \(\d+ similar suppressed in \d+ s\)$")  # what the rate limiter appends


def _answered_during(follow_snapshot: list, start_wall: float, end_wall: float) -> int:
    return sum(start_wall <= seen.timestamp_ms / 1000.0 < end_wall for seen in follow_snapshot)


def test_hung_redis_is_skipped_not_waited_on(
    kafka: LocalKafka,
    redis_server: LocalRedis,
    make_topics: TopicsFactory,
    launcher: Launcher,
    report: Report,
    follow: Follow,
) -> None:
    """The same backlog of distinct images through one worker, twice: Redis stopped for OUTAGE_S, then Redis hung
    (SIGSTOP) for OUTAGE_S. Results written during each outage are counted by broker timestamp."""
    topics = make_topics(2)
    results = follow(kafka.bootstrap, topics.output)
    worker = launcher(topics, **PRODUCT)
    worker.wait_assigned(120)
    publisher = Publisher(kafka.bootstrap, topics.input)
    publisher.send_all(avro_record(f"warm-{i}", noise_image(7000 + i, 96, 128)) for i in range(4))
    results.wait_request_ids([f"warm-{i}" for i in range(4)], timeout=120)

    def outage(name: str, seed: int, down: Callable[[], None], up: Callable[[], None]) -> int:
        ids = [f"{name}-{i:03d}" for i in range(BACKLOG)]
        publisher.send_all(avro_record(rid, noise_image(seed + i, 96, 128)) for i, rid in enumerate(ids))
        publisher.flush()
        down()
        start = time.time()
        try:
            time.sleep(OUTAGE_S)
        finally:
            end = time.time()
            up()
        results.wait_request_ids(ids, timeout=300)
        answered = _answered_during(results.snapshot(), start, end)
        assert answered < BACKLOG, f"the worker ran dry during the {name} outage: raise BACKLOG"
        return answered

    stopped = outage("stopped", 71000, redis_server.stop, redis_server.restart)
    process = redis_server.process
    try:
        hung = outage(
            "hung", 72000, lambda: process.send_signal(signal.SIGSTOP), lambda: process.send_signal(signal.SIGCONT)
        )
    finally:
        process.send_signal(signal.SIGCONT)
    everything = results.results()
    results.close()
    log = worker.log()
    assert worker.process.poll() is None, "the worker survived both outages"
    assert worker.stop() == 0

    counts = Counter(r.request_id for r in everything)
    opened, closed = log.count("working without dedup"), log.count("dedup resumed")
    report(
        outage_s=OUTAGE_S,
        results_while_redis_stopped=stopped,
        results_while_redis_hung=hung,
        hung_over_stopped=round(hung / max(1, stopped), 2),
        breaker_log_lines={"opened": opened, "closed": closed},
        duplicated=sum(n - 1 for n in counts.values()),
        lost=0,
    )
    assert len(counts) == 4 + 2 * BACKLOG, "every request has a result"
    assert (opened, closed) == (2, 2), "one line when the breaker opens and one when it closes, per outage"
    assert stopped > 0
    assert hung >= 0.5 * stopped, (hung, stopped)


@pytest.fixture
def own_kafka(tmp_path: Path) -> Iterator[LocalKafka]:
    """A tansu broker of this test's own (memory storage): it is stopped mid-test, the session's must not be."""
    broker = start_kafka(log_dir=tmp_path / "kafka")
    try:
        yield broker
    finally:
        broker.stop()


def test_broker_down_logs_each_error_at_most_once_per_10s(
    own_kafka: LocalKafka, launcher: Launcher, report: Report
) -> None:
    """A consuming worker whose broker goes away for 20 s: count its log lines per second meanwhile."""
    down_s = 20.0
    suffix = uuid.uuid4().hex[:8]
    topics = PipelineTopics(f"requests-{suffix}", f"results-{suffix}", f"dead-letter-{suffix}", f"workers-{suffix}")
    create_topics(own_kafka.bootstrap, {topics.input: 2, topics.output: 1, topics.dead_letter: 1})
    worker = launcher(topics, KAFKA_BOOTSTRAP_SERVERS=own_kafka.bootstrap)
    worker.wait_assigned(120)
    time.sleep(2)
    before = len(worker.log().splitlines())
    own_kafka.stop()
    time.sleep(down_s)
    lines = worker.log().splitlines()[before:]
    assert worker.process.poll() is None, "the worker survives the outage"
    worker.kill()  # no broker to leave the group through

    timestamped = [line for line in lines if re.match(r"\d{4}-\d\d-\d\d ", line)]
    problems = Counter(
        re.sub(r"\d+", "#", _SUPPRESSED.sub("", line.split(" ", 2)[2]))
        for line in timestamped
        if " WARNING " in line or " ERROR " in line
    )
    worst = max(problems.values(), default=0)
    report(
        broker_down_s=down_s,
        log_lines=len(lines),
        lines_per_second=round(len(lines) / down_s, 2),
        distinct_problems=len(problems),
        most_repeated=worst,
        librdkafka_lines=sum("segpipe.kafka.librdkafka" in line or line.startswith("%") for line in lines),
    )
    assert not [line for line in lines if line.startswith("%")], "librdkafka's lines go through Python logging"
    assert problems, "the outage is reported"
    assert worst <= int(down_s // 10) + 1, problems  # at most one per distinct error per 10 s
    assert len(lines) / down_s < 2.0, lines[:40]
