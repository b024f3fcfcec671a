"""``python -m bench.run``: does the pipeline cost anything on top of the model, and does batching pay?

One process, one machine, the same images for every scenario:

(a) bare loop: ``Segmenter.segment`` image by image (no Kafka, no Redis) — the limit;
(b) the full pipeline with one worker process through a real broker (tansu) and a real redis-server;
(c) the dedup hit path: requests the worker answers from Redis, as a burst and closed loop: the images of (b)
    again (broker-bandwidth-bound), and small JPEGs (what bounds the worker's hits/s);
(d) two worker processes in one group on a 2-partition topic;
(e) ``Segmenter.segment_batch`` at batch sizes 1/2/4/8 over the same images;
(f) (opt-in) worker RSS over 10,000 requests, mostly dedup hits;
(peers) what a user would run instead: ultralytics' FastSAM loop, the original Flask API, our HTTP gateway
    (bench/peers.py);
(cold) a new worker's start to partitions assigned and to its first result (bench/cold.py).

Scenarios run interleaved (a, b, c, d, e in every repeat) so a noisy neighbour hurts them alike; the report is the
median over ``--repeat`` runs. The models are the demo checkpoints (FastSAM trained on shapes, a random SAM2) at
DEFAULT_CONF=0.005, so every noisy bench image gets FastSAM masks (at 0.4 some would fall back to SAM2's generator,
minutes each on a CPU). See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shlex
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil
import redis

from bench.chart import make_chart
from bench.cold import cold_start
from bench.harness import (
    REPO_ROOT,
    STAGES,
    RequestPublisher,
    ResultReader,
    WorkerProcess,
    start_worker,
    worker_environment,
)
from bench.images import encode_jpeg, make_images, synthetic_image
from bench.patched_worker import keep_torch_threads
from bench.peers import http_run, naive_loop, start_gateway, start_seed_api
from bench.scenarios import (
    PipelineContext,
    bare_loop,
    batch_curve,
    memory_run,
    pipeline_run,
    pipeline_steps,
    publish_and_collect,
)
from bench.stats import clean_for_json, median_of
from devstack.services import LocalKafka, LocalRedis, create_topics, start_kafka, start_redis
from pipeline.checkpoints import ensure_demo_checkpoints
from pipeline.image_io import decode_image
from pipeline.models import _import_torch
from pipeline.segmenter import Segmenter
from pipeline.settings import ModelSettings
from pipeline.types import ModelChoice, SegmentParams
from segpipe.config import KafkaSettings, RedisSettings, WorkerSettings

ALL_SCENARIOS = ("a", "b", "c", "d", "e", "f", "peers", "cold")
DEFAULT_SCENARIOS = "a,b,c,d,e"
#: Seeds of images that warm models up; never measured, never equal to a measured image.
WARM_SEED = 10_000
#: Seeds of (c)'s small JPEGs.
SMALL_SEED = 20_000
#: The results of scenario (c), in the order they run: key -> (variant, closed loop).
HIT_RUNS = {
    "c_png": ("png", False),
    "c_png_closed": ("png", True),
    "c_small": ("small", False),
    "c_small_closed": ("small", True),
}


@dataclass(frozen=True)
class Options:
    """Everything the command line sets."""

    images: int
    repeat: int
    out: Path
    device: str
    scenarios: tuple[str, ...]
    width: int
    height: int
    imgsz: int | None
    conf: float
    hits: int
    png_hits: int
    small_images: int
    small_size: tuple[int, int]
    batch_sizes: tuple[int, ...]
    memory_requests: int
    worker_batch_size: int | None
    worker_env: dict[str, str]
    worker_patch: str
    window: int
    fetch_wait_ms: int | None
    torch_threads: int | None
    timeout_s: float
    checkpoints: Path
    clients: int
    cold_trials: int


def parse_args(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=24, help="distinct images per scenario (default 24)")
    parser.add_argument("--repeat", type=int, default=3, help="runs to take the median of (default 3)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results", help="latest.json/.png go here")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="model device, bench and workers")
    parser.add_argument("--scenarios", default=DEFAULT_SCENARIOS, help="comma list of a,b,c,d,e,f (f: memory, slow)")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--imgsz", type=int, default=None, help="FASTSAM_IMGSZ (default: the product default)")
    parser.add_argument("--conf", type=float, default=0.005, help="DEFAULT_CONF (0.005: FastSAM answers every image)")
    parser.add_argument(
        "--hits",
        type=int,
        default=5000,
        help="requests of (c) on small JPEGs, burst and closed loop, cycling over --small-images (0: skip)",
    )
    parser.add_argument(
        "--png-hits",
        type=int,
        default=400,
        help="requests of (c) on the --images PNGs, burst and closed loop (0: skip); few, as each is ~0.55 MB "
        "the broker must move and keep (tansu's memory storage)",
    )
    parser.add_argument(
        "--small-images", type=int, default=8, help="distinct small JPEGs of (c), computed once to prime the cache"
    )
    parser.add_argument(
        "--small-size",
        default="160x120",
        help="WxH of (c)'s small JPEGs (~4 KB); each must get a FastSAM mask at the bench's conf",
    )
    parser.add_argument("--batch-sizes", default="1,2,4,8", help="batch sizes of (e)")
    parser.add_argument("--memory-requests", type=int, default=10_000, help="requests in (f)")
    parser.add_argument(
        "--worker-batch-size", type=int, default=None, help="BATCH_SIZE of the workers (default: theirs)"
    )
    parser.add_argument(
        "--worker-env", action="append", default=[], metavar="KEY=VALUE", help="extra worker variable (repeatable)"
    )
    parser.add_argument(
        "--worker-patch", default="", help="run bench.patched_worker with this BENCH_WORKER_PATCH (price a fix)"
    )
    parser.add_argument(
        "--window",
        type=int,
        default=None,
        help="closed-loop requests without a result, in (c) closed loop and (f); default 7/8 of MAX_IN_FLIGHT "
        "(the workers' value: --worker-env, --worker-patch or the settings), below the bound at which a worker "
        "pauses its partitions",
    )
    parser.add_argument(
        "--fetch-wait-ms",
        type=int,
        default=None,
        help="workers' fetch.wait.max.ms (KAFKA_FETCH_WAIT_MAX_MS; default: the product's). tansu does not answer a "
        "waiting fetch when data arrives, so each hop can wait this long there; Apache Kafka answers at once",
    )
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=None,
        help="torch threads in the bench and the workers, kept after ultralytics' first CPU predict (which sets "
        "min(8, cpus - 1)); default: leave ultralytics' choice, as the product does",
    )
    parser.add_argument("--timeout", type=float, default=900.0, help="most seconds to wait for one burst's results")
    parser.add_argument(
        "--checkpoints",
        type=Path,
        default=Path(os.environ.get("SEGPIPE_CHECKPOINT_DIR", REPO_ROOT / "checkpoints")),
        help="demo checkpoints (built if absent)",
    )
    parser.add_argument(
        "--clients", type=int, default=4, help="concurrent HTTP clients of the peers seed_api and gateway (default 4)"
    )
    parser.add_argument("--cold-trials", type=int, default=3, help="worker starts per variant in (cold) (default 3)")
    args = parser.parse_args(argv)
    scenarios = tuple(s.strip().lower() for s in args.scenarios.split(",") if s.strip())
    unknown = sorted(set(scenarios) - set(ALL_SCENARIOS))
    if unknown or not scenarios:
        parser.error(f"unknown scenarios {unknown}: choose from {','.join(ALL_SCENARIOS)}")
    if args.images < 1 or args.repeat < 1:
        parser.error("--images and --repeat must be at least 1")
    if args.hits < 0 or args.png_hits < 0 or args.small_images < 1:
        parser.error("--hits and --png-hits must be at least 0, --small-images at least 1")
    try:
        small_size = tuple(int(v) for v in args.small_size.lower().split("x"))
    except ValueError:
        small_size = ()
    if len(small_size) != 2 or min(small_size) < 1:
        parser.error(f"--small-size {args.small_size!r}: expected WxH, e.g. 160x120")
    worker_env = dict(item.split("=", 1) for item in args.worker_env)
    return Options(
        images=args.images,
        repeat=args.repeat,
        out=args.out,
        device=args.device,
        scenarios=scenarios,
        width=args.width,
        height=args.height,
        imgsz=args.imgsz,
        conf=args.conf,
        hits=args.hits,
        png_hits=args.png_hits,
        small_images=args.small_images,
        small_size=(small_size[0], small_size[1]),
        batch_sizes=tuple(int(s) for s in args.batch_sizes.split(",")),
        memory_requests=args.memory_requests,
        worker_batch_size=args.worker_batch_size,
        worker_env=worker_env,
        worker_patch=args.worker_patch,
        window=args.window if args.window is not None else default_window(worker_env, args.worker_patch),
        fetch_wait_ms=args.fetch_wait_ms,
        torch_threads=args.torch_threads,
        timeout_s=args.timeout,
        checkpoints=args.checkpoints,
        clients=max(1, args.clients),
        cold_trials=max(1, args.cold_trials),
    )


def default_window(worker_env: dict[str, str], worker_patch: str) -> int:
    """7/8 of the workers' MAX_IN_FLIGHT: below where a worker pauses its partitions, and wide enough that the
    round trip through tansu (~100 ms: it answers a waiting fetch only when the fetch wait ends) does not cap a
    closed loop's rate (at most window / round trip: 128 in flight measured 1,400/s, 224 measured 2,134/s)."""
    bound = WorkerSettings().max_in_flight
    if "MAX_IN_FLIGHT" in worker_env:
        bound = int(worker_env["MAX_IN_FLIGHT"])
    for item in worker_patch.split(";"):
        name, _, value = item.strip().partition("=")
        if name == "max_in_flight":
            bound = int(value)
    return max(1, bound * 7 // 8)


def _log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def machine_info(device: str, torch_threads: int) -> dict[str, Any]:
    """What the numbers depend on: cores, torch and its thread count, the device, the load when it ran."""
    torch = _import_torch()
    cpu_model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": cpu_model,
        "memory_gib": psutil.virtual_memory().total / 2**30,
        "torch_version": torch.__version__,
        "torch_threads": torch_threads,
        "device": device,
        "gpu": torch.cuda.get_device_name(0) if device == "cuda" and torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    for package in ("ultralytics", "sam2", "confluent-kafka", "fastavro", "redis"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            info[f"{package}_version"] = metadata.version(package)
    return info


class Bench:
    """Owns the services, workers and the in-process model for one benchmark run."""

    def __init__(self, options: Options, stack: contextlib.ExitStack) -> None:
        self.o = options
        self.stack = stack
        self.run_id = uuid.uuid4().hex[:8]
        self.tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="segpipe-bench-")))
        fastsam, sam2 = ensure_demo_checkpoints(options.checkpoints)
        # One environment for the in-process model and every worker, so (a) and (b) run identical settings.
        self.model_env = {
            "FASTSAM_MODEL_PATH": str(fastsam),
            "SAM_MODEL_PATH": str(sam2),
            "DEVICE": options.device,
            "DEFAULT_CONF": str(options.conf),
        }
        if options.imgsz is not None:
            self.model_env["FASTSAM_IMGSZ"] = str(options.imgsz)
        os.environ.update(self.model_env)
        self.settings = ModelSettings()
        self.images = make_images(options.images, options.width, options.height)
        # (c)'s small requests: distinct JPEGs, a few KB each (the pixels differ from every PNG's)
        width, height = options.small_size
        self.small = [encode_jpeg(synthetic_image(SMALL_SEED + i, width, height)) for i in range(options.small_images)]
        self.kafka: LocalKafka | None = None
        self.redis: LocalRedis | None = None
        self.ctx: PipelineContext | None = None
        self.workers: dict[str, WorkerProcess] = {}
        self.topics: dict[str, tuple[str, str, str]] = {}
        self.segmenter: Segmenter | None = None
        self.torch_threads = 0
        self.peer_servers: dict[str, Any] = {}

    # -- set-up --------------------------------------------------------------------------------------------------
    def needs_pipeline(self) -> bool:
        return bool(set(self.o.scenarios) & {"b", "c", "d", "f", "peers", "cold"})

    def start_services(self) -> None:
        self.kafka = start_kafka(log_dir=self.tmp)
        self.stack.callback(self.kafka.stop)
        self.redis = start_redis(workdir=self.tmp)
        self.stack.callback(self.redis.stop)
        outputs = {}
        for group, partitions in (("b", 2), ("d", 2), ("f", 1)):
            names = tuple(f"bench-{self.run_id}-{group}-{kind}" for kind in ("in", "out", "dlq"))
            self.topics[group] = names  # type: ignore[assignment]
            create_topics(self.kafka.bootstrap, {names[0]: partitions, names[1]: 1, names[2]: 1})
            outputs[names[1]] = 1
        kafka_settings = KafkaSettings(bootstrap_servers=self.kafka.bootstrap)
        reader = ResultReader(self.kafka.bootstrap, outputs)
        self.stack.callback(reader.close)
        publisher = RequestPublisher(kafka_settings)
        self.stack.callback(publisher.close)
        self.ctx = PipelineContext(
            publisher=publisher,
            reader=reader,
            broker=psutil.Process(self.kafka.process.pid),
            redis=psutil.Process(self.redis.process.pid),
            timeout_s=self.o.timeout_s,
        )
        _log(f"broker {self.kafka.bootstrap}, redis {self.redis.url}")

    def worker_env(self, group: str) -> dict[str, str]:
        assert self.kafka is not None and self.redis is not None
        extra = {"OMP_NUM_THREADS": str(self.torch_threads or (os.cpu_count() or 1))}
        if self.o.worker_batch_size is not None:
            extra["BATCH_SIZE"] = str(self.o.worker_batch_size)
        patch = ";".join(
            p
            for p in (self.o.worker_patch, f"torch_threads={self.o.torch_threads}" if self.o.torch_threads else "")
            if p
        )
        if patch:
            extra["BENCH_WORKER_PATCH"] = patch
        if self.o.fetch_wait_ms is not None:
            extra["KAFKA_FETCH_WAIT_MAX_MS"] = str(self.o.fetch_wait_ms)
        extra.update(self.o.worker_env)
        return worker_environment(
            bootstrap=self.kafka.bootstrap,
            redis_host=self.redis.host,
            redis_port=self.redis.port,
            topics=self.topics[group],
            group=f"bench-{self.run_id}-{group}",
            model_env=self.model_env,
            extra=extra,
        )

    def start_worker(self, worker_id: str, group: str) -> WorkerProcess:
        env = self.worker_env(group)
        # Both models loaded before the worker joins (the measured workers are in their steady state): SAM2 loading
        # on a thread after the warm-up burnt CPU through (a)'s first repeat, which ran at half speed in every run.
        # (cold) starts its own workers with the default.
        env.setdefault("SAM2_BACKGROUND_LOAD", "false")
        worker = start_worker(worker_id, env, self.tmp)
        self.workers[worker_id] = worker
        self.stack.callback(worker.stop)
        return worker

    def load_model(self) -> None:
        """Load both models and run one warm-up image, as a worker's first request would."""
        if self.o.torch_threads:
            keep_torch_threads(self.o.torch_threads)
        self.segmenter = Segmenter(self.settings)
        self.segmenter.warm_up(background_sam2=False)
        warm = make_images(1, self.o.width, self.o.height, first_seed=WARM_SEED)[0]
        result = self.segmenter.segment(warm.pixels)
        if str(result.model) != "fastsam":
            # An image FastSAM finds nothing in falls back to SAM2's automatic mask generator (minutes per image on a
            # CPU): the bench would measure that instead.
            raise SystemExit(
                f"FastSAM did not answer the warm-up image ({result.fallback_detail}) at conf "
                f"{self.settings.default_conf}, imgsz {self.settings.fastsam_imgsz}: the bench measures FastSAM's "
                "path: use a lower --conf (the default 0.005 answers every bench image)"
            )
        # ultralytics' select_device() sets torch's threads to min(8, cpus - 1) on CPU at the first predict; the
        # workers go through the same call, so this is also their count (they get it as OMP_NUM_THREADS too).
        self.torch_threads = _import_torch().get_num_threads()
        if "c" in self.o.scenarios and self.o.hits:
            self.check_small_images()

    def check_small_images(self) -> None:
        """Refuse to start unless FastSAM answers every small JPEG of (c): the worker computes each once to prime
        the cache, and one FastSAM misses would go to SAM2's automatic mask generator (minutes on a CPU). Asked
        for FastSAM only here, so a miss costs a FastSAM call, not that."""
        assert self.segmenter is not None
        settings = self.segmenter.settings
        for i, jpeg in enumerate(self.small):
            result = self.segmenter.segment(decode_image(jpeg), params=SegmentParams(model=ModelChoice.FASTSAM))
            best = max((m.predicted_iou for m in result.masks), default=None)
            if best is None or best < settings.fallback_min_score:
                width, height = self.o.small_size
                raise SystemExit(
                    f"FastSAM finds no usable mask in (c)'s small JPEG {i} ({width}x{height}) at conf "
                    f"{settings.default_conf}, imgsz {settings.fastsam_imgsz}: SAM2 would answer it (minutes on a "
                    "CPU); use a larger --small-size (160x120 works at imgsz 512 and 1024)"
                )

    def warm_workers(self, group: str, workers: list[WorkerProcess], partitions: int) -> None:
        """Send fresh warm-up images until every partition is served and each worker has answered (group settled)."""
        assert self.ctx is not None
        topic = self.topics[group][0]
        expected = {w.worker_id for w in workers}
        deadline = time.monotonic() + self.o.timeout_s
        seed = WARM_SEED + 100 * (1 + ord(group[0]) - ord("a"))
        while time.monotonic() < deadline:
            warm = make_images(partitions, self.o.width, self.o.height, first_seed=seed)
            seed += partitions
            results = publish_and_collect(
                self.ctx, topic, partitions, [w.png for w in warm], workers, source="bench-warm-up"
            ).decoded()
            if {r.worker_id for r in results.values()} == expected:
                return
        raise TimeoutError(f"workers {sorted(expected)} did not all get partitions of {topic}")

    def flush_redis(self) -> None:
        assert self.redis is not None
        client = redis.Redis(host=self.redis.host, port=self.redis.port)
        try:
            client.flushdb()
        finally:
            client.close()

    def quiet(self) -> contextlib.AbstractContextManager[None]:
        """The result reader's quiet() when the pipeline runs, else nothing to quiet."""
        return self.ctx.reader.quiet() if self.ctx is not None else contextlib.nullcontext()

    def pngs(self) -> list[bytes]:
        return [image.png for image in self.images]

    def image_files(self) -> list[Path]:
        """A warm-up image, then the measured images, as PNG files (p1 reads files, as a user's loop would)."""
        folder = self.tmp / "images"
        if not folder.is_dir():
            folder.mkdir()
            warm = make_images(1, self.o.width, self.o.height, first_seed=WARM_SEED + 50)[0]
            for i, image in enumerate([warm, *self.images]):
                (folder / f"{i:04d}.png").write_bytes(image.png)
        return sorted(folder.glob("*.png"))

    def start_peers(self) -> None:
        """The seed API (loads its models meanwhile) and the gateway, publishing to worker b's input topic."""
        assert self.kafka is not None and self.redis is not None
        seed = start_seed_api(self.model_env, self.redis.host, self.redis.port, self.tmp)
        self.stack.callback(seed.stop)
        gateway = start_gateway(self.kafka.bootstrap, self.topics["b"][0], self.run_id, self.tmp)
        self.stack.callback(gateway.stop)
        self.peer_servers = {"seed_api": seed, "gateway": gateway}

    def hit_label(self, key: str) -> str:
        variant, closed = HIT_RUNS[key]
        if variant == "png":
            what = f"{self.o.width}x{self.o.height} PNG"
        else:
            what = "small JPEG ({}x{})".format(*self.o.small_size)
        return f"(c) hits, {what}, " + (f"closed loop ({self.o.window} in flight)" if closed else "burst")


