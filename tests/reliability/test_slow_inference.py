"""Inference slower than max.poll.interval.ms, and partitions revoked while their records are in the model.

Each request here is a real SAM2 run (model=sam2, the automatic mask generator) that takes ~10 s on one core, longer
than the 7 s max.poll.interval.ms and the 6 s session timeout the workers run with. A worker that blocked its poll
loop on the model would be thrown out of the group again and again (a rebalance storm); one that committed on
revocation without finishing would lose requests.
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter

import pytest
from confluent_kafka.admin import AdminClient
from reliability_harness import (
    Follow,
    Launcher,
    Publisher,
    Report,
    TopicsFactory,
    avro_record,
    committed_offsets,
    noise_image,
)
from worker_harness import WorkerProcess

from devstack.services import LocalKafka
from pipeline.types import ModelChoice, SegmentParams
from schemas import ResultStatus

pytestmark = pytest.mark.slow

PARTITIONS = 4
SLOW_ENV = {
    "KAFKA_SESSION_TIMEOUT_MS": "6000",
    "KAFKA_HEARTBEAT_INTERVAL_MS": "1000",
    "KAFKA_MAX_POLL_INTERVAL_MS": "7000",  # librdkafka wants max.poll.interval.ms >= session.timeout.ms
    "SAM2_POINTS_PER_SIDE": "4",
    "BATCH_SIZE": "1",
}
_GROUP_EVENT = re.compile(r"\b(assigned|revoked|partitions lost|handing back|poll interval)\b", re.IGNORECASE)


def _slow_requests(prefix: str, count: int, seed: int) -> list:
    """model=sam2 requests on distinct images: each one is a full SAM2 automatic-mask-generator run."""
    return [
        avro_record(f"{prefix}-{i}", noise_image(seed + i, 240, 320), params=SegmentParams(model=ModelChoice.SAM2))
        for i in range(count)
    ]


def _group_events(worker: WorkerProcess) -> Counter[str]:
    return Counter(match.group(1).lower() for match in _GROUP_EVENT.finditer(worker.log()))


class MembershipWatch:
    """Samples the group's members (DescribeGroups via the AdminClient) once a second on a background thread."""

    def __init__(self, bootstrap: str, group: str) -> None:
        self._admin = AdminClient({"bootstrap.servers": bootstrap})
        self._group = group
        self.samples: list[tuple[float, frozenset[str]]] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            try:
                future = self._admin.describe_consumer_groups([self._group], request_timeout=5)[self._group]
                description = future.result(timeout=5)
                members = frozenset(m.client_id + "/" + m.member_id for m in description.members)
                self.samples.append((time.monotonic(), members))
            except Exception as exc:  # noqa: BLE001 - the broker may not support it: fall back on the logs
                self.errors.append(f"{type(exc).__name__}: {exc}")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)


def test_inference_slower_than_max_poll_interval_keeps_the_group_stable(
    kafka: LocalKafka, make_topics: TopicsFactory, launcher: Launcher, report: Report, follow: Follow
) -> None:
    """Two workers, six ~10 s SAM2 requests: no member leaves or joins, no rebalance, exactly one result each."""
    topics = make_topics(PARTITIONS)
    results = follow(kafka.bootstrap, topics.output)
    first = launcher(topics, **SLOW_ENV)
    first.wait_assigned(120)
    second = launcher(topics, **SLOW_ENV)
    second.wait_assigned(120)
    time.sleep(8)  # let the join rebalance settle before taking the baseline
    before = {w.env["WORKER_ID"]: _group_events(w) for w in (first, second)}
    watch = MembershipWatch(kafka.bootstrap, topics.group)

    records = _slow_requests("slow", 6, seed=7000)
    publisher = Publisher(kafka.bootstrap, topics.input)
    started = time.monotonic()
    publisher.send_all(records)
    everything = results.wait_request_ids([f"slow-{i}" for i in range(len(records))], timeout=300)
    elapsed = time.monotonic() - started
    time.sleep(3)
    everything = results.results()
    watch.close()
    results.close()
    after = {w.env["WORKER_ID"]: _group_events(w) for w in (first, second)}

    counts = Counter(r.request_id for r in everything)
    assert all(n == 1 for n in counts.values()), f"exactly one result per request: {counts}"
    assert all(r.status == ResultStatus.OK and str(r.model) == "sam2" for r in everything), everything
    slowest = max(r.timings_ms.get("sam2", 0.0) for r in everything)
    assert slowest > 7000, f"the test needs inference slower than max.poll.interval.ms, got {slowest:.0f} ms"
    assert before == after, f"group events during the slow work: before {before}, after {after}"
    assert first.process.poll() is None and second.process.poll() is None
    memberships = {members for _, members in watch.samples if members}
    if memberships:  # tansu 0.6.0 answers DescribeGroups with an empty member list: then the logs are the evidence
        assert len(memberships) == 1 and len(next(iter(memberships))) == 2, memberships
    assert first.stop() == 0 and second.stop() == 0
    report(
        requests=len(records),
        results=len(everything),
        lost=0,
        duplicated=0,
        slowest_sam2_ms=round(slowest),
        max_poll_interval_ms=7000,
        seconds=round(elapsed, 1),
        group_events=after,
        membership_samples=len(watch.samples),
        distinct_memberships=len(memberships),
        describe_groups_lists_members=bool(memberships),
        describe_errors=watch.errors[:2],
        crashes=0,
    )


