"""Fixtures for the segmentation core: real (random-weight) checkpoints, one loaded Segmenter, small test images.

The checkpoints come from :mod:`pipeline.checkpoints` (the real FastSAM and SAM2.1 hiera-tiny architectures with
random weights), so every test here loads models through exactly the path production checkpoints take. They are
built once per session (~5 s), or reused from ``SEGPIPE_CHECKPOINT_DIR`` when set so CI can cache them.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.checkpoints import ensure_demo_checkpoints
from pipeline.segmenter import Segmenter
from pipeline.settings import ModelSettings

IMAGE_HEIGHT, IMAGE_WIDTH = 240, 320


@pytest.fixture(scope="session")
def demo_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(fastsam_path, sam2_path): built once per session, or taken from / cached in SEGPIPE_CHECKPOINT_DIR."""
    cached = os.environ.get("SEGPIPE_CHECKPOINT_DIR", "").strip()
    directory = Path(cached) if cached else tmp_path_factory.mktemp("checkpoints")
    return ensure_demo_checkpoints(directory)


@pytest.fixture(scope="session")
def model_settings(demo_checkpoints: tuple[Path, Path]) -> ModelSettings:
    """Settings for the demo checkpoints on CPU, with a cheap SAM2 grid (4x4) whose masks are never filtered out.

    Every field a test relies on is set explicitly, so environment variables of the same names cannot leak in.
    """
    fastsam_path, sam2_path = demo_checkpoints
    return ModelSettings(
        fastsam_model_path=fastsam_path,
        sam_model_path=sam2_path,
        sam2_config=None,
        device="cpu",
        default_conf=0.4,
        default_iou=0.8,
        fastsam_imgsz=640,
        retina_masks=True,
        fallback_min_score=0.0,
        sam2_points_per_side=4,
        sam2_points_per_batch=64,
        sam2_pred_iou_thresh=0.0,
        sam2_stability_score_thresh=0.0,
        max_contours=10,
        mask_post_processing=True,
        min_region_area=100,
        memory_optimization=False,
        max_inference_side=1024,
    )


@pytest.fixture(scope="session")
def segmenter(model_settings: ModelSettings) -> Segmenter:
    """One Segmenter for the session, both models loaded up front (loading is what the session pays once)."""
    engine = Segmenter(model_settings)
    engine.fastsam.load()
    engine.sam2.load()
    return engine


def _read_only(image: np.ndarray) -> np.ndarray:
    """Session images are shared between tests: make any accidental in-place write fail loudly."""
    image.setflags(write=False)
    return image


@pytest.fixture(scope="session")
def noise_image() -> np.ndarray:
    """A seeded 240x320 RGB noise image (read-only): random FastSAM finds ~60 masks on it at conf 0.005."""
    rng = np.random.default_rng(1234)
    return _read_only(rng.integers(0, 256, (IMAGE_HEIGHT, IMAGE_WIDTH, 3), dtype=np.uint8))


@pytest.fixture(scope="session")
def shapes_image() -> np.ndarray:
    """A black 240x320 RGB image (read-only) with filled rectangles and circles at known places."""
    image = np.zeros((IMAGE_HEIGHT, IMAGE_WIDTH, 3), dtype=np.uint8)
    cv2.rectangle(image, (20, 30), (119, 149), (255, 255, 255), thickness=-1)
    cv2.rectangle(image, (180, 160), (299, 219), (40, 200, 90), thickness=-1)
    cv2.circle(image, (230, 70), 45, (220, 60, 30), thickness=-1)
    cv2.circle(image, (70, 200), 25, (30, 80, 230), thickness=-1)
    return _read_only(image)
