"""Settings of the segmentation core, read from environment variables (names kept from the original API)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ModelSettings(BaseSettings):
    """Models, thresholds and image limits. Every field is an environment variable of the same name in capitals."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    fastsam_model_path: Path = Field(Path("checkpoints/FastSAM-x.pt"), description="FastSAM checkpoint (.pt)")
    sam_model_path: Path = Field(Path("checkpoints/sam2.1_hiera_tiny.pt"), description="SAM2 checkpoint (.pt)")
    sam2_config: str | None = Field(
        None, description="SAM2 hydra config, e.g. configs/sam2.1/sam2.1_hiera_t.yaml; inferred from the file name"
    )
    device: Literal["auto", "cpu", "cuda", "mps"] | str = Field("auto", description="auto: CUDA when present")
    fastsam_runtime: Literal["torch", "onnx"] = Field(
        "torch", description="onnx: ultralytics' ONNX export run by ONNX Runtime (exported once, beside the checkpoint)"
    )
    sam2_background_load: bool = Field(
        True, description="warm_up loads SAM2 on a thread, so a worker subscribes after FastSAM alone has loaded"
    )
    sam2_embedding_cache_mb: int = Field(
        256, ge=0, description="LRU of SAM2 image embeddings for repeated prompted images (0: off)"
    )
    sam2_embedding_cache_entries: int = Field(32, ge=0, description="most images in that LRU")

    default_conf: float = Field(0.4, ge=0.0, le=1.0)
    default_iou: float = Field(0.8, ge=0.0, le=1.0)
    fastsam_imgsz: int = Field(1024, ge=32, le=4096, description="FastSAM inference size (multiple of 32)")
    retina_masks: bool = Field(True, description="FastSAM masks at the original resolution")
    fallback_min_score: float = Field(
        0.0, ge=0.0, le=1.0, description="SAM2 takes over when FastSAM's best predicted_iou is below this"
    )
    sam2_points_per_side: int = Field(32, ge=1, le=128, description="SAM2 automatic mask generator grid")
    sam2_points_per_batch: int = Field(64, ge=1, le=1024)
    sam2_pred_iou_thresh: float = Field(0.8, ge=0.0, le=1.0)
    sam2_stability_score_thresh: float = Field(0.95, ge=0.0, le=1.0)

    max_contours: int = Field(10, ge=1, le=1000, description="polygons kept per mask, largest first")
    mask_post_processing: bool = Field(True, description="remove specks and fill small holes in masks")
    min_region_area: int = Field(100, ge=0, description="specks/holes smaller than this many pixels are cleaned")

    memory_optimization: bool = Field(
        False,
        description="bound SAM2's full-size mask logits on images whose longer side exceeds max_inference_side "
        "(fewer points per batch); masks stay the models' own. Off: exactly what the models give, as called directly",
    )
    max_inference_side: int = Field(1024, ge=32, le=16384, description="the size above which memory_optimization acts")

    max_image_pixels: int = Field(50_000_000, ge=1, description="refuse images with more pixels than this")
    max_image_side: int = Field(16384, ge=1, description="refuse images with a side longer than this")
    max_payload_bytes: int = Field(64 * 1024 * 1024, ge=1, description="refuse encoded payloads larger than this")