def _in_process(bench: Bench, repeat: int, run: dict[str, Any]) -> None:
    """(a), the pipeline-only steps and (e): the model in this process, while the result reader is quiet."""
    o = bench.o
    if "a" in o.scenarios:
        assert bench.segmenter is not None
        idle = {w.worker_id: w.ps for w in bench.workers.values()}
        if bench.ctx is not None:
            idle |= {"broker": bench.ctx.broker, "redis": bench.ctx.redis}
        run["a"], results = bare_loop(bench.segmenter, bench.images, idle)
        redis_settings = (
            RedisSettings(host=bench.redis.host, port=bench.redis.port) if bench.redis is not None else None
        )
        run["steps"] = pipeline_steps(bench.images, results, bench.segmenter, redis_settings)
        _log(f"repeat {repeat + 1}: (a) {run['a']['images_per_s']:.3f} img/s")
    if "e" in o.scenarios:
        assert bench.segmenter is not None
        run["e"] = batch_curve(bench.segmenter, bench.images, o.batch_sizes)
        curve = ", ".join(f"{p['batch_size']}: {p['images_per_s']:.3f}" for p in run["e"]["curve"])
        _log(f"repeat {repeat + 1}: (e) img/s by batch size {curve}")


def _iterate_repeats(bench: Bench) -> Iterator[tuple[int, dict[str, Any]]]:
    """One interleaved pass over the selected scenarios per repeat."""
    o = bench.o
    workers = bench.workers
    for repeat in range(o.repeat):
        run: dict[str, Any] = {"load_average": list(os.getloadavg())}
        with bench.quiet():
            _in_process(bench, repeat, run)
        if "b" in o.scenarios or "c" in o.scenarios:
            assert bench.ctx is not None
            topic = bench.topics["b"][0]
            bench.flush_redis()
            if "b" in o.scenarios:
                run["b"] = pipeline_run(bench.ctx, topic, 2, bench.pngs(), [workers["bench-b"]], source="bench-b")
                _log(f"repeat {repeat + 1}: (b) {run['b']['images_per_s']:.3f} img/s")
            elif o.png_hits:  # (c) alone: the cache must hold the images first (not measured)
                publish_and_collect(bench.ctx, topic, 2, bench.pngs(), [workers["bench-b"]], source="bench-c-prime")
            if "c" in o.scenarios:
                _dedup_hits(bench, repeat, run, topic)
        if "d" in o.scenarios:
            assert bench.ctx is not None
            bench.flush_redis()
            pair = [workers["bench-d1"], workers["bench-d2"]]
            run["d"] = pipeline_run(bench.ctx, bench.topics["d"][0], 2, bench.pngs(), pair, source="bench-d")
            _log(f"repeat {repeat + 1}: (d) {run['d']['images_per_s']:.3f} img/s")
        if "peers" in o.scenarios:
            _peers(bench, repeat, run)
        yield repeat, run


