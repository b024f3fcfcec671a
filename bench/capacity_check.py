"""``python -m bench.capacity_check``: the sizing model of docs/CAPACITY.md against the local stack, small scale.

The model: a worker serves ``mu = 1 / s`` images/s, ``s`` the seconds of compute per image (calibrated here: the
median of ``--calibrate`` FastSAM calls in this process, at the workers' thread count); ``n`` workers serve
``n * mu`` while each has its own cores (``cores >= n * threads``). Offered a rate ``lambda`` below that, the
pipeline keeps up (throughput = ``lambda``) and a request waits about ``s / (1 - rho)`` (M/D/1-like, ``rho`` =
``lambda / (n mu)``); Redis holds one result per distinct image (bytes per entry measured with ``MEMORY USAGE``);
Kafka carries a request and a result per image (bytes: the Avro values).

The check runs one worker, then two (one consumer group, a 2-partition topic), each fed distinct images at
``--load`` x the model's capacity for ``--duration`` seconds, paced (open loop), and compares: throughput
measured / offered, mean latency measured / predicted, Redis bytes per cached result, Kafka bytes per request and
result. Workers get ``cores / n`` torch threads each (so two workers do not oversubscribe). Writes
``bench/results/capacity_check.json``. Defaults take ~4 min on 2 cores; smoke with ``--duration 5``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import redis

from bench.harness import REPO_ROOT, RequestPublisher, ResultReader, decode_arrivals, start_worker, worker_environment
from bench.images import make_images
from bench.patched_worker import keep_torch_threads
from bench.stats import latency_summary
from devstack.services import create_topics, start_kafka, start_redis
from pipeline.checkpoints import ensure_demo_checkpoints
from pipeline.segmenter import Segmenter
from pipeline.settings import ModelSettings
from pipeline.types import SegmentParams
from segpipe.config import KafkaSettings


def calibrate(model_env: dict[str, str], threads: int, count: int, size: tuple[int, int]) -> float:
    """Median seconds of one image through ``Segmenter.segment`` at ``threads`` torch threads (after a warm-up)."""
    keep_torch_threads(threads)
    segmenter = Segmenter(ModelSettings(**{k.lower(): v for k, v in model_env.items()}))
    segmenter.warm_up(background_sam2=False)
    images = make_images(count + 1, *size, first_seed=40_000)
    segmenter.segment(images[0].pixels)
    times = []
    for image in images[1:]:
        t0 = time.perf_counter()
        segmenter.segment(image.pixels)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def redis_bytes_per_entry(host: str, port: int) -> dict[str, float]:
    """``MEMORY USAGE`` of every key, grouped by the key's prefix (results, payload aliases, claims)."""
    client = redis.Redis(host=host, port=port)
    try:
        groups: dict[str, list[int]] = {}
        for key in client.scan_iter(count=1000):
            prefix = key.decode(errors="replace").split(":")[0:2]
            usage = client.memory_usage(key, samples=0) or 0
            groups.setdefault(":".join(prefix), []).append(int(usage))
        used = client.info("memory")["used_memory"]
    finally:
        client.close()
    return {
        "per_key_mean": {k: statistics.mean(v) for k, v in groups.items()},
        "keys": {k: len(v) for k, v in groups.items()},
        "used_memory": used,
    }


