"""``python -m bench.thread_vs_main``: is the model slower on a worker's inference thread than on a main thread?

Bench (a) runs ``Segmenter.segment`` on the main thread; the worker runs it on its batcher thread. This runs the same
loop over the same images in one process: ``--repeat`` times on the main thread, as many on one long-lived second
thread, then again on the main thread; it prints ms, minor page faults and system CPU ms per image for each
(medians over the loops). Part of (b)'s ``model_slower_in_worker``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import threading
import time
from pathlib import Path

from bench.images import make_images
from pipeline.checkpoints import ensure_demo_checkpoints
from pipeline.segmenter import Segmenter
from pipeline.settings import ModelSettings
from pipeline.types import ModelChoice, SegmentParams


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.thread_vs_main")
    parser.add_argument("--images", type=int, default=6)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--conf", type=float, default=0.005)
    parser.add_argument(
        "--checkpoints", type=Path, default=Path(os.environ.get("SEGPIPE_CHECKPOINT_DIR", "checkpoints"))
    )
    args = parser.parse_args(argv)
    fastsam, sam2 = ensure_demo_checkpoints(args.checkpoints)
    settings = ModelSettings(fastsam_model_path=fastsam, sam_model_path=sam2, device="cpu", default_conf=args.conf)
    segmenter = Segmenter(settings)
    segmenter.warm_up(background_sam2=False)
    images = [image.pixels for image in make_images(args.images)]
    params = SegmentParams(model=ModelChoice.FASTSAM)
    segmenter.segment(images[0], params=params)
    runs: dict[str, dict[str, list[float]]] = {
        name: {"ms_per_image": [], "minor_faults_per_image": [], "system_ms_per_image": []}
        for name in ("main", "thread")
    }

    def loop(out: dict[str, list[float]]) -> None:
        # Counted on the calling thread only (RUSAGE_THREAD): page faults are where the two differ (bench/README.md).
        before, started = resource.getrusage(resource.RUSAGE_THREAD), time.perf_counter()
        for image in images:
            segmenter.segment(image, params=params)
        after, count = resource.getrusage(resource.RUSAGE_THREAD), len(images)
        out["ms_per_image"].append((time.perf_counter() - started) / count * 1000.0)
        out["minor_faults_per_image"].append((after.ru_minflt - before.ru_minflt) / count)
        out["system_ms_per_image"].append((after.ru_stime - before.ru_stime) / count * 1000.0)

    def on_a_thread() -> None:  # one long-lived thread, like the worker's inference thread
        for _ in range(args.repeat):
            loop(runs["thread"])

    for _ in range(args.repeat):
        loop(runs["main"])
    thread = threading.Thread(target=on_a_thread, name="inference")
    thread.start()
    thread.join()
    for _ in range(args.repeat):
        loop(runs["main"])
    report = {
        name: {**values, **{f"median_{key}": statistics.median(v) for key, v in values.items()}}
        for name, values in runs.items()
    }
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
