"""Cold start (``--scenarios cold``): what an autoscaler pays for every new worker.

A fresh ``python -m consumers.worker`` on a fresh input topic and group, with one request already waiting in it;
the checkpoints are in the page cache (the bench has read them). From ``Popen`` the bench watches the worker's log
(``LOG_LEVEL=INFO``, polled every 10 ms) for the moments FastSAM and SAM2 finish loading and partitions are
assigned, and its result reader for the waiting request's result:

- ``assigned_s``: process start -> "assigned" (the issue's cold-start figure, ``cold_start_s``);
- ``first_result_s``: process start -> the waiting request's result received (ready to serve, first predict
  included);
- ``fastsam_loaded_s`` / ``sam2_loaded_s``: the load markers (interpreter start and imports are in the first).

Three variants, interleaved trial by trial: the product default (the worker subscribes first, so the group join
runs on librdkafka's thread while FastSAM loads; the assignment is taken at the first poll, after FastSAM; SAM2 loads
on a thread afterwards, ``SAM2_BACKGROUND_LOAD=true``), ``sam2_foreground`` (both models before the first poll) and
``join_during_load`` (a change priced from the outside, ``bench/patched_worker.py``: both models load on a thread and
the worker polls at once, so "assigned" may come before FastSAM is loaded and the waiting record waits on the
model's lock; ``first_result_s`` is the figure to compare). The group settings are the bench's (session timeout
6 s: tansu holds a JoinGroup for half of it).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from bench.harness import start_worker
from bench.images import make_images
from bench.stats import median_of
from devstack.services import create_topics
from pipeline.types import SegmentParams

if TYPE_CHECKING:
    from bench.run import Bench

#: log substring -> report key
MARKERS = {"loaded FastSAM": "fastsam_loaded_s", "loaded SAM2": "sam2_loaded_s", "assigned [": "assigned_s"}
VARIANTS: dict[str, dict[str, str]] = {
    "default": {},
    "sam2_foreground": {"SAM2_BACKGROUND_LOAD": "false"},
    # prices polling while both models load on a thread (bench/patched_worker.py)
    "join_during_load": {"BENCH_WORKER_PATCH": "warm_up_in_background"},
}
COLD_SEED = 30_000


def one_trial(bench: Bench, trial: int, variant: str) -> dict[str, Any]:
    ctx, kafka = bench.ctx, bench.kafka
    assert ctx is not None and kafka is not None
    group = f"cold{trial}{variant[:2]}"
    names = (f"bench-{bench.run_id}-{group}-in", bench.topics["b"][1], f"bench-{bench.run_id}-{group}-dlq")
    create_topics(kafka.bootstrap, {names[0]: 2, names[2]: 1})
    bench.topics[group] = names
    image = make_images(1, bench.o.width, bench.o.height, first_seed=COLD_SEED + 10 * trial + len(variant))[0]
    sent = ctx.publisher.publish(names[0], image.png, partition=0, params=SegmentParams(), source="bench-cold")
    ctx.publisher.flush()
    env = bench.worker_env(group)
    patch = ";".join(
        p for p in (env.get("BENCH_WORKER_PATCH", ""), VARIANTS[variant].get("BENCH_WORKER_PATCH", "")) if p
    )
    env.update(VARIANTS[variant], LOG_LEVEL="INFO")
    if patch:
        env["BENCH_WORKER_PATCH"] = patch
    base = ctx.reader.total
    started, started_epoch = time.monotonic(), time.time()
    worker = start_worker(f"bench-{group}", env, bench.tmp)
    found: dict[str, float] = {}
    seen = 0
    try:
        answered = False
        while time.monotonic() - started < bench.o.timeout_s:
            worker.check_alive()
            text = worker.log_path.read_text(errors="replace")
            now = time.monotonic() - started
            if len(text) != seen:
                seen = len(text)
                for marker, key in MARKERS.items():
                    if key not in found and marker in text:
                        found[key] = now
            answered = answered or ctx.reader.total > base  # nothing else runs meanwhile: it is ours
            if answered and len(found) == len(MARKERS):
                break
            time.sleep(0.01)
        arrivals = ctx.reader.wait([sent.request_id], bench.o.timeout_s, worker.check_alive)
        found["first_result_s"] = arrivals[sent.request_id].received_at - started_epoch
    finally:
        worker.stop()
    for key in MARKERS.values():
        found.setdefault(key, math.nan)  # not logged within the timeout
    return {"variant": variant, **found}


def cold_start(bench: Bench, trials: int, log: Callable[[str], None]) -> dict[str, Any]:
    """``trials`` of each variant, interleaved; medians per variant. ``cold_start_s`` = the default's assigned_s."""
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in VARIANTS}
    for trial in range(trials):
        for variant in VARIANTS:
            result = one_trial(bench, trial, variant)
            runs[variant].append(result)
            log(
                f"cold {variant} {trial + 1}/{trials}: assigned {result['assigned_s']:.2f}s, first result "
                f"{result['first_result_s']:.2f}s (FastSAM loaded {result['fastsam_loaded_s']:.2f}s, SAM2 "
                f"{result['sam2_loaded_s']:.2f}s)"
            )
    summary = {
        name: median_of([{k: v for k, v in r.items() if k != "variant"} for r in results])
        for name, results in runs.items()
    }
    return {"median": summary, "runs": runs, "trials": trials}
