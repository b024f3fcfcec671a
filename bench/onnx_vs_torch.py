"""``python -m bench.onnx_vs_torch``: FastSAM on torch and on ONNX Runtime (FASTSAM_RUNTIME=onnx), side by side.

The same images (``bench.images``, 640x480), the same settings (imgsz, conf 0.005 for the random demo weights),
one process; runtimes alternate image by image (paired, so a noisy neighbour hurts both alike) after a warm-up of
each. Reports ms per image (median), the ratio, load time (the export is timed separately: once per checkpoint),
and the per-mask IoU of ONNX against torch. Writes ``bench/results/onnx_vs_torch.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np

from bench.harness import REPO_ROOT
from bench.images import make_images
from pipeline.checkpoints import ensure_demo_checkpoints
from pipeline.fastsam_onnx import onnx_export_path
from pipeline.models import FastSAMModel, _import_torch
from pipeline.types import Prompts


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.onnx_vs_torch")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--imgsz", type=int, default=1024)
    parser.add_argument("--conf", type=float, default=0.005)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--checkpoints", type=Path, default=Path(os.environ.get("SEGPIPE_CHECKPOINT_DIR", "checkpoints"))
    )
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    fastsam, _ = ensure_demo_checkpoints(args.checkpoints)
    t0 = time.perf_counter()
    onnx_path = onnx_export_path(fastsam)
    export_s = time.perf_counter() - t0
    models = {"torch": FastSAMModel(fastsam, args.device), "onnx": FastSAMModel(fastsam, args.device, runtime="onnx")}
    load_s = {}
    for name, model in models.items():
        t0 = time.perf_counter()
        model.load()
        load_s[name] = time.perf_counter() - t0
    kwargs = {"conf": args.conf, "iou": 0.8, "imgsz": args.imgsz, "retina": True}
    warm = make_images(1, first_seed=10_000)[0].pixels
    for model in models.values():
        model.predict([warm], [Prompts()], **kwargs)
    times: dict[str, list[float]] = {name: [] for name in models}
    ious: list[float] = []
    for image in make_images(args.images):
        masks = {}
        for name, model in models.items():
            t0 = time.perf_counter()
            (masks[name],) = model.predict([image.pixels], [Prompts()], **kwargs)
            times[name].append((time.perf_counter() - t0) * 1000.0)
        for a, b in zip(masks["torch"], masks["onnx"], strict=False):
            union = np.logical_or(a.mask, b.mask).sum()
            ious.append(float(np.logical_and(a.mask, b.mask).sum() / union) if union else 1.0)
    median = {name: statistics.median(values) for name, values in times.items()}
    report = {
        "command": "python -m bench.onnx_vs_torch",
        "images": args.images,
        "imgsz": args.imgsz,
        "torch_threads": _import_torch().get_num_threads(),
        "onnx_path": str(onnx_path),
        "export_s": export_s,
        "load_s": load_s,
        "ms_per_image_median": median,
        "ms_per_image": times,
        "onnx_speedup": median["torch"] / median["onnx"],
        "mask_iou_min": min(ious) if ious else None,
        "masks_compared": len(ious),
        "load_average": list(os.getloadavg()),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "onnx_vs_torch.json").write_text(json.dumps(report, indent=2))
    speed = f"onnx x{report['onnx_speedup']:.2f}"
    load = f"load torch {load_s['torch']:.2f} s, onnx {load_s['onnx']:.2f} s (export {export_s:.1f} s, once)"
    print(
        f"FastSAM {args.images} images, imgsz {args.imgsz}: torch {median['torch']:.0f} ms, "
        f"onnx {median['onnx']:.0f} ms per image (median, paired): {speed}; {load}; "
        f"min mask IoU {report['mask_iou_min']}"
    )
    return report


if __name__ == "__main__":
    main()
