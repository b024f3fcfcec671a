"""A worker's resident memory stays flat over a long run: 2,000 requests, most of them dedup hits.

A leak per request (a cache of decoded images, publications never released, offsets never forgotten...) shows as
RSS growing with the request count once the models and buffers are warm. One worker process is measured at each
sample twice: from the outside with psutil, as an orchestrator sees it, and through ``rss_probe`` after the worker
handed glibc's free pages back (``malloc_trim``). The test bounds the second: the first also holds free heap that
glibc keeps for reuse, which rose and fell by 5-10 % between samples with the shapes checkpoint's 300-mask results
(1,218 -> 1,295 -> 1,320 -> 1,415 -> 1,284 MiB in one run), so it could not tell a leak from a busy moment.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from reliability_harness import (
    Follow,
    Launcher,
    Publisher,
    Report,
    TopicsFactory,
    WorkerProcess,
    avro_record,
    noise_image,
    rss,
)

from devstack.services import LocalKafka
from schemas import ResultStatus
from segpipe.config import WorkerSettings

pytestmark = pytest.mark.slow

WARM_UP = 300  # requests before the baseline sample: every code path and image size has run by then
TOTAL = 2000
DISTINCT = 300  # the rest are repeats, answered from the dedup cache
MAX_GROWTH = 0.05
PROBE = Path(__file__).parent / "rss_probe"  # its sitecustomize.py answers SIGUSR1 with a trimmed RSS


def _image(seed: int) -> bytes:
    """Two sizes, sixteen seeds at a time each, so full micro-batches of both shapes run during warm-up."""
    return noise_image(40_000 + seed, 96, 128) if (seed // 16) % 2 else noise_image(40_000 + seed, 120, 160)


def _plan() -> list[int]:
    """The image seed of each request: a burst of 32 distinct images first (full batches of both sizes warm up),
    then a new image every seventh request and repeats of earlier ones (dedup hits) in between."""
    seeds = list(range(32))
    newest = 31
    for i in range(32, TOTAL):
        if (i - 32) % 7 == 0 and newest < DISTINCT - 1:
            newest += 1
            seeds.append(newest)
        else:
            seeds.append((i * 7919) % (newest + 1))
    return seeds


PLAN = _plan()


def _requests(start: int, stop: int) -> list:
    return [avro_record(f"m-{i:04d}", _image(PLAN[i])) for i in range(start, stop)]


class TrimmedRss:
    """The worker's RSS after ``gc.collect()`` and ``malloc_trim(0)`` inside it, read through ``rss_probe``."""

    def __init__(self, prefix: Path) -> None:
        self.prefix = prefix
        self.probes = 0

    def __call__(self, worker: WorkerProcess, timeout: float = 60.0) -> int:
        self.probes += 1
        answer = Path(f"{self.prefix}.{self.probes}")
        os.kill(worker.process.pid, signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while not answer.exists():
            assert worker.process.poll() is None, f"worker exited with {worker.process.returncode}"
            assert time.monotonic() < deadline, "the worker's RSS probe did not answer (is rss_probe on its path?)"
            time.sleep(0.1)
        return int(answer.read_text())


def test_rss_stays_flat_over_two_thousand_requests(
    kafka: LocalKafka,
    make_topics: TopicsFactory,
    launcher: Launcher,
    report: Report,
    follow: Follow,
    tmp_path: Path,
) -> None:
    topics = make_topics(2)
    trimmed = TrimmedRss(tmp_path / "rss")
    results = follow(kafka.bootstrap, topics.output)
    # MAX_IN_FLIGHT at the product default (test workers run 4): repeats are answered in bulk, so this sends 2,000
    # requests through in seconds rather than in pause/resume steps.
    # MALLOC_ARENA_MAX=2: glibc gives each decode thread an arena of its own (up to 8 per core), and each arena keeps
    # its own high-water mark: without it RSS rose in one-off steps of 25-40 MiB (3-5 %) when a new arena first
    # filled, then stayed flat; a leak grows with the request count instead. Deployments running many threads
    # commonly set it for the same reason.
    worker = launcher(
        topics,
        MAX_WORKERS="16",
        MAX_IN_FLIGHT=str(WorkerSettings.model_fields["max_in_flight"].default),
        MALLOC_ARENA_MAX="2",
        PYTHONPATH=f"{PROBE}{os.pathsep}{PROBE.parents[2]}",  # the probe, then the repository as usual
        SEGPIPE_RSS_PROBE=str(tmp_path / "rss"),
    )
    worker.wait_assigned(120)
    publisher = Publisher(kafka.bootstrap, topics.input)
    started = time.monotonic()

    publisher.send_all(_requests(0, WARM_UP))
    results.wait_request_ids([f"m-{i:04d}" for i in range(WARM_UP)], timeout=300)
    time.sleep(2)
    outside = [(WARM_UP, rss(worker))]  # before the probe trims
    baseline = trimmed(worker)
    samples = [(WARM_UP, baseline)]

    for chunk in range(WARM_UP, TOTAL, 425):
        stop = min(TOTAL, chunk + 425)
        publisher.send_all(_requests(chunk, stop))
        results.wait_request_ids([f"m-{i:04d}" for i in range(chunk, stop)], timeout=300)
        outside.append((stop, rss(worker)))
        samples.append((stop, trimmed(worker)))
    time.sleep(2)
    final = trimmed(worker)
    elapsed = time.monotonic() - started
    everything = results.results()

    assert len({r.request_id for r in everything}) == TOTAL
    assert all(r.status == ResultStatus.OK for r in everything)
    cached = sum(1 for r in everything if r.cached)
    assert cached >= TOTAL - DISTINCT - 50, f"most requests are dedup hits ({cached})"
    growth = (final - baseline) / baseline
    mib = 1024 * 1024
    assert worker.stop() == 0
    report(
        requests=TOTAL,
        distinct_images=len({r.image_sha256 for r in everything}),
        cache_hits=cached,
        rss_after_warm_up_mib=round(baseline / mib, 1),
        rss_final_mib=round(final / mib, 1),
        growth_percent=round(100 * growth, 2),
        samples_mib=[(n, round(rss / mib, 1)) for n, rss in samples],
        untrimmed_samples_mib=[(n, round(rss / mib, 1)) for n, rss in outside],
        seconds=round(elapsed, 1),
        lost=0,
        crashes=0,
    )
    assert growth < MAX_GROWTH, f"RSS grew {100 * growth:.1f}% after warm-up: {samples}"