def paced_run(
    publisher: RequestPublisher,
    reader: ResultReader,
    topic: str,
    payloads: list[bytes],
    rate: float,
    timeout_s: float,
    workers: list[Any],
) -> dict[str, Any]:
    """Publish ``payloads`` at ``rate``/s (open loop), then wait for every result."""
    sent = []
    started = time.time()
    for i, payload in enumerate(payloads):
        due = started + i / rate
        while (delay := due - time.time()) > 0:
            time.sleep(min(delay, 0.05))
        sent.append(publisher.publish(topic, payload, partition=i % 2, params=SegmentParams(), source="capacity"))
        publisher.flush()
    offered_s = time.time() - started

    def alive() -> None:
        for worker in workers:
            worker.check_alive()

    arrivals = reader.wait([s.request_id for s in sent], timeout_s, alive)
    results = decode_arrivals(arrivals)
    ended = max(a.received_at for a in arrivals.values())
    latencies = [r.received_at * 1000.0 - s.submitted_at_ms for s, r in ((s, results[s.request_id]) for s in sent)]
    return {
        "requests": len(sent),
        "offered_per_s": len(sent) / max(offered_s, 1e-9) if len(sent) > 1 else rate,
        "throughput_per_s": len(sent) / (ended - started),
        "latency_ms": latency_summary(latencies),
        "latency_mean_ms": statistics.mean(latencies),
        "request_bytes_mean": statistics.mean(s.size_bytes for s in sent),
        "result_bytes_mean": statistics.mean(r.size_bytes for r in results.values()),
        "models": sorted({str(r.model) for r in results.values()}),
        "worker_ids": sorted({r.worker_id for r in results.values()}),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.capacity_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=40.0, help="seconds of offered load per worker count")
    parser.add_argument("--load", type=float, default=0.7, help="offered rate as a fraction of predicted capacity")
    parser.add_argument("--calibrate", type=int, default=3, help="images timed in this process to calibrate s")
    parser.add_argument("--workers", default="1,2", help="worker counts to check")
    parser.add_argument("--conf", type=float, default=0.005)
    parser.add_argument("--imgsz", type=int, default=None)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--checkpoints", type=Path, default=Path(os.environ.get("SEGPIPE_CHECKPOINT_DIR", "checkpoints"))
    )
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    fastsam, sam2 = ensure_demo_checkpoints(args.checkpoints)
    model_env = {
        "FASTSAM_MODEL_PATH": str(fastsam),
        "SAM_MODEL_PATH": str(sam2),
        "DEVICE": args.device,
        "DEFAULT_CONF": str(args.conf),
    }
    if args.imgsz:
        model_env["FASTSAM_IMGSZ"] = str(args.imgsz)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    checks = []
    run_id = uuid.uuid4().hex[:8]
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="segpipe-capacity-")))
        kafka = start_kafka(log_dir=tmp)
        stack.callback(kafka.stop)
        server = start_redis(workdir=tmp)
        stack.callback(server.stop)
        out_topic = f"cap-{run_id}-out"
        create_topics(kafka.bootstrap, {out_topic: 1})
        reader = ResultReader(kafka.bootstrap, {out_topic: 1})
        stack.callback(reader.close)
        publisher = RequestPublisher(KafkaSettings(bootstrap_servers=kafka.bootstrap))
        stack.callback(publisher.close)
        seed = 50_000
        for n in (int(x) for x in args.workers.split(",")):
            threads = max(1, cores // n)
            service_s = calibrate(model_env, threads, args.calibrate, (args.width, args.height))
            capacity = n / service_s if n * threads <= cores else cores / (threads * service_s)
            rate = args.load * capacity
            count = max(2, round(rate * args.duration))
            topics = (f"cap-{run_id}-{n}-in", out_topic, f"cap-{run_id}-{n}-dlq")
            create_topics(kafka.bootstrap, {topics[0]: 2, topics[2]: 1})
            env = worker_environment(
                bootstrap=kafka.bootstrap,
                redis_host=server.host,
                redis_port=server.port,
                topics=topics,
                group=f"cap-{run_id}-{n}",
                model_env=model_env,
                extra={"OMP_NUM_THREADS": str(threads), "BENCH_WORKER_PATCH": f"torch_threads={threads}"},
            )
            workers = [start_worker(f"cap-{n}-{i}", env, tmp) for i in range(n)]
            try:
                # warm-up: one image per partition, until every worker has answered (the group has settled)
                expected = {w.worker_id for w in workers}
                for _ in range(20):
                    warm = make_images(2, args.width, args.height, first_seed=seed)
                    seed += 2
                    run = paced_run(publisher, reader, topics[0], [w.png for w in warm], 100.0, 600.0, workers)
                    if set(run["worker_ids"]) == expected:
                        break
                else:
                    raise TimeoutError(f"workers {sorted(expected)} did not all get partitions")
                images = make_images(count, args.width, args.height, first_seed=seed)
                seed += count
                measured = paced_run(publisher, reader, topics[0], [i.png for i in images], rate, 900.0, workers)
            finally:
                for worker in workers:
                    worker.stop()
            rho = rate / capacity
            predicted_latency_ms = service_s * 1000.0 * (1.0 + rho / (2.0 * (1.0 - rho)))  # M/D/1 wait + service
            check = {
                "workers": n,
                "threads_per_worker": threads,
                "service_s": service_s,
                "capacity_per_s": capacity,
                "offered_per_s": rate,
                "utilisation": rho,
                "measured": measured,
                "throughput_measured_over_offered": measured["throughput_per_s"] / rate,
                "predicted_latency_mean_ms": predicted_latency_ms,
                "latency_measured_over_predicted": measured["latency_mean_ms"] / predicted_latency_ms,
            }
            checks.append(check)
            print(
                f"{n} worker(s), {threads} thread(s) each: model {capacity:.3f} img/s (s = {service_s * 1000:.0f} ms); "
                f"offered {rate:.3f}/s ({count} images): throughput {measured['throughput_per_s']:.3f}/s "
                f"({check['throughput_measured_over_offered']:.2f} x offered), mean latency "
                f"{measured['latency_mean_ms']:.0f} ms vs predicted {predicted_latency_ms:.0f} "
                f"({check['latency_measured_over_predicted']:.2f} x)",
                flush=True,
            )
        memory = redis_bytes_per_entry(server.host, server.port)
    report = {
        "command": "python -m bench.capacity_check",
        "cores": cores,
        "checks": checks,
        "redis": memory,
        "load_average": list(os.getloadavg()),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "capacity_check.json").write_text(json.dumps(report, indent=2))
    print(f"redis MEMORY USAGE per key, by prefix: {memory['per_key_mean']} (keys {memory['keys']})")
    return report


if __name__ == "__main__":
    main()
