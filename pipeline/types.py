"""Messages of the segmentation core: frozen dataclasses, free of Kafka and of any wire format.

The mask record follows SAM2's automatic mask generator output (segmentation, bbox XYWH, area,
predicted_iou, stability_score) with the segmentation carried twice: as lossless COCO RLE and as polygons.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from pipeline.params import ModelChoice, SegmentParams

__all__ = [
    "RLE",
    "FallbackReason",
    "MaskRecord",
    "ModelChoice",
    "ModelName",
    "Prompts",
    "SegmentParams",
    "SegmentationResult",
]


class ModelName(StrEnum):
    """The model that produced a result."""

    FASTSAM = "fastsam"
    SAM2 = "sam2"


class FallbackReason(StrEnum):
    """Why SAM2 answered instead of FastSAM (see README, 'The fallback rule')."""

    FASTSAM_ERROR = "fastsam_error"  # FastSAM raised (out of memory included) or could not be loaded
    NO_MASKS = "no_masks"  # FastSAM found no mask
    LOW_SCORE = "low_score"  # FastSAM's best predicted_iou is below FALLBACK_MIN_SCORE


@dataclass(frozen=True, slots=True)
class Prompts:
    """Optional prompts, in the original image's pixel coordinates.

    points: (x, y) pairs; point_labels: 1 foreground, 0 background (all 1 when omitted);
    boxes: (x1, y1, x2, y2) corner pairs.
    """

    points: tuple[tuple[float, float], ...] = ()
    point_labels: tuple[int, ...] = ()
    boxes: tuple[tuple[float, float, float, float], ...] = ()

    @property
    def empty(self) -> bool:
        return not self.points and not self.boxes


@dataclass(frozen=True, slots=True)
class RLE:
    """COCO run-length encoding (column-major, as pycocotools writes it); ``size`` is [height, width]."""

    size: tuple[int, int]
    counts: str


@dataclass(frozen=True, slots=True)
class MaskRecord:
    """One mask in original-image coordinates.

    rle: lossless mask; polygons: outer contours, largest first, at most MAX_CONTOURS, each flat
    [x1, y1, x2, y2, ...]; bbox: XYWH of the mask; area: mask pixels; predicted_iou: the model's own
    quality estimate (SAM2's IoU head, FastSAM's detection confidence); stability_score: IoU of the mask
    logits thresholded at +offset and -offset around the mask threshold (SAM's definition); prompt_index: the
    prompt the mask answers (the box's index, 0 for a set of points without boxes, None in everything mode).
    """

    rle: RLE
    polygons: tuple[tuple[float, ...], ...]
    bbox: tuple[float, float, float, float]
    area: int
    predicted_iou: float
    stability_score: float
    prompt_index: int | None = None  # the box it answers (0 for a point set); None in everything mode


@dataclass(frozen=True, slots=True)
class SegmentationResult:
    """What the core returns for one image.

    timings_ms: per-stage wall time (e.g. "fastsam", "sam2", "postprocess"); width/height: the original
    image; inference_width/height: the size of the image the models were given (the original: nothing is downscaled).
    """

    masks: tuple[MaskRecord, ...]
    model: ModelName
    fallback_reason: FallbackReason | None
    fallback_detail: str | None
    width: int
    height: int
    inference_width: int
    inference_height: int
    timings_ms: dict[str, float] = field(default_factory=dict)
