"""kill -9 chaos: three workers, six partitions, a few hundred requests, ten SIGKILLs at random moments.

A SIGKILLed worker gets no chance to finish, flush or commit, so this is the harshest test of at-least-once: every
request must still get a result, and the duplicates that the redelivery causes must stay within what a killed worker
could have had in flight. Run twice: with the test harness's small MAX_IN_FLIGHT (the bound by construction), and at
the product's defaults (MAX_IN_FLIGHT, MAX_WORKERS 8, REDIS_LOCK_TTL 30 s), where what bounds duplicates is that a
killed worker's dedup claims are taken over as soon as its liveness key lapses.
"""

from __future__ import annotations

import random
import threading
import time
from collections import defaultdict
from types import SimpleNamespace

import pytest
from reliability_harness import (
    Follow,
    Launcher,
    Publisher,
    Report,
    TopicsFactory,
    avro_record,
    committed_offsets,
    duplicates,
    noise_image,
)

from consumers.worker import Worker
from devstack.services import LocalKafka
from schemas import ResultStatus, SegmentResultMessage
from segpipe.config import WorkerSettings

pytestmark = pytest.mark.slow

WORKERS = 3
PARTITIONS = 6
KILLS = 10
DISTINCT = 250
REPEATS = 50
SEED = 20261124
PUBLISH_INTERVAL_S = 0.4
# The product's defaults (BATCH_SIZE unset resolves to 1 on a CPU); the tiny-model settings of the harness stay.
PRODUCT_DEFAULTS = {
    "MAX_IN_FLIGHT": str(WorkerSettings.model_fields["max_in_flight"].default),
    "MAX_WORKERS": str(WorkerSettings.model_fields["max_workers"].default),
    "BATCH_SIZE": "1",
    "REDIS_LOCK_TTL": "30",
}
BURST_INTERVAL_S = 0.1  # at the defaults: 10 requests/s, more than three CPU workers answer, so victims hold a backlog
DEFAULTS_MAX_EXTRA = 10  # issue #10's target over ten kills at the defaults
DEFAULTS_MAX_DRAIN_S = 15.0  # last result after the last kill, model time aside (asserted with the model's share added)


def _max_in_flight(env: dict[str, str]) -> int:
    """Worker.max_in_flight for the workers' environment, computed by the worker's own property."""
    fields = {"max_workers": "MAX_WORKERS", "max_in_flight": "MAX_IN_FLIGHT", "batch_size": "BATCH_SIZE"}
    settings = SimpleNamespace(worker=WorkerSettings(**{name: int(env[var]) for name, var in fields.items()}))
    return int(Worker.max_in_flight.fget(SimpleNamespace(settings=settings)))  # type: ignore[attr-defined]


def test_ten_sigkills_lose_nothing_and_bound_duplicates(
    kafka: LocalKafka, make_topics: TopicsFactory, launcher: Launcher, report: Report, follow: Follow
) -> None:
    """300 requests published while a chaos loop SIGKILLs a random worker ten times and starts a replacement."""
    figures = _chaos(kafka, make_topics, launcher, follow, {})
    assert figures["extra_results"] <= figures["duplicate_bound"], figures
    report(**figures)


def test_ten_sigkills_at_product_defaults(
    kafka: LocalKafka, make_topics: TopicsFactory, launcher: Launcher, report: Report, follow: Follow
) -> None:
    """The same chaos with the product's defaults: few duplicates, and the stream drains soon after the last kill."""
    # Images of their own: after the first test they would all be dedup hits, and nothing would wait for the model.
    figures = _chaos(
        kafka, make_topics, launcher, follow, PRODUCT_DEFAULTS, stream_follows_kills=True, image_seeds=DISTINCT
    )
    report(**figures)
    assert figures["extra_results"] <= DEFAULTS_MAX_EXTRA, figures
    # After the last kill: the group notices (session timeout), a dead owner's claims lapse (REDIS_LIVENESS_TTL, well
    # inside it), then the new owner answers what piled up (unanswered at the kill or published after it): model
    # time, measured here per request, on a machine the three workers share.
    waiting = figures["backlog_at_last_kill"] + figures["published_after_last_kill"]
    model_share = waiting * figures["model_s_per_request"]
    assert figures["last_result_after_last_kill_s"] <= DEFAULTS_MAX_DRAIN_S + model_share, figures


