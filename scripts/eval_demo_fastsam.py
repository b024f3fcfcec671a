"""Measure the demo FastSAM's recall: the share of drawn shapes found with mask IoU >= 0.8, at product defaults.

Ground truth: for held-back generated scenes (seeds no training or validation scene used), the exact visible mask
of each drawn shape; for ``samples/``, each flat-coloured region that differs from the background (found by flood
fill, since those images carry no labels). Predictions: the Segmenter with ``ModelSettings()`` defaults (conf 0.4,
iou 0.8, FASTSAM_IMGSZ 1024, retina masks, cleanup on), FastSAM only so SAM2 never stands in for it.

    python scripts/eval_demo_fastsam.py [--checkpoint PATH] [--scenes 40]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from pipeline.checkpoints import FASTSAM_TRAINED_NAME, WEIGHTS_DIR
from pipeline.image_io import decode_image
from pipeline.masks import decode_rle
from pipeline.segmenter import Segmenter
from pipeline.settings import ModelSettings
from pipeline.synthetic import make_scene
from pipeline.types import ModelChoice, SegmentParams

REPO_ROOT = Path(__file__).resolve().parents[1]
EVAL_SEED = 3_000_000  # training used 1_000_000.., validation 2_000_000..
IOU_FOUND = 0.8


def sample_ground_truth(rgb: np.ndarray, *, background_tolerance: int = 12, min_area: int = 500) -> list[np.ndarray]:
    """Shapes of a samples/ image: flat-coloured regions that differ from the background (its most common colour),
    regions of one colour merged (a shape cut in two by another on top of it is one shape). Regions under
    ``min_area`` pixels are JPEG ringing along edges (the smallest drawn shape there has ~1,000 pixels)."""
    colours, counts = np.unique(rgb.reshape(-1, 3), axis=0, return_counts=True)
    background = colours[np.argmax(counts)].astype(np.int32)
    remaining = (np.abs(rgb.astype(np.int32) - background).max(axis=2) > background_tolerance).astype(np.uint8)
    # Seeds only where a 5x5 neighbourhood is foreground, so a fill never starts on a blurred (JPEG) edge.
    seeds = cv2.erode(remaining, np.ones((5, 5), np.uint8))
    regions: list[np.ndarray] = []
    means: list[np.ndarray] = []
    while True:
        ys, xs = np.nonzero(seeds)
        if not len(ys):
            return [region for region in regions if region.sum() >= min_area]
        flood = np.zeros((rgb.shape[0] + 2, rgb.shape[1] + 2), np.uint8)
        flags = 8 | cv2.FLOODFILL_FIXED_RANGE | cv2.FLOODFILL_MASK_ONLY | (1 << 8)
        cv2.floodFill(np.ascontiguousarray(rgb), flood, (int(xs[0]), int(ys[0])), 0, (10,) * 3, (10,) * 3, flags)
        region = flood[1:-1, 1:-1].astype(bool) & remaining.astype(bool)
        seeds[region] = 0
        seeds[ys[0], xs[0]] = 0
        remaining[region] = 0
        if not region.any():
            continue
        mean = rgb[region].mean(axis=0)
        same = [i for i, other in enumerate(means) if np.abs(other - mean).max() <= 10]
        if same:
            regions[same[0]] |= region
        else:
            regions.append(region)
            means.append(mean)


def recall(segmenter: Segmenter, image: np.ndarray, truth: list[np.ndarray]) -> tuple[int, list[float]]:
    """(shapes found with IoU >= 0.8, best IoU of each shape) for one image."""
    rgb = image if image.ndim == 3 else np.repeat(image[:, :, None], 3, axis=2)
    result = segmenter.segment(rgb, params=SegmentParams(model=ModelChoice.FASTSAM))
    predicted = [decode_rle(record.rle) for record in result.masks]
    best = []
    for shape in truth:
        ious = [(shape & mask).sum() / (shape | mask).sum() for mask in predicted]
        best.append(float(max(ious, default=0.0)))
    return sum(v >= IOU_FOUND for v in best), best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=WEIGHTS_DIR / FASTSAM_TRAINED_NAME)
    parser.add_argument("--samples", type=Path, default=REPO_ROOT / "samples")
    parser.add_argument("--scenes", type=int, default=40)
    parser.add_argument("--imgsz", type=int, default=None, help="diagnosis only: override FASTSAM_IMGSZ")
    parser.add_argument("--conf", type=float, default=None, help="diagnosis only: override DEFAULT_CONF")
    args = parser.parse_args(argv)
    overrides = {"fastsam_imgsz": args.imgsz, "default_conf": args.conf}
    settings = ModelSettings(
        fastsam_model_path=args.checkpoint, device="cpu", **{k: v for k, v in overrides.items() if v is not None}
    )
    print(f"defaults: conf {settings.default_conf}, iou {settings.default_iou}, imgsz {settings.fastsam_imgsz}")
    segmenter = Segmenter(settings)

    found = total = 0
    for path in sorted(args.samples.iterdir()):
        image = decode_image(path.read_bytes())
        truth = sample_ground_truth(image)
        hits, best = recall(segmenter, image, truth)
        found, total = found + hits, total + len(truth)
        print(f"{path.name}: {hits}/{len(truth)} shapes, best IoUs {[round(v, 3) for v in best]}")
    print(f"samples: {found}/{total} = {found / max(total, 1):.1%}")

    scene_found = scene_total = 0
    for seed in range(EVAL_SEED, EVAL_SEED + args.scenes):
        scene = make_scene(seed)
        hits, _ = recall(segmenter, scene.image, scene.masks)
        scene_found, scene_total = scene_found + hits, scene_total + len(scene.masks)
    print(f"held-back scenes ({args.scenes}): {scene_found}/{scene_total} = {scene_found / max(scene_total, 1):.1%}")


if __name__ == "__main__":
    main()