def test_partitions_revoked_mid_inference_are_finished_or_handed_back(
    kafka: LocalKafka, make_topics: TopicsFactory, launcher: Launcher, report: Report, follow: Follow
) -> None:
    """A second worker joins while the first has slow records in the model: nothing is lost, and no offset is ever
    committed before the results of every record below it were written."""
    topics = make_topics(PARTITIONS)
    results = follow(kafka.bootstrap, topics.output)
    # Four in flight, all on the model path: some on partitions it will lose.
    first = launcher(topics, **{**SLOW_ENV, "MAX_WORKERS": "4", "MAX_IN_FLIGHT": "4"})
    first.wait_assigned(120)
    records = _slow_requests("handover", 2 * PARTITIONS, seed=8000)
    publisher = Publisher(kafka.bootstrap, topics.input)
    for i, record in enumerate(records[:PARTITIONS]):  # one per partition: whichever two it loses, it loses work
        publisher.send(record, partition=i)
    publisher.flush()

    samples: list[tuple[float, dict[int, int]]] = []
    stop = threading.Event()

    def sample_commits() -> None:
        while not stop.wait(0.5):
            offsets = committed_offsets(kafka.bootstrap, topics.group, topics.input, PARTITIONS)
            samples.append((time.time() * 1000.0, offsets))

    sampler = threading.Thread(target=sample_commits, daemon=True)
    sampler.start()
    time.sleep(4)  # the first worker has taken records and is inside SAM2 with them
    second = launcher(topics, **SLOW_ENV)
    second.wait_assigned(120)
    for i, record in enumerate(records[PARTITIONS:]):  # and the group goes on working after the handover
        publisher.send(record, partition=i)
    publisher.flush()
    request_ids = [f"handover-{i}" for i in range(len(records))]
    results.wait_request_ids(request_ids, timeout=300)
    time.sleep(3)
    stop.set()
    sampler.join(10)
    seen = results.snapshot()
    results.close()

    from schemas import decode_result

    written_at = {}
    for item in seen:
        result = decode_result(item.value)
        written_at.setdefault(result.request_id, item.timestamp_ms)
    position = {(p.partition, p.offset): p.request_id for p in publisher.placed.values()}
    for sampled_at, offsets in samples:
        for partition, committed in offsets.items():
            for offset in range(max(committed, 0)):
                request_id = position.get((partition, offset))
                if request_id is None:
                    continue
                assert request_id in written_at and written_at[request_id] <= sampled_at, (
                    f"offset {partition}:{offset} ({request_id}) committed before its result was written"
                )
    counts = Counter(decode_result(item.value).request_id for item in seen)
    assert set(counts) == set(request_ids), "no request lost"
    assert all(n == 1 for n in counts.values()), f"a handed-back record is answered by its new owner only: {counts}"
    events = {w.env["WORKER_ID"]: _group_events(w) for w in (first, second)}
    assert events[first.env["WORKER_ID"]]["handing back"] >= 1, "the revocation found unfinished work to hand back"
    by_worker = Counter(decode_result(item.value).worker_id for item in seen)
    cached = sorted(r.request_id for r in (decode_result(item.value) for item in seen) if r.cached)
    assert first.stop() == 0 and second.stop() == 0
    ends = publisher.ends()
    assert committed_offsets(kafka.bootstrap, topics.group, topics.input, PARTITIONS) == {
        p: ends.get(p, -1001) for p in range(PARTITIONS)
    }
    report(
        requests=len(records),
        results=sum(counts.values()),
        lost=0,
        duplicated=sum(n - 1 for n in counts.values()),
        commit_samples=len(samples),
        results_by_worker=dict(by_worker),
        served_from_cache_after_handover=cached,
        group_events=events,
        crashes=0,
    )