def _dedup_hits(bench: Bench, repeat: int, run: dict[str, Any], topic: str) -> None:
    """(c): the PNGs of (b) again (already cached by (b) or the priming), then small JPEGs, which the worker
    computes once first (not measured); each as a burst and closed loop."""
    o, ctx, worker = bench.o, bench.ctx, [bench.workers["bench-b"]]
    assert ctx is not None
    if o.hits:
        prime = publish_and_collect(ctx, topic, 2, bench.small, worker, source="bench-c-prime-small").decoded()
        models = Counter(str(r.model) for r in prime.values())
        if set(models) != {"fastsam"}:
            raise RuntimeError(f"(c) small JPEGs primed by {dict(models)}, expected fastsam only")
    for key, (variant, closed) in HIT_RUNS.items():
        if variant == "png":
            images, count = bench.pngs(), o.png_hits
        else:
            images, count = bench.small, o.hits
        if not count:
            continue
        payloads = [images[i % len(images)] for i in range(count)]
        result = pipeline_run(
            ctx,
            topic,
            2,
            payloads,
            worker,
            source=f"bench-{key.replace('_', '-')}",
            window=o.window if closed else None,
            label=bench.hit_label(key),
        )
        result["hits_per_s"] = result["images_per_s"]
        result["worker_cpu_ms_per_hit"] = result["cpu_s_per_image"] * 1000.0
        run[key] = result
        _log(
            f"repeat {repeat + 1}: {result['label']}: {result['hits_per_s']:.1f} hits/s "
            f"({result['cached']}/{count} cached), in {result['mb_in_per_s']:.1f} MB/s, "
            f"out {result['mb_out_per_s']:.2f} MB/s, p50 {result['latency_ms']['p50']:.0f} ms, "
            f"p99 {result['latency_ms']['p99']:.0f} ms, worker {result['worker_cpu_ms_per_hit']:.3f} CPU-ms/hit"
        )


