"""The measurements themselves: one function per scenario, each returning a flat-ish dict of numbers.

(a) the bare model loop, (b)/(c)/(d) through the broker and worker processes, (e) the batch-size curve, (f) worker
memory over many requests, plus the per-step cost of everything the pipeline does that the bare loop does not.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psutil

from bench.harness import (
    STAGES,
    Arrival,
    ProcessCpu,
    Received,
    RequestPublisher,
    ResultReader,
    Sent,
    WorkerProcess,
    decode_arrivals,
    own_cpu_s,
)
from bench.images import BenchImage
from bench.stats import latency_summary, mean
from consumers.dedup import DedupCache, dedup_key, model_fingerprint
from pipeline.image_io import decode_image, image_sha256
from pipeline.segmenter import Segmenter, resolve_params
from pipeline.types import Prompts, SegmentationResult, SegmentParams
from schemas import SegmentRequest, SegmentResultMessage, decode_result, encode_request, encode_result, now_ms
from segpipe.config import RedisSettings

MODEL_STAGES = ("preprocess", "fastsam", "sam2", "postprocess")


def _stage_means(timings: Sequence[dict[str, float]]) -> dict[str, float]:
    """Mean ms per image of each stage (a stage an image did not go through counts as 0)."""
    return {stage: mean(t.get(stage, 0.0) for t in timings) for stage in STAGES}


def _model_ms(timings: dict[str, float]) -> float:
    return sum(timings.get(stage, 0.0) for stage in MODEL_STAGES)


def batch_wait_ms(timings: dict[str, float]) -> float:
    """Time a request waits for its batchmates' model work, which its own timings do not show.

    The engine reports each request's *share* of a batched FastSAM/SAM2 call, and runs every batchmate's
    postprocess before it emits any of them; so a request in a batch of k waits about k times its own model time.
    The batchmates' part, (k - 1) x own model time, is reported separately so it is not mistaken for Kafka time.
    """
    size = timings.get("batch_size", 1.0)
    return max(0.0, size - 1.0) * _model_ms(timings)


# ------------------------------------------------------------------------------------------------ (a) bare loop


def bare_loop(
    segmenter: Segmenter, images: Sequence[BenchImage], idle: dict[str, psutil.Process] | None = None
) -> tuple[dict[str, Any], list[SegmentationResult]]:
    """(a) ``Segmenter.segment`` image by image: no Kafka, no Redis, no decoding — the limit for (b)."""
    cpu = ProcessCpu(idle or {})
    cpu_start = own_cpu_s()
    latencies, timings, results = [], [], []
    started = time.perf_counter()
    for image in images:
        t0 = time.perf_counter()
        result = segmenter.segment(image.pixels)
        latencies.append((time.perf_counter() - t0) * 1000.0)
        timings.append(dict(result.timings_ms))
        results.append(result)
    wall = time.perf_counter() - started
    cpu_s = own_cpu_s() - cpu_start
    stages = _stage_means(timings)
    stages["batch_wait"] = 0.0
    stages["kafka"] = 0.0
    metrics = {
        "images": len(images),
        "wall_s": wall,
        "images_per_s": len(images) / wall,
        "ms_per_image": wall * 1000.0 / len(images),
        "latency_ms": latency_summary(latencies),
        "stages_ms": stages,
        "model_ms_per_image": mean(_model_ms(t) for t in timings),
        "engine_other_ms": mean(lat - _model_ms(t) for lat, t in zip(latencies, timings, strict=True)),
        "cpu_s_per_image": cpu_s / len(images),
        "cpu_utilisation": cpu_s / wall,
        "models": dict(Counter(str(r.model) for r in results)),
        "masks_per_image": mean(len(r.masks) for r in results),
        # what idle workers, the broker and Redis burnt meanwhile (they share the cores with the measured loop)
        "background_cpu_s": {name: value for name, value in cpu.delta().items() if not math.isnan(value)},
    }
    return metrics, results


# ------------------------------------------------------------------------------------------ (e) batch-size curve


def batch_curve(segmenter: Segmenter, images: Sequence[BenchImage], batch_sizes: Sequence[int]) -> dict[str, Any]:
    """(e) ``Segmenter.segment_batch`` over the same images in chunks of each batch size."""
    curve = []
    for size in batch_sizes:
        cpu_start = own_cpu_s()
        started = time.perf_counter()
        fastsam_ms = 0.0
        for first in range(0, len(images), size):
            chunk = images[first : first + size]
            outcomes = segmenter.segment_batch([(im.pixels, Prompts(), SegmentParams()) for im in chunk])
            for outcome in outcomes:
                if not isinstance(outcome, SegmentationResult):
                    raise RuntimeError(f"segment_batch failed at batch size {size}: {outcome!r}")
                fastsam_ms += outcome.timings_ms.get("fastsam", 0.0)
        wall = time.perf_counter() - started
        curve.append(
            {
                "batch_size": size,
                "images_per_s": len(images) / wall,
                "ms_per_image": wall * 1000.0 / len(images),
                "fastsam_ms_per_image": fastsam_ms / len(images),
                "cpu_s_per_image": (own_cpu_s() - cpu_start) / len(images),
            }
        )
    base = curve[0]["images_per_s"]
    for point in curve:
        point["speedup_vs_first"] = point["images_per_s"] / base
    return {"curve": curve}


# ------------------------------------------------------------------------------ pipeline-only steps, one by one


def pipeline_steps(
    images: Sequence[BenchImage],
    results: Sequence[SegmentationResult],
    segmenter: Segmenter,
    redis_settings: RedisSettings | None,
) -> dict[str, float]:
    """Mean ms per image of each step the pipeline adds to the bare loop, timed alone in this process.

    Producer: Avro-encode the request. Worker: decode the PNG, hash the pixels, build the dedup key, (Redis
    lookup/claim and store), build and Avro-encode the result. Reader: decode the result. Redis steps only when a
    server is running.
    """
    params = resolve_params(SegmentParams(), segmenter.settings)
    fingerprint = model_fingerprint(segmenter.settings)
    steps: dict[str, list[float]] = {
        k: [] for k in ("encode_request", "decode_png", "sha256", "dedup_key", "encode_result", "decode_result")
    }
    encoded: list[bytes] = []
    keys: list[str] = []

    def timed(name: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        value = fn()
        steps[name].append((time.perf_counter() - t0) * 1000.0)
        return value

    for image, result in zip(images, results, strict=True):
        request = SegmentRequest(uuid.uuid4().hex, image.png, submitted_at_ms=now_ms())
        timed("encode_request", lambda request=request: encode_request(request))
        pixels = timed("decode_png", lambda image=image: decode_image(image.png))
        digest = timed("sha256", lambda pixels=pixels: image_sha256(pixels))
        keys.append(timed("dedup_key", lambda digest=digest: dedup_key(digest, Prompts(), params, fingerprint)))

        def build(result: SegmentationResult = result, digest: str = digest) -> bytes:
            message = SegmentResultMessage.ok("bench", result, image_sha256=digest, worker_id="bench")
            return encode_result(message)

        data = timed("encode_result", build)
        encoded.append(data)
        timed("decode_result", lambda data=data: decode_result(data))
    out = {name: mean(values) for name, values in steps.items()}
    out["result_bytes"] = mean(len(d) for d in encoded)
    out["request_bytes"] = mean(len(im.png) for im in images)
    if redis_settings is not None:
        cache = DedupCache(redis_settings)
        try:
            claim, put, get = [], [], []
            for key, data in zip(keys, encoded, strict=True):
                bench_key = f"bench:{uuid.uuid4().hex}:{key}"
                t0 = time.perf_counter()
                cache.lookup_or_claim(bench_key, "bench", timeout=1.0)
                t1 = time.perf_counter()
                cache.put(bench_key, data, "bench")
                t2 = time.perf_counter()
                cache.get(bench_key)
                t3 = time.perf_counter()
                claim.append((t1 - t0) * 1000)
                put.append((t2 - t1) * 1000)
                get.append((t3 - t2) * 1000)
                cache.client.delete(bench_key)
            out.update(redis_lookup_or_claim=mean(claim), redis_put=mean(put), redis_get=mean(get))
        finally:
            cache.close()
    return out


# ------------------------------------------------------------------------------------- (b), (c), (d): pipeline


@dataclass
class PipelineContext:
    """What the pipeline scenarios share: the publisher, the reader and the service processes."""

    publisher: RequestPublisher
    reader: ResultReader
    broker: psutil.Process
    redis: psutil.Process
    timeout_s: float
    others: dict[str, psutil.Process] = field(default_factory=dict)


@dataclass
class Collected:
    """What one publish-and-collect pass sent and got back (raw: decode with :meth:`decoded` off the clock)."""

    sent: list[Sent]
    arrivals: dict[str, Arrival]
    started: float  # epoch s, first publish
    published: float  # epoch s, every request handed over and flushed
    ended: float  # epoch s, last result received

    def decoded(self) -> dict[str, Received]:
        return decode_arrivals(self.arrivals)


def publish_and_collect(
    ctx: PipelineContext,
    topic: str,
    partitions: int,
    payloads: Sequence[bytes],
    workers: Sequence[WorkerProcess],
    *,
    source: str,
    window: int | None = None,
) -> Collected:
    """Publish round-robin over the partitions — all at once (produce all, then flush), or keeping at most
    ``window`` requests without a result (closed loop) — and collect every result, undecoded.

    Closed loop assumes no other results arrive meanwhile (scenarios run one at a time and wait for all theirs).
    """

    def alive() -> None:
        for worker in workers:
            worker.check_alive()

    started = time.time()
    if window is None:  # open loop: the whole burst at once
        sent = ctx.publisher.publish_burst(
            topic, payloads, partitions=partitions, params=SegmentParams(), source=source
        )
    else:  # closed loop: at most `window` requests without a result
        sent = []
        base = ctx.reader.total
        for i, payload in enumerate(payloads):
            while i - (ctx.reader.total - base) >= window:
                ctx.reader.wait_total(base + i - window + 1, 1.0)
                alive()
            sent.append(
                ctx.publisher.publish(topic, payload, partition=i % partitions, params=SegmentParams(), source=source)
            )
        ctx.publisher.flush()
    published = time.time()
    arrivals = ctx.reader.wait([s.request_id for s in sent], ctx.timeout_s, alive)
    ended = max(a.received_at for a in arrivals.values())
    return Collected(sent, arrivals, started, published, ended)


def pipeline_run(
    ctx: PipelineContext,
    topic: str,
    partitions: int,
    payloads: Sequence[bytes],
    workers: Sequence[WorkerProcess],
    *,
    source: str,
    window: int | None = None,
    label: str | None = None,
) -> dict[str, Any]:
    """(b)/(c)/(d): requests through the broker (a burst, or closed loop with ``window``); throughput from first
    publish to last result. Results are decoded after the clock and the CPU counters have stopped."""
    watched = {w.worker_id: w.ps for w in workers} | {"broker": ctx.broker, "redis": ctx.redis}
    cpu = ProcessCpu(watched)
    own_start = own_cpu_s()
    stalls_before = ctx.publisher.stalls
    collected = publish_and_collect(ctx, topic, partitions, payloads, workers, source=source, window=window)
    cpu_delta = cpu.delta()
    cpu_delta["bench"] = own_cpu_s() - own_start
    decode_started = time.perf_counter()
    results = collected.decoded()
    decode_s = time.perf_counter() - decode_started
    sent, started, ended = collected.sent, collected.started, collected.ended
    wall = ended - started
    by_id = {s.request_id: s for s in sent}
    ordered = [results[s.request_id] for s in sent]
    e2e = [r.created_at_ms - by_id[r.request_id].submitted_at_ms for r in ordered]
    waits = [batch_wait_ms(r.timings_ms) for r in ordered]
    stage_totals = [
        sum(r.timings_ms.get(stage, 0.0) for stage in STAGES) + w for r, w in zip(ordered, waits, strict=True)
    ]
    stages = _stage_means([r.timings_ms for r in ordered])
    stages["batch_wait"] = mean(waits)
    stages["kafka"] = mean(max(0.0, e - s) for e, s in zip(e2e, stage_totals, strict=True))
    count = len(sent)
    per_worker: dict[str, dict[str, float]] = {}
    for worker in workers:
        mine = [r for r in ordered if r.worker_id == worker.worker_id]
        per_worker[worker.worker_id] = {
            "results": len(mine),
            "model_busy_fraction": sum(_model_ms(r.timings_ms) for r in mine) / (wall * 1000.0),
            "cpu_s": cpu_delta.get(worker.worker_id, math.nan),
        }
    worker_cpu = sum(cpu_delta.get(w.worker_id, 0.0) for w in workers)
    bytes_in = sum(s.size_bytes for s in sent)
    bytes_out = sum(r.size_bytes for r in ordered)
    metrics: dict[str, Any] = {
        "label": label or source,
        "mode": "burst" if window is None else "closed loop",
        "window": window,
        "images": count,
        "wall_s": wall,
        "images_per_s": count / wall,
        "ms_per_image": wall * 1000.0 / count,
        "latency_ms": latency_summary(e2e),
        "result_delivery_ms": latency_summary([r.received_at * 1000.0 - r.created_at_ms for r in ordered]),
        "stages_ms": stages,
        "model_ms_per_image": mean(_model_ms(r.timings_ms) for r in ordered),
        "batch_size_mean": mean(r.timings_ms.get("batch_size", 0.0) for r in ordered if "batch_size" in r.timings_ms),
        "cpu_s": cpu_delta,
        "cpu_s_per_image": worker_cpu / count,
        "workers": per_worker,
        "models": dict(Counter(str(r.model) for r in ordered)),
        "cached": sum(r.cached for r in ordered),
        "errors": dict(Counter(r.error_code for r in ordered if r.error_code)),
        "request_bytes": bytes_in / count,
        "result_bytes": bytes_out / count,
        # through the broker, first publish -> last result: requests in, results out (the Avro values)
        "mb_in_per_s": bytes_in / wall / 1e6,
        "mb_out_per_s": bytes_out / wall / 1e6,
        # the bench's own side, to show it is not the bottleneck
        "publish_s": collected.published - started,
        "publish_stalls": ctx.publisher.stalls - stalls_before,
        "bench_decode_us_per_result": decode_s * 1e6 / count,
        "round_trip_ms": latency_summary(
            [r.received_at * 1000.0 - by_id[r.request_id].submitted_at_ms for r in ordered]
        ),
        "arrival_gaps": arrival_gaps(started, [r.received_at for r in ordered]),
    }
    if window is not None:  # Little's law: a closed loop cannot beat window / round trip, however fast the worker
        metrics["window_bound_per_s"] = window / (metrics["round_trip_ms"]["mean"] / 1000.0)
    return metrics


def arrival_gaps(started: float, received_at: Sequence[float], stall_s: float = 0.2) -> dict[str, float]:
    """When results came: the first one after the first publish, and the pauses between consecutive ones (a stall
    of the worker, e.g. a pause/resume of its partitions, shows as a gap of ~1 s while the rest are ms)."""
    times = sorted(received_at)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    stalls = [g for g in gaps if g >= stall_s]
    return {
        "first_result_ms": (times[0] - started) * 1000.0 if times else math.nan,
        "max_ms": max(gaps, default=math.nan) * 1000.0,
        f"over_{stall_s * 1000:.0f}ms_count": len(stalls),
        f"over_{stall_s * 1000:.0f}ms_s": sum(stalls),
    }


# ------------------------------------------------------------------------------------------------- (f) memory


def memory_run(
    ctx: PipelineContext,
    topic: str,
    worker: WorkerProcess,
    prime_payloads: Sequence[bytes],
    total: int,
    *,
    window: int,
    sample_s: float = 0.5,
    baseline_fraction: float = 0.05,
) -> dict[str, Any]:
    """(f) Worker RSS over ``total`` requests: the first ``len(prime_payloads)`` are computed by the model, the
    rest repeat them (dedup hits), fed closed loop (``window`` without a result). RSS is sampled every
    ``sample_s`` seconds with the number of results so far.

    The baseline ("first") is the first sample after ``baseline_fraction`` of the requests, so model loading, the
    first inference and allocator warm-up of the hit path are not counted as growth.
    """
    samples: list[tuple[float, int, float, float]] = []
    stop = threading.Event()
    base = ctx.reader.total

    def sample() -> None:
        started = time.monotonic()
        while not stop.is_set():
            try:
                broker_mb = ctx.broker.memory_info().rss / 2**20
            except psutil.Error:
                broker_mb = math.nan
            samples.append((time.monotonic() - started, ctx.reader.total - base, worker.rss_mb(), broker_mb))
            stop.wait(sample_s)

    sampler = threading.Thread(target=sample, name="bench-rss", daemon=True)
    rss_before_prime = worker.rss_mb()
    try:
        publish_and_collect(ctx, topic, 1, prime_payloads, [worker], source="bench-f-prime")
        rss_after_prime = worker.rss_mb()
        sampler.start()
        repeats = [prime_payloads[i % len(prime_payloads)] for i in range(total - len(prime_payloads))]
        collected = publish_and_collect(ctx, topic, 1, repeats, [worker], source="bench-f", window=window)
        started, ended = collected.started, collected.ended
        results = collected.decoded()
        time.sleep(sample_s)
    finally:
        stop.set()
        if sampler.is_alive():
            sampler.join(5)
    baseline_at = len(prime_payloads) + baseline_fraction * len(repeats)
    steady = [s for s in samples if s[1] >= baseline_at and not math.isnan(s[2])]
    if not steady:
        steady = [s for s in samples if not math.isnan(s[2])]
    first, last = steady[0][2], steady[-1][2]
    peak = max(s[2] for s in steady)
    step = max(1, len(samples) // 200)
    return {
        "requests": total,
        "computed": len(prime_payloads),
        "dedup_hits": sum(r.cached for r in results.values()),
        "window": window,
        "hits_per_s": len(repeats) / (ended - started),
        "rss_mb": {
            "before_priming": rss_before_prime,
            "after_priming": rss_after_prime,
            "first": first,
            "last": last,
            "max": peak,
            "min": min(s[2] for s in steady),
            "change_pct": (last - first) / first * 100.0,
            "max_over_first_pct": (peak - first) / first * 100.0,
        },
        "baseline_after_requests": int(baseline_at),
        "broker_rss_mb": {
            "first": samples[0][3] if samples else math.nan,
            "last": samples[-1][3] if samples else math.nan,
        },
        "samples": [{"t_s": t, "results": n, "rss_mb": rss, "broker_rss_mb": b} for t, n, rss, b in samples[::step]],
    }