def _chaos(
    kafka: LocalKafka,
    make_topics: TopicsFactory,
    launcher: Launcher,
    follow: Follow,
    overrides: dict[str, str],
    *,
    stream_follows_kills: bool = False,
    image_seeds: int = 0,
) -> dict[str, object]:
    """Run the chaos; assert nothing lost, all ok, duplicates equal, offsets committed; return the figures.

    ``image_seeds``: the first image's seed (the images are seeded noise).
    ``stream_follows_kills``: instead of one steady stream (which, on a loaded machine where a replacement takes
    20 s to start, can end before the last kills and leave them hitting idle workers), a burst of 30 requests is
    published (BURST_INTERVAL_S apart) after each replacement is consuming, and the kill lands 0.5-2 s into it: every
    kill then hits a worker holding a backlog of claimed records, the drain after the last kill included.
    """
    rng = random.Random(SEED)
    topics = make_topics(PARTITIONS)
    results = follow(kafka.bootstrap, topics.output)
    workers = [launcher(topics, **overrides) for _ in range(WORKERS)]
    launched = list(workers)
    for worker in workers:
        worker.wait_assigned(120)
    env = workers[0].env
    bound_per_kill = _max_in_flight(env)

    seeds = list(range(DISTINCT)) + [rng.randrange(DISTINCT) for _ in range(REPEATS)]
    rng.shuffle(seeds)
    records = [avro_record(f"req-{i:03d}", noise_image(image_seeds + seed, 96, 128)) for i, seed in enumerate(seeds)]
    publisher = Publisher(kafka.bootstrap, topics.input)
    published_at: list[float] = []

    def publish() -> None:  # a steady stream over the whole chaos, so every kill lands on a busy worker
        for record in records:
            publisher.send(record)
            published_at.append(time.time())
            time.sleep(PUBLISH_INTERVAL_S)
        publisher.flush()

    def publish_chunk(chunk: list) -> None:
        for record in chunk:
            publisher.send(record)
            published_at.append(time.time())
            time.sleep(BURST_INTERVAL_S)

    chunks = [records[i::KILLS] for i in range(KILLS)]  # the request ids interleave, the images stay shuffled
    feeder = threading.Thread(target=publish, name="publisher")
    started = time.monotonic()
    if not stream_follows_kills:
        feeder.start()
    kills: list[dict[str, object]] = []
    last_kill_wall = 0.0
    backlog_at_last_kill = published_at_last_kill = 0
    for kill in range(KILLS):
        # A random moment once the previous replacement is consuming: killing a worker that is still importing
        # torch would test nothing.
        for worker in workers:
            worker.wait_assigned(120)
        if stream_follows_kills:
            if kill:
                feeder.join()
            feeder = threading.Thread(target=publish_chunk, args=(chunks[kill],), name=f"publisher-{kill}")
            feeder.start()
            time.sleep(rng.uniform(0.5, 2.0))  # inside the 3 s burst: the victim holds a backlog of claimed records
        else:
            time.sleep(rng.uniform(1.0, 5.0))
        victim = rng.choice([w for w in workers if w.process.poll() is None])
        victim.kill()
        last_kill_wall = time.time()
        published_at_last_kill = len(published_at)
        backlog_at_last_kill = published_at_last_kill - len({r.request_id for r in results.results()})
        kills.append(
            {
                "at_s": round(time.monotonic() - started, 1),
                "worker": victim.env["WORKER_ID"],
                "results_published_before": victim.log().count("INFO __main__: result "),
            }
        )
        workers.remove(victim)
        workers.append(launcher(topics, **overrides))
        launched.append(workers[-1])
    feeder.join()
    publisher.flush()
    request_ids = [f"req-{i:03d}" for i in range(len(records))]
    results.wait_request_ids(request_ids, timeout=420)
    finished = time.monotonic() - started

    for worker in workers:  # the last replacement may still be starting: SIGTERM before its handler is default
        worker.wait_assigned(120)
    exit_codes = [worker.stop(120) for worker in workers]
    time.sleep(3)  # late copies, if any, are counted too
    everything = results.results()
    seen = results.snapshot()
    results.close()

    assert exit_codes == [0] * len(workers), "the surviving workers stop cleanly on SIGTERM"
    assert {r.request_id for r in everything} == set(request_ids), "every request has at least one result"
    failed = [r for r in everything if r.status != ResultStatus.OK]
    assert not failed, [(r.request_id, r.error) for r in failed[:5]]

    extra = duplicates(everything)
    by_id: dict[str, list[SegmentResultMessage]] = defaultdict(list)
    for result in everything:
        by_id[result.request_id].append(result)
    served_from_cache = recomputed = 0  # per duplicated request: did a copy come from Redis, or were all computed?
    for request_id in extra:
        copies = by_id[request_id]
        first = copies[0]
        for copy in copies[1:]:
            assert copy.masks == first.masks, f"{request_id}: a duplicate carries other masks"
            assert (copy.model, copy.image_sha256) == (first.model, first.image_sha256)
        if any(c.cached for c in copies):
            served_from_cache += 1
        else:
            recomputed += 1  # equal masks from two model runs: the models are deterministic on CPU
    total_extra = sum(extra.values())
    victims = {str(kill["worker"]) for kill in kills}
    # Redelivery events: the kills, plus any member the group evicted (its partitions "lost") and any revocation
    # whose commit failed. Each can redeliver at most what the worker had uncommitted: max_in_flight records.
    logs = [worker.log() for worker in launched]
    evictions = sum(log.count("partitions lost:") for log in logs)
    failed_revoke_commits = sum(
        1 for log in logs for line in log.splitlines() if "commit on revoke:" in line and "_NO_OFFSET" not in line
    )
    events = KILLS + evictions + failed_revoke_commits
    computed = [r for r in everything if not r.cached]
    model_s = sum(r.timings_ms.get("fastsam", 0.0) + r.timings_ms.get("sam2", 0.0) for r in computed) / 1000.0

    ends = publisher.ends()
    assert committed_offsets(kafka.bootstrap, topics.group, topics.input, PARTITIONS) == {
        p: ends.get(p, -1001) for p in range(PARTITIONS)
    }, "after the last graceful stop every partition is committed to its end"

    last_result_wall = max(s.timestamp_ms for s in seen) / 1000.0
    last_published_wall = max(published_at)
    return {
        "settings": {k: env[k] for k in ("MAX_IN_FLIGHT", "MAX_WORKERS", "BATCH_SIZE", "REDIS_LOCK_TTL")},
        "requests": len(records),
        "distinct_images": DISTINCT,
        "results": len(everything),
        "lost": 0,
        "duplicated_requests": len(extra),
        "extra_results": total_extra,
        "max_in_flight": bound_per_kill,
        "redelivery_events": {"kills": KILLS, "evictions": evictions, "failed_revoke_commits": failed_revoke_commits},
        "duplicate_bound": events * bound_per_kill,
        "duplicates_with_a_cached_copy": served_from_cache,
        "duplicates_all_recomputed": recomputed,
        # A copy published by a worker later killed: its result went out, its offset was not committed yet.
        "duplicates_published_by_a_killed_worker": sum(
            1 for request_id in extra if any(c.worker_id in victims for c in by_id[request_id])
        ),
        "claims_taken_over": sum(log.count("took over the claim") for log in logs),
        "kills": kills,
        "last_result_after_last_kill_s": round(last_result_wall - last_kill_wall, 1),
        "last_result_after_last_publish_s": round(last_result_wall - last_published_wall, 1),
        "last_publish_after_last_kill_s": round(last_published_wall - last_kill_wall, 1),
        "backlog_at_last_kill": backlog_at_last_kill,
        "published_after_last_kill": len(records) - published_at_last_kill,
        "model_s_per_request": round(model_s / max(1, len(computed)), 2),
        "seconds": round(finished, 1),
        "crashes": 0,
    }
