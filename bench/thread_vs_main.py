"""``python -m bench.thread_vs_main``: is the model slower on a worker's inference thread than on a main thread?

Bench (a) runs ``Segmenter.segment`` on the main thread; the worker runs it on its batcher thread. This runs the same
loop over the same images in one process, alternating: on the main thread, then on a fresh second thread, ``--repeat``
times, and prints ms per image for each (median of the repeats). Part of (b)'s ``model_slower_in_worker``.
"""

from __future__ import annotations

import argparse
import json
import os
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
    runs: dict[str, list[float]] = {"main": [], "thread": []}

    def loop(out: list[float]) -> None:
        started = time.perf_counter()
        for image in images:
            segmenter.segment(image, params=params)
        out.append((time.perf_counter() - started) / len(images) * 1000.0)

    for _ in range(args.repeat):
        loop(runs["main"])
        thread = threading.Thread(target=loop, args=(runs["thread"],), name="inference")
        thread.start()
        thread.join()
    report = {name: {"ms_per_image": values, "median": statistics.median(values)} for name, values in runs.items()}
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