def _memory(bench: Bench) -> dict[str, Any]:
    """(f) on a fresh worker, after the others have left (they would only add noise)."""
    assert bench.ctx is not None
    for worker_id in [w for w in bench.workers if w != "bench-f"]:
        bench.workers.pop(worker_id).stop()
    bench.flush_redis()
    worker = bench.start_worker("bench-f", "f")
    # JPEG keeps 10,000 requests at ~40 KB each in the broker's RAM (tansu memory storage) instead of ~0.5 MB.
    prime = [encode_jpeg(image.pixels) for image in bench.images]
    warm = encode_jpeg(make_images(1, bench.o.width, bench.o.height, first_seed=WARM_SEED + 900)[0].pixels)
    publish_and_collect(bench.ctx, bench.topics["f"][0], 1, [warm], [worker], source="bench-f-warm-up")
    _log(f"(f) worker ready; {bench.o.memory_requests} requests")
    return memory_run(bench.ctx, bench.topics["f"][0], worker, prime, bench.o.memory_requests, window=bench.o.window)


def _peers(bench: Bench, repeat: int, run: dict[str, Any]) -> None:
    """p1 (the loop, its own process), p2 (seed API) and p3 (gateway -> worker b), each from a flushed Redis."""
    o, ctx = bench.o, bench.ctx
    assert ctx is not None and bench.redis is not None and bench.kafka is not None
    paths = bench.image_files()
    run["p1"] = naive_loop(bench.model_env, paths[1:], paths[0], bench.tmp, o.timeout_s)
    redis_ps = {"redis": ctx.redis}
    seed, gateway, worker = bench.peer_servers["seed_api"], bench.peer_servers["gateway"], bench.workers["bench-b"]
    bench.flush_redis()
    run["p2"] = http_run(
        seed.url,
        bench.pngs(),
        o.clients,
        {"seed_api": seed.ps, **redis_ps},
        alive=seed.check_alive,
        timeout_s=o.timeout_s,
    )
    bench.flush_redis()

    def alive() -> None:
        gateway.check_alive()
        worker.check_alive()

    serving = {"gateway": gateway.ps, worker.worker_id: worker.ps, "broker": ctx.broker, **redis_ps}
    run["p3"] = http_run(gateway.url, bench.pngs(), o.clients, serving, alive=alive, timeout_s=o.timeout_s)
    for key in PEERS:
        if key in run:
            row = run[key]
            _log(
                f"repeat {repeat + 1}: {PEERS[key]}: {row['images_per_s']:.3f} img/s, "
                f"p50 {row['latency_ms']['p50']:.0f} ms, p99 {row['latency_ms']['p99']:.0f} ms, "
                f"{row['cpu_s_per_image']:.2f} CPU-s/img"
            )


