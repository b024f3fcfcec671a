"""Peer p1: FastSAM as a user writes it, in its own process. ``python -m bench.naive_loop --model M IMAGE...``.

``FastSAM(path)(image_path, retina_masks=True, imgsz=1024, conf=..., iou=0.8)`` image by image, the masks taken
out as numpy arrays; ultralytics' defaults and its own thread choice (it sets OMP_NUM_THREADS=1 on import when
unset and torch to cpu_count - 1 threads at the first predict), which is why this runs in a separate process: its
thread changes must not leak into the bench. One warm-up image first (model load and ultralytics' first-predict
set-up are not measured, as for every other peer). Prints one JSON line: wall seconds, per-image latencies, the
process's CPU seconds over the loop, torch's thread count.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.naive_loop")
    parser.add_argument("--model", required=True)
    parser.add_argument("--warm", required=True, help="an image not measured")
    parser.add_argument("--imgsz", type=int, default=1024)
    parser.add_argument("--conf", type=float, default=0.4)
    parser.add_argument("--iou", type=float, default=0.8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("images", nargs="+")
    args = parser.parse_args(argv)
    for name, value in (("YOLO_OFFLINE", "1"), ("YOLO_VERBOSE", "False"), ("YOLO_AUTOINSTALL", "False")):
        os.environ.setdefault(name, value)  # no hub or pip: this machine has no network
    from pipeline._torchvision_cpu import ensure_torchvision_ops

    ensure_torchvision_ops()  # torchvision's compiled ops on the CPU-only torch of this venv
    import torch
    from ultralytics import FastSAM

    model = FastSAM(args.model)
    kwargs = {"device": args.device, "retina_masks": True, "imgsz": args.imgsz, "conf": args.conf, "iou": args.iou}
    model(args.warm, verbose=False, **kwargs)
    latencies, masks = [], []
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for path in args.images:
        started = time.perf_counter()
        (result,) = model(path, verbose=False, **kwargs)
        found = result.masks.data.cpu().numpy() if result.masks is not None else None
        latencies.append((time.perf_counter() - started) * 1000.0)
        masks.append(0 if found is None else len(found))
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    report = {
        "wall_s": wall,
        "cpu_s": cpu,
        "latencies_ms": latencies,
        "masks": masks,
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
    }
    print("NAIVE-LOOP " + json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
