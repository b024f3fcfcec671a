"""Train the demo/test FastSAM (YOLOv8n-seg, one class) on synthetic filled shapes, offline, with ultralytics' trainer.

The result is committed (``pipeline/weights/``) so set-up never retrains; ``python -m pipeline.checkpoints`` copies it
into the checkpoint directory. The committed file came from two runs on a 2-core CPU machine, in the background:

    # 1. from random weights, normal scenes only: 4 epochs, 45 min (this stage ran on 1 thread, ultralytics' choice)
    python scripts/train_demo_fastsam.py --work /tmp/fastsam-1 --large 0 --hours 0.75 --threads 1
    # 2. continued: 800 scenes, half with a few large shapes, both cores: 27 epochs, 57 min
    python scripts/train_demo_fastsam.py --work /tmp/fastsam-2 --init /tmp/fastsam-1/run/weights/last.pt \
        --train-images 800 --large 0.5 --hours 0.95

Then ``python scripts/eval_demo_fastsam.py`` measures the recall at product defaults (README: 94 % / 91 %).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.checkpoints import FASTSAM_TRAINED_NAME, WEIGHTS_DIR
from pipeline.models import _import_torch, configure_offline
from pipeline.synthetic import Scene, make_scene

TRAIN_SEED = 1_000_000  # scenes 1_000_000.. train, 2_000_000.. validate; the evaluation uses other seeds
VAL_SEED = 2_000_000


def write_split(
    root: Path, split: str, first_seed: int, count: int, zoom: float = 1.0, crop: int = 416, large: float = 0.0
) -> None:
    """Write ``count`` scenes as images plus YOLO-seg polygon labels (one polygon per visible shape).

    A ``large`` fraction of the scenes hold a few big shapes (a quarter to nine tenths of the shorter side): once
    FASTSAM_IMGSZ (1024) upsamples a 300-800 px image its shapes are larger than anything a 416 px training input
    shows otherwise.

    With ``zoom`` > 1 each scene is drawn ``zoom`` times larger and a ``crop``-pixel window of it is kept: shapes
    then have the pixel sizes they have once the product's FASTSAM_IMGSZ (1024) upsamples a 300-800 px image, while
    training stays at a small, affordable input size."""
    images, labels = root / "images" / split, root / "labels" / split
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    for seed in range(first_seed, first_seed + count):
        rng = np.random.default_rng(seed)
        if zoom > 1:  # a window of a normal scene, enlarged (cheaper than drawing the scene zoom times larger)
            scene = make_scene(seed, rel_size=(0.06, 0.45))
            height, width = scene.image.shape[:2]
            side = round(crop / zoom)
            x0, y0 = int(rng.integers(0, max(1, width - side))), int(rng.integers(0, max(1, height - side)))
            window = (slice(y0, y0 + side), slice(x0, x0 + side))
            out = (round(min(side, width - x0) * zoom), round(min(side, height - y0) * zoom))
            image = cv2.resize(scene.image[window], out, interpolation=cv2.INTER_LINEAR)
            kept = [
                cv2.resize(m[window].astype(np.uint8), out, interpolation=cv2.INTER_NEAREST) > 0 for m in scene.masks
            ]
            scene = Scene(image=image, masks=[m for m in kept if m.sum() >= 64], kinds=[])
        elif large and rng.random() < large:  # no draw at 0: the first stage's data stays as it was
            scene = make_scene(seed, shapes=(1, 4), rel_size=(0.25, 0.9))
        else:
            scene = make_scene(seed, rel_size=(0.06, 0.6))
        height, width = scene.image.shape[:2]
        bgr = scene.image if scene.image.ndim == 2 else scene.image[:, :, ::-1]
        if rng.random() < 0.3:  # some JPEG artefacts, as in samples/shapes-2.jpg
            cv2.imwrite(str(images / f"{seed}.jpg"), bgr, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(75, 96))])
        else:
            cv2.imwrite(str(images / f"{seed}.png"), bgr)
        lines = []
        for mask in scene.masks:
            contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            if not contours:
                continue
            contour = max(contours, key=cv2.contourArea).reshape(-1, 2).astype(np.float64)
            if len(contour) < 3:
                continue
            contour += 0.5  # pixel centres -> the middle of the boundary pixels' area, in continuous coordinates
            contour /= (width, height)
            lines.append("0 " + " ".join(f"{v:.6f}" for v in np.clip(contour, 0, 1).ravel()))
        (labels / f"{seed}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "segpipe-fastsam-train")
    parser.add_argument("--train-images", type=int, default=600)
    parser.add_argument("--val-images", type=int, default=30)
    parser.add_argument("--imgsz", type=int, default=416)
    parser.add_argument("--hours", type=float, default=0.75, help="training wall time (ultralytics' time=)")
    parser.add_argument("--out", type=Path, default=WEIGHTS_DIR / FASTSAM_TRAINED_NAME)
    parser.add_argument("--zoom", type=float, default=1.0, help="draw scenes this much larger, train on crops")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads for training")
    parser.add_argument("--large", type=float, default=0.5, help="fraction of scenes with a few big shapes")
    parser.add_argument(
        "--init", type=Path, default=None, help="continue from these weights (a previous run's last.pt), no warm-up"
    )
    args = parser.parse_args(argv)

    configure_offline()
    torch = _import_torch()
    from ultralytics import YOLO
    from ultralytics.utils import torch_utils

    # select_device() sets torch to cpu_count - 1 threads (1 of 2 cores here): training is CPU-bound, take them all
    torch_utils.NUM_THREADS = args.threads

    from pipeline.checkpoints import build_fastsam_checkpoint

    work = args.work.resolve()  # a relative project= lands under ultralytics' own runs_dir setting
    data = work / "data"
    if not (data / "data.yaml").is_file():
        write_split(data, "train", TRAIN_SEED, args.train_images, args.zoom, args.imgsz, args.large)
        write_split(data, "val", VAL_SEED, args.val_images, args.zoom, args.imgsz, args.large)
        (data / "data.yaml").write_text(f"path: {data}\ntrain: images/train\nval: images/val\nnames:\n  0: object\n")

    start = args.init or build_fastsam_checkpoint(work / "init.pt")  # nc=1 yolov8n-seg, random weights
    torch.manual_seed(0)
    model = YOLO(str(start))
    # A continued run starts at AdamW's rate without ultralytics' warm-up (which restarts from a high bias rate).
    continued = {"optimizer": "AdamW", "lr0": 0.001, "warmup_epochs": 0} if args.init else {"warmup_epochs": 1}
    model.train(
        data=str(data / "data.yaml"),
        imgsz=args.imgsz,
        time=args.hours,
        epochs=100,  # replaced by what fits in `time` after the first epoch
        batch=8,
        nbs=8,  # one optimizer step per small batch: more steps fit in the time budget than with 16 or 64
        **continued,
        close_mosaic=3,
        scale=0.7,  # objects 0.3-1.7x: the product infers at 1024, larger than the training size
        device="cpu",
        workers=0,
        cache="ram",
        plots=False,  # plotting downloads a font
        amp=False,
        project=str(work),
        name="run",
        exist_ok=True,
        seed=0,
        deterministic=True,
        verbose=True,
    )
    best = work / "run" / "weights" / "best.pt"
    from ultralytics.utils.torch_utils import strip_optimizer

    strip_optimizer(str(best))  # drops the optimizer and EMA copies: ~6 MB, loads with FastSAM(path)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(best, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
