"""The demo/test checkpoints carry signal: the committed FastSAM finds drawn shapes at the product's defaults, and the
built SAM2's scores vary. Both load through the real checkpoints' code path (no stand-ins)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.checkpoints import FASTSAM_TRAINED_NAME, WEIGHTS_DIR, ensure_demo_checkpoints
from pipeline.masks import decode_rle
from pipeline.segmenter import Segmenter
from pipeline.settings import ModelSettings
from pipeline.synthetic import make_scene
from pipeline.types import ModelChoice, Prompts, SegmentParams

pytestmark = pytest.mark.filterwarnings("ignore:The given NumPy array is not writable:UserWarning")


def test_demo_fastsam_is_the_committed_training_result(tmp_path: Path, demo_checkpoints: tuple[Path, Path]) -> None:
    """Set-up copies the trained weights, byte for byte, and never builds a random FastSAM in their place."""
    committed = (WEIGHTS_DIR / FASTSAM_TRAINED_NAME).read_bytes()
    assert demo_checkpoints[0].read_bytes() == committed
    fresh, _ = ensure_demo_checkpoints(tmp_path, sam2=False)
    assert fresh.read_bytes() == committed
    assert len(committed) < 10_000_000, "stripped of optimizer state: a few MB"


def test_trained_fastsam_finds_drawn_shapes_at_product_defaults(demo_checkpoints: tuple[Path, Path]) -> None:
    """conf 0.4, iou 0.8, imgsz 1024, retina masks, cleanup on: drawn shapes of held-back scenes are found with mask
    IoU >= 0.8, where a random FastSAM finds none. The committed training finds 25 of these 27 (94 % of 195 over the
    40 scenes of scripts/eval_demo_fastsam.py): MIN_RECALL is the issue's 80 % target."""
    segmenter = Segmenter(ModelSettings(fastsam_model_path=demo_checkpoints[0], device="cpu"))
    found = total = 0
    for seed in range(3_000_000, 3_000_004):  # the evaluation's held-back seeds (training used others)
        scene = make_scene(seed, grey=False)
        result = segmenter.segment(scene.image, params=SegmentParams(model=ModelChoice.FASTSAM))
        scores = [r.predicted_iou for r in result.masks]
        assert scores == sorted(scores, reverse=True) and all(s >= 0.4 for s in scores)
        masks = [decode_rle(r.rle) for r in result.masks]
        for shape in scene.masks:
            total += 1
            found += any((shape & m).sum() / (shape | m).sum() >= 0.8 for m in masks)
    assert found / total >= MIN_RECALL, f"{found}/{total} drawn shapes found"


MIN_RECALL = 0.8


def test_scaled_sam2_scores_vary(segmenter: Segmenter, shapes_image: np.ndarray) -> None:
    """Random SAM2 logits stay within +-0.1 (stability 0 everywhere); the demo file's scaled logits give stability
    scores and predicted IoUs that differ from prompt to prompt."""
    image = np.ascontiguousarray(shapes_image)
    points = [(70.0, 200.0), (230.0, 70.0), (300.0, 20.0), (60.0, 60.0)]
    raw = segmenter.sam2.predict([image] * len(points), [Prompts(points=(p,), point_labels=(1,)) for p in points])
    stability = [masks[0].stability_score for masks in raw]
    assert len({round(s, 4) for s in stability}) >= 3 and max(stability) > 0.2, stability
    assert len({round(masks[0].predicted_iou, 4) for masks in raw}) >= 3
    result = segmenter.segment(image, params=SegmentParams(model=ModelChoice.SAM2, mask_post_processing=False))
    assert result.masks and all(0 < r.stability_score <= 1 for r in result.masks)
