"""Per-image CPU/GPU times of each model at the default sizes, through the segmentation core (issue 2's figures).

``python -m bench.core_times [--runs 5] [--sam2-everything-runs 1] [--device cpu]``: FastSAM everything mode at the
defaults (conf 0.4, imgsz 1024) and at conf 0.005 (where random weights do find masks), SAM2 prompted (a box, a
point) and SAM2's automatic mask generator at its default 32x32 grid, on a 640x480 image; median wall time and the
process's peak RSS. Uses the random-weight demo checkpoints unless FASTSAM_MODEL_PATH / SAM_MODEL_PATH are set.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import time
from pathlib import Path

import numpy as np

from pipeline.checkpoints import ensure_demo_checkpoints
from pipeline.segmenter import Segmenter
from pipeline.settings import ModelSettings
from pipeline.types import ModelChoice, Prompts, SegmentParams


def _median_ms(fn, runs: int) -> tuple[float, object]:  # type: ignore[no-untyped-def]
    times, out = [], None
    for _ in range(runs):
        started = time.perf_counter()
        out = fn()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--sam2-everything-runs", type=int, default=1)
    parser.add_argument("--device", default=os.environ.get("DEVICE", "cpu"))
    parser.add_argument(
        "--checkpoints", type=Path, default=Path(os.environ.get("SEGPIPE_CHECKPOINT_DIR", "checkpoints"))
    )
    args = parser.parse_args(argv)
    fastsam, sam2 = ensure_demo_checkpoints(args.checkpoints)
    settings = ModelSettings(
        fastsam_model_path=os.environ.get("FASTSAM_MODEL_PATH", fastsam),
        sam_model_path=os.environ.get("SAM_MODEL_PATH", sam2),
        device=args.device,
    )
    segmenter = Segmenter(settings)
    segmenter.warm_up()
    image = (np.random.default_rng(0).random((480, 640, 3)) * 255).astype(np.uint8)
    box = Prompts(boxes=((100.0, 80.0, 400.0, 360.0),))
    point = Prompts(points=((320.0, 240.0),), point_labels=(1,))
    segmenter.segment(image, None, SegmentParams(model=ModelChoice.FASTSAM))  # first call pays one-off set-up
    rows = {}
    for name, prompts, params, runs in (
        ("fastsam everything conf 0.4 imgsz 1024", None, SegmentParams(model=ModelChoice.FASTSAM), args.runs),
        (
            "fastsam everything conf 0.005 imgsz 1024",
            None,
            SegmentParams(model=ModelChoice.FASTSAM, conf=0.005),
            args.runs,
        ),
        ("fastsam box prompt conf 0.005", box, SegmentParams(model=ModelChoice.FASTSAM, conf=0.005), args.runs),
        ("sam2 box prompt (incl. image encoder)", box, SegmentParams(model=ModelChoice.SAM2), args.runs),
        ("sam2 point prompt (incl. image encoder)", point, SegmentParams(model=ModelChoice.SAM2), args.runs),
        ("sam2 everything 32x32 grid", None, SegmentParams(model=ModelChoice.SAM2), args.sam2_everything_runs),
    ):
        if runs < 1:
            continue
        ms, result = _median_ms(lambda p=prompts, q=params: segmenter.segment(image, p, q), runs)
        rows[name] = {"median_ms": round(ms, 1), "runs": runs, "masks": len(result.masks)}  # type: ignore[attr-defined]
        print(f"{name:<45} {ms:10.1f} ms  ({runs} runs, {rows[name]['masks']} masks)", flush=True)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"peak RSS {peak_mb:.0f} MB, device {segmenter.device}, torch threads {__import__('torch').get_num_threads()}"
    )
    print(json.dumps({"rows": rows, "peak_rss_mb": round(peak_mb), "device": segmenter.device}))


if __name__ == "__main__":
    main()
