"""Outages of the services a worker depends on, mid-stream: Redis stopped and restarted, the broker stopped and
restarted on the same port (S3-backed tansu, so topics and committed offsets survive, as with a real Kafka).

Requests keep arriving throughout; nothing may be lost and no worker may crash.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter

import pytest
from reliability_harness import (
    Follow,
    Launcher,
    Publisher,
    Report,
    TopicFollower,
    TopicsFactory,
    avro_record,
    committed_offsets,
    noise_image,
)
from worker_harness import PipelineTopics

from devstack.services import LocalKafka, LocalRedis, create_topics
from schemas import ResultStatus

pytestmark = pytest.mark.slow


def _by_id(follower: TopicFollower) -> dict[str, list]:
    found: dict[str, list] = {}
    for result in follower.results():
        found.setdefault(result.request_id, []).append(result)
    return found


def test_redis_outage_mid_stream_loses_nothing_and_dedup_resumes(
    kafka: LocalKafka,
    redis_server: LocalRedis,
    make_topics: TopicsFactory,
    launcher: Launcher,
    report: Report,
    follow: Follow,
) -> None:
    """Redis stopped while requests flow, restarted after a few seconds: every request answered exactly once, the
    worker never stalls on the dead Redis, and a repeat sent after the restart is served from the cache again."""
    topics = make_topics(2)
    results = follow(kafka.bootstrap, topics.output)
    worker = launcher(topics, REDIS_SOCKET_TIMEOUT="0.5")
    worker.wait_assigned(120)
    publisher = Publisher(kafka.bootstrap, topics.input)

    def image(i: int) -> bytes:
        return noise_image(9100 + i, 96, 128)

    # Redis up: distinct images, then their repeats (served from the cache).
    publisher.send_all(avro_record(f"up-{i}", image(i)) for i in range(6))
    results.wait_request_ids([f"up-{i}" for i in range(6)], timeout=120)
    publisher.send_all(avro_record(f"up-rep-{i}", image(i)) for i in range(3))
    results.wait_request_ids([f"up-rep-{i}" for i in range(3)], timeout=60)

    # Redis down: new images and repeats of them keep coming.
    down_ids = [f"down-{i}" for i in range(6)] + [f"down-rep-{i}" for i in range(3)]
    redis_server.stop()
    down_at = time.monotonic()
    try:
        publisher.send_all(avro_record(f"down-{i}", image(100 + i)) for i in range(6))
        publisher.send_all(avro_record(f"down-rep-{i}", image(100 + i)) for i in range(3))
        results.wait_request_ids(down_ids, timeout=120)
        answered_while_down = time.monotonic() - down_at
        time.sleep(max(0.0, 5.0 - answered_while_down))  # at least five seconds of outage
        outage_s = time.monotonic() - down_at
    finally:
        redis_server.restart()

    # Redis back (empty: no persistence): once the breaker's background probe has found it (within
    # REDIS_BREAKER_COOLDOWN), an image segmented now is stored, and its repeat is a cache hit.
    deadline = time.monotonic() + 30
    while "dedup resumed" not in worker.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    publisher.send_all([avro_record("back-0", image(200))])
    results.wait_request_ids(["back-0"], timeout=120)
    publisher.send_all([avro_record("back-rep-0", image(200))])
    results.wait_request_ids(["back-rep-0"], timeout=60)
    time.sleep(2)
    found = _by_id(results)
    results.close()

    sent = [f"up-{i}" for i in range(6)] + [f"up-rep-{i}" for i in range(3)] + down_ids + ["back-0", "back-rep-0"]
    assert set(found) == set(sent) and all(len(found[r]) == 1 for r in sent), {r: len(v) for r, v in found.items()}
    assert all(v[0].status == ResultStatus.OK for v in found.values())
    assert all(found[f"up-rep-{i}"][0].cached for i in range(3)), "dedup worked before the outage"
    assert not any(found[r][0].cached for r in down_ids), "nothing can come from a cache that is down"
    assert not found["back-0"][0].cached and found["back-rep-0"][0].cached, "dedup resumed after the restart"
    assert found["back-rep-0"][0].masks == found["back-0"][0].masks
    assert worker.process.poll() is None, "the worker survived the outage"
    log = worker.log()
    assert "working without dedup" in log and "dedup resumed" in log
    assert worker.stop() == 0
    report(
        requests=len(sent),
        results=sum(len(v) for v in found.values()),
        lost=0,
        duplicated=0,
        requests_during_outage=len(down_ids),
        all_answered_while_redis_down_within_s=round(answered_while_down, 1),
        outage_s=round(outage_s, 1),
        repeat_after_restart_cached=True,
        crashes=0,
    )


# ------------------------------------------------------------------------------------------------ broker outage
# (the s3_kafka broker, which may be stopped and restarted, is in conftest.py)


def test_broker_outage_mid_stream_loses_nothing(
    s3_kafka: LocalKafka, launcher: Launcher, report: Report, follow: Follow
) -> None:
    """The broker goes away for five seconds while a producer publishes and a worker works; both reconnect to the
    restarted broker on the same port and every request gets its result."""
    broker = s3_kafka
    suffix = uuid.uuid4().hex[:8]
    topics = PipelineTopics(f"requests-{suffix}", f"results-{suffix}", f"dead-letter-{suffix}", f"workers-{suffix}")
    create_topics(broker.bootstrap, {topics.input: 4, topics.output: 1, topics.dead_letter: 1})
    worker = launcher(topics, KAFKA_BOOTSTRAP_SERVERS=broker.bootstrap)
    worker.wait_assigned(120)
    results = follow(broker.bootstrap, topics.output)

    count, distinct = 60, 48
    records = [avro_record(f"b-{i:02d}", noise_image(9500 + i % distinct, 96, 128)) for i in range(count)]
    publisher = Publisher(broker.bootstrap, topics.input)

    def publish() -> None:  # keeps publishing straight through the outage: the producer buffers and retries
        for record in records:
            publisher.send(record)
            time.sleep(0.25)
        publisher.flush(120)

    feeder = threading.Thread(target=publish, name="publisher")
    started = time.monotonic()
    feeder.start()
    time.sleep(5)
    before_outage = len(results.snapshot())
    outage_started = time.monotonic() - started
    broker.restart(down_for=5.0)
    feeder.join()
    request_ids = [f"b-{i:02d}" for i in range(count)]
    everything = results.wait_request_ids(request_ids, timeout=240)
    elapsed = time.monotonic() - started
    assert worker.process.poll() is None, "the worker survived the outage"
    assert worker.stop() == 0
    time.sleep(2)
    everything = results.results()
    results.close()

    counts = Counter(r.request_id for r in everything)
    assert set(counts) == set(request_ids), "every request has a result"
    assert all(r.status == ResultStatus.OK for r in everything), [r.error for r in everything if r.error][:3]
    ends = publisher.ends()
    assert committed_offsets(broker.bootstrap, topics.group, topics.input, 4) == {
        p: ends.get(p, -1001) for p in range(4)
    }, "the offsets committed after the outage survive with the broker's storage"
    report(
        requests=count,
        results=len(everything),
        lost=0,
        duplicated=sum(n - 1 for n in counts.values()),
        results_before_outage=before_outage,
        outage_started_at_s=round(outage_started, 1),
        outage_s=5.0,
        seconds=round(elapsed, 1),
        storage="s3://tansu/ on moto",
        crashes=0,
    )