#: peer rows of the report, in print order (p4 = the (b) and (d) rows)
PEERS = {
    "p1": "(p1) ultralytics FastSAM loop",
    "p2": "(p2) seed API (Flask, 2 thr)",
    "p3": "(p3) gateway -> 1 worker",
}


def headline(summary: dict[str, Any]) -> dict[str, Any]:
    """The top-level numbers of the report (issue 14): b/a, one worker / naive loop, gateway / seed API, cold start."""
    ratios = summary.get("ratios", {})
    cold = summary.get("cold", {}).get("median", {}).get("default", {})
    return {
        "b_over_a": ratios.get("b_over_a"),
        "worker_over_naive_loop": ratios.get("worker_over_naive_loop"),
        "gateway_over_seed_api": ratios.get("gateway_over_seed_api"),
        "gateway_p99_over_seed_api": ratios.get("gateway_p99_over_seed_api"),
        "cold_start_s": cold.get("assigned_s"),
        "cold_first_result_s": cold.get("first_result_s"),
    }


def summarise(
    runs: list[dict[str, Any]], memory: dict[str, Any] | None, cold: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Medians over repeats, the ratios b/a and d/b (median of per-repeat ratios: each repeat is one paired trial),
    and a breakdown of the gap between (b) and (a)."""
    summary: dict[str, Any] = {}
    for key in ("a", "b", *HIT_RUNS, "d", "e", "steps", *PEERS):
        values = [run[key] for run in runs if key in run]
        if values:
            summary[key] = median_of(values)
    if "e" in summary:  # median of each point of the curve, matched by batch size
        curves = [run["e"]["curve"] for run in runs if "e" in run]
        summary["e"]["curve"] = [median_of([curve[i] for curve in curves]) for i in range(len(curves[0]))]
    ratios: dict[str, Any] = {}
    pairs = {
        "b_over_a": ("b", "a"),
        "d_over_b": ("d", "b"),
        "c_png_over_b": ("c_png", "b"),
        "worker_over_naive_loop": ("b", "p1"),
        "two_workers_over_naive_loop": ("d", "p1"),
        "gateway_over_seed_api": ("p3", "p2"),
        "seed_api_over_naive_loop": ("p2", "p1"),
    }
    for name, (top, bottom) in pairs.items():
        paired = [
            run[top]["images_per_s"] / run[bottom]["images_per_s"] for run in runs if top in run and bottom in run
        ]
        if paired:
            ratios[name] = median_of(paired)
            ratios[f"{name}_per_repeat"] = paired
            ratios[f"{name}_of_medians"] = summary[top]["images_per_s"] / summary[bottom]["images_per_s"]
    p99 = [
        run["p3"]["latency_ms"]["p99"] / run["p2"]["latency_ms"]["p99"] for run in runs if "p2" in run and "p3" in run
    ]
    if p99:
        ratios["gateway_p99_over_seed_api"] = median_of(p99)
        ratios["gateway_p99_over_seed_api_per_repeat"] = p99
    if "e" in summary and "a" in summary:
        best = max(summary["e"]["curve"], key=lambda p: p["images_per_s"])
        ratios["best_batch_over_a"] = best["images_per_s"] / summary["a"]["images_per_s"]
        ratios["best_batch_size"] = best["batch_size"]
    summary["ratios"] = ratios
    if "a" in summary and "b" in summary:
        a, b = summary["a"], summary["b"]
        summary["gap_b_vs_a_ms_per_image"] = {
            "wall_a": a["ms_per_image"],
            "wall_b": b["ms_per_image"],
            "gap": b["ms_per_image"] - a["ms_per_image"],
            "model_a": a["model_ms_per_image"],
            "model_b": b["model_ms_per_image"],
            "model_slower_in_worker": b["model_ms_per_image"] - a["model_ms_per_image"],
            "inference_thread_not_in_model_b": b["ms_per_image"] - b["model_ms_per_image"],
            "engine_other_a": a["engine_other_ms"],
        }
    if memory is not None:
        summary["f"] = memory
    if cold is not None:
        summary["cold"] = cold
    return summary


def print_report(report: dict[str, Any]) -> None:
    """A human-readable table of the summary on stdout."""
    s, m, c = report["summary"], report["machine"], report["config"]
    print(
        f"\nsegpipe bench: {m['cpu_count']} CPU ({m['cpu_model']}), torch {m['torch_version']} "
        f"({m['torch_threads']} threads), device {m['device']}; {c['images']} images {c['width']}x{c['height']}, "
        f"imgsz {c['imgsz']}, conf {c['conf']}, median of {c['repeat']}"
    )
    header = f"{'scenario':<26}{'img/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'cpu s/img':>10}  " + " ".join(
        f"{k:>8}" for k in (*STAGES, "batch_wait", "kafka")
    )
    labels = {"a": "(a) bare loop", "b": "(b) pipeline 1 worker", "d": "(d) 2 workers"}
    if labels.keys() & s.keys():
        print(header)
    for key, label in labels.items():
        if key not in s:
            continue
        row = s[key]
        stages = " ".join(f"{row['stages_ms'].get(k, 0.0):8.1f}" for k in (*STAGES, "batch_wait", "kafka"))
        print(
            f"{label:<26}{row['images_per_s']:9.3f}{row['latency_ms']['p50']:9.0f}{row['latency_ms']['p99']:9.0f}"
            f"{row['cpu_s_per_image']:10.3f}  {stages}"
        )
    hits = [key for key in HIT_RUNS if key in s]
    if hits:
        width = max(len(s[key]["label"]) for key in hits) + 2
        print(
            f"\n{'dedup hits (c)':<{width}}{'hits/s':>9}{'MB/s in':>9}{'MB/s out':>9}{'p50 ms':>9}{'p99 ms':>9}"
            f"{'worker CPU ms/hit':>19}{'stalled s':>11}{'window bound/s':>16}{'cached':>13}"
        )
        for key in hits:
            row = s[key]
            bound = row.get("window_bound_per_s")
            print(
                f"{row['label']:<{width}}{row['hits_per_s']:9.1f}{row['mb_in_per_s']:9.1f}{row['mb_out_per_s']:9.2f}"
                f"{row['latency_ms']['p50']:9.0f}{row['latency_ms']['p99']:9.0f}{row['worker_cpu_ms_per_hit']:19.3f}"
                f"{row['arrival_gaps']['over_200ms_s']:11.2f}{'-' if bound is None else f'{bound:.0f}':>16}"
                f"{row['cached']:>7.0f}/{row['images']:<5.0f}"
            )
        print(
            "  stalled s: time in gaps of >= 200 ms between consecutive results (the worker pausing); window bound: "
            "closed-loop window / mean round trip (submitted -> received), the most a closed loop can reach"
        )
    print_peers(report)
    for name, value in s["ratios"].items():
        if not name.endswith("_per_repeat"):
            print(f"{name:<30}{value:9.3f}")
    if "e" in s:
        print(
            "(e) batch size -> img/s: "
            + ", ".join(f"{p['batch_size']}: {p['images_per_s']:.3f}" for p in s["e"]["curve"])
        )
    if "steps" in s:
        print("pipeline-only steps, ms/image: " + ", ".join(f"{k} {v:.3f}" for k, v in s["steps"].items()))
    if "f" in s:
        rss = s["f"]["rss_mb"]
        print(
            f"(f) worker RSS over {s['f']['requests']} requests ({s['f']['dedup_hits']} dedup hits): first "
            f"{rss['first']:.0f} MiB, last {rss['last']:.0f}, max {rss['max']:.0f}, change {rss['change_pct']:+.2f}%"
        )


def print_peers(report: dict[str, Any]) -> None:
    """The peer table: what a user would run instead, beside one and two workers; and the cold start."""
    s = report["summary"]
    rows = [(key, label) for key, label in PEERS.items() if key in s]
    if rows:
        rows += [(k, label) for k, label in (("b", "(p4) 1 worker, Kafka"), ("d", "(p4) 2 workers, Kafka")) if k in s]
        clients = report["config"]["clients"]
        print(
            f"\npeers (same images; p2/p3 with {clients} concurrent clients){'img/s':>7}{'p50 ms':>9}{'p99 ms':>9}"
            f"{'CPU s/img':>11}"
        )
        for key, label in rows:
            row = s[key]
            cpu = row["cpu_s_per_image"]
            if key in ("b", "d"):  # serving CPU: workers + broker + Redis (not the bench's own)
                cpu = sum(v for n, v in row["cpu_s"].items() if n != "bench" and v == v) / row["images"]
            print(
                f"{label:<47}{row['images_per_s']:9.3f}{row['latency_ms']['p50']:9.0f}"
                f"{row['latency_ms']['p99']:9.0f}{cpu:11.3f}"
            )
    cold = s.get("cold")
    if cold:
        for variant, med in cold["median"].items():
            print(
                f"cold start ({variant}, median of {cold['trials']}): assigned {med['assigned_s']:.2f} s, first result "
                f"{med['first_result_s']:.2f} s, FastSAM loaded {med['fastsam_loaded_s']:.2f} s, SAM2 loaded "
                f"{med['sam2_loaded_s']:.2f} s"
            )
    for key in ("cold_start_s", "cold_first_result_s"):  # the ratios are printed with the others below
        if report.get(key) is not None:
            print(f"{key:<30}{report[key]:9.3f}")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the suite; write ``latest.json`` and ``latest.png`` under ``--out``; return the report."""
    options = parse_args(argv)
    started = time.monotonic()
    load_at_start = list(os.getloadavg())
    runs: list[dict[str, Any]] = []
    memory: dict[str, Any] | None = None
    cold: dict[str, Any] | None = None
    with contextlib.ExitStack() as stack:
        bench = Bench(options, stack)
        if bench.needs_pipeline():
            bench.start_services()
            groups = {"b": ["bench-b"] if {"b", "c", "peers"} & set(options.scenarios) else [], "d": []}
            if "d" in options.scenarios:
                groups["d"] = ["bench-d1", "bench-d2"]
            for group, ids in groups.items():  # start the workers first: they load while the bench loads
                for worker_id in ids:
                    bench.start_worker(worker_id, group)
            if "peers" in options.scenarios:
                bench.start_peers()
        _log("loading models in the bench process")
        bench.load_model()
        for group, ids in (("b", ["bench-b"]), ("d", ["bench-d1", "bench-d2"])):
            if all(i in bench.workers for i in ids):
                bench.warm_workers(group, [bench.workers[i] for i in ids], 2)
                _log(f"workers {ids} ready")
        for _, run in _iterate_repeats(bench):
            runs.append(run)
        if "cold" in options.scenarios:
            cold = cold_start(bench, options.cold_trials, _log)
        if "f" in options.scenarios:
            memory = _memory(bench)
        machine = machine_info(options.device, bench.torch_threads)
        machine["load_average_start"] = load_at_start  # 1/5/15-minute load: other work on the machine
        machine["load_average_end"] = list(os.getloadavg())
        report = {
            "schema": "segpipe-bench/1",
            "command": "python -m bench.run " + shlex.join(sys.argv[1:] if argv is None else list(argv)),
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "duration_s": time.monotonic() - started,
            "machine": machine,
            "config": {
                "images": options.images,
                "repeat": options.repeat,
                "scenarios": list(options.scenarios),
                "width": options.width,
                "height": options.height,
                "imgsz": bench.settings.fastsam_imgsz,
                "conf": bench.settings.default_conf,
                "hits": options.hits,
                "png_hits": options.png_hits,
                "small_images": options.small_images,
                "small_size": list(options.small_size),
                "small_bytes_mean": sum(len(j) for j in bench.small) / len(bench.small),
                "batch_sizes": list(options.batch_sizes),
                "memory_requests": options.memory_requests if memory is not None else None,
                "worker_batch_size": options.worker_batch_size,
                "worker_env": options.worker_env,
                "worker_patch": options.worker_patch,
                "window": options.window,
                "fetch_wait_ms": options.fetch_wait_ms or KafkaSettings().fetch_wait_max_ms,
                "torch_threads": options.torch_threads,
                "png_bytes_mean": sum(len(i.png) for i in bench.images) / len(bench.images),
                "model_env": bench.model_env,
                "clients": options.clients,
                "cold_trials": options.cold_trials,
            },
            "summary": summarise(runs, memory, cold),
            "runs": runs,
        }
        report.update(headline(report["summary"]))
    report = clean_for_json(report)
    options.out.mkdir(parents=True, exist_ok=True)
    (options.out / "latest.json").write_text(json.dumps(report, indent=2))
    written = [options.out / "latest.json"]
    if {"a", "b", "d"} & report["summary"].keys():  # the chart draws these rows; peers or cold alone have none
        make_chart(report, options.out / "latest.png")
        written.append(options.out / "latest.png")
    print_report(report)
    print(f"\nwrote {' and '.join(map(str, written))} in {report['duration_s']:.0f}s")
    return report


if __name__ == "__main__":
    main()
