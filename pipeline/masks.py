"""From a model's boolean mask to the wire's :class:`~pipeline.types.MaskRecord`.

Every field of a record is derived from one final mask (after the optional cleanup), so the RLE, the polygons,
the bbox and the area always describe the same pixels. The heavy lifting is left to the libraries SAM2 itself
relies on: pycocotools for RLE, ``sam2.utils.amg`` for small-region cleanup, boxes and stability scores, and
OpenCV for contours; this module only adapts shapes, dtypes and edge cases.

Coordinate conventions (shared by polygons and bbox): a vertex ``(x, y)`` is a pixel index, i.e. the centre
of pixel ``mask[y, x]``, which is what ``cv2.findContours`` returns and ``cv2.fillPoly`` draws. The bbox is
SAM2's automatic mask generator's: ``(x0, y0, x1 - x0, y1 - y0)`` with ``x1, y1`` the last (inclusive) column
and row of the mask, so ``w``/``h`` are one less than the pixel extent and a one-pixel mask has ``w == h == 0``.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch
from pycocotools import mask as coco_mask
from sam2.utils.amg import (
    batched_mask_to_box,
    box_xyxy_to_xywh,
    calculate_stability_score,
    remove_small_regions,
)

from pipeline.types import RLE, MaskRecord

__all__ = [
    "MASK_FIELD_DOCS",
    "build_mask_record",
    "clean_mask",
    "decode_rle",
    "encode_rle",
    "mask_bbox",
    "mask_polygons",
    "rasterize_polygons",
    "stability_score",
    "stability_scores",
]

MASK_FIELD_DOCS: dict[str, str] = {
    "rle": "Lossless mask as COCO run-length encoding (column-major compressed counts string, size [height, width]).",
    "polygons": (
        "Outer contours of the mask, largest first and at most MAX_CONTOURS, each a flat [x1, y1, x2, y2, ...] list "
        "of pixel-centre coordinates (holes are not represented; use the RLE for exact pixels)."
    ),
    "bbox": (
        "Box around the mask as [x, y, w, h] in SAM2's convention, where x + w and y + h are the last mask column "
        "and row (inclusive), so a one-pixel mask has w = h = 0."
    ),
    "area": "Number of pixels in the mask.",
    "predicted_iou": (
        "The model's own estimate of the mask's quality (SAM2's IoU head, FastSAM's detection confidence)."
    ),
    "stability_score": (
        "IoU of the mask logits thresholded at mask_threshold + offset and mask_threshold - offset "
        "(SAM's definition); values near 1 mean the mask barely changes with the cutoff."
    ),
}

# Contours with fewer than 3 points (a lone pixel, a 1-px straight line) are widened to the convex hull of
# small squares around their points. A half-width of 0.25 px gives a polygon with real area that
# ``rasterize_polygons`` still draws back as exactly the original pixels (0.5 would spill into neighbours).
_WIDEN_HALF_WIDTH = 0.25
# Sub-pixel bits for cv2.fillPoly: 1/16 px represents the widened vertices (multiples of 0.25) exactly.
_FILL_SHIFT = 4


def _as_2d_bool(mask: np.ndarray) -> np.ndarray:
    """Validate a single (H, W) mask and view it as bool (nonzero is foreground)."""
    array = np.asarray(mask)
    if array.ndim != 2:
        raise ValueError(f"expected a (H, W) mask, got shape {array.shape}")
    return array if array.dtype == np.bool_ else array != 0


def encode_rle(mask: np.ndarray) -> RLE:
    """Losslessly encode a (H, W) mask as compressed COCO RLE, exactly as pycocotools writes it.

    The counts come back from pycocotools as ASCII bytes; they are decoded to ``str`` so the record can be
    serialised as JSON/Avro text.
    """
    array = _as_2d_bool(mask)
    encoded = coco_mask.encode(np.asfortranarray(array, dtype=np.uint8))
    height, width = (int(v) for v in encoded["size"])
    return RLE(size=(height, width), counts=encoded["counts"].decode("ascii"))


def decode_rle(rle: RLE) -> np.ndarray:
    """Decode a COCO RLE back to a C-ordered (H, W) bool mask."""
    height, width = rle.size
    decoded = coco_mask.decode({"size": [int(height), int(width)], "counts": rle.counts.encode("ascii")})
    return np.ascontiguousarray(decoded, dtype=np.bool_)


def clean_mask(mask: np.ndarray, min_region_area: int) -> np.ndarray:
    """Fill holes and drop islands smaller than ``min_region_area`` pixels, as SAM2's postprocessing does.

    Holes first, then islands (the order of ``SAM2AutomaticMaskGenerator.postprocess_small_regions``); regions
    are 8-connected. Like SAM2, when every island is small the largest one is kept, so a non-empty mask stays
    non-empty. An empty mask is returned as is: SAM2's hole filling would otherwise turn an empty mask on an
    image smaller than the threshold into a full one.
    """
    array = _as_2d_bool(mask)
    if min_region_area <= 0 or not array.any():
        return array.copy()
    filled, _ = remove_small_regions(array, min_region_area, mode="holes")
    return _remove_small_islands(np.asarray(filled, dtype=np.bool_), min_region_area)


def _remove_small_islands(mask: np.ndarray, min_region_area: int) -> np.ndarray:
    """``remove_small_regions(mask, area, mode="islands")`` with the same result, in linear time.

    SAM2's version builds its keep-list with a list membership test per label, which is quadratic in the
    number of islands: a speckled 1080p mask (~130k islands) takes about a minute there and milliseconds
    here. The test suite checks that both agree.
    """
    _, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    sizes = stats[1:, cv2.CC_STAT_AREA]
    keep = sizes >= min_region_area
    if keep.all():
        return mask.copy()  # never hand back the caller's own array
    if not keep.any():
        keep[int(np.argmax(sizes))] = True  # as SAM2: when every island is small, keep the largest
    return np.concatenate(([False], keep))[labels]


def _widen(points: np.ndarray) -> np.ndarray:
    """Turn a degenerate contour (1 or 2 points) into a small convex polygon around the same pixels."""
    r = _WIDEN_HALF_WIDTH
    corners = np.array([[-r, -r], [r, -r], [r, r], [-r, r]], dtype=np.float32)
    cloud = (points.astype(np.float32)[:, None, :] + corners[None, :, :]).reshape(-1, 2)
    return cv2.convexHull(cloud).reshape(-1, 2)


def mask_polygons(mask: np.ndarray, max_contours: int) -> tuple[tuple[float, ...], ...]:
    """Outer contours of a mask as flat ``(x1, y1, x2, y2, ...)`` polygons, largest enclosed area first.

    Only external contours are kept (holes and islands inside holes are dropped; the RLE carries them), with
    OpenCV's CHAIN_APPROX_SIMPLE so straight runs cost two vertices. Each polygon has at least 3 vertices:
    lone pixels and 1-px straight lines are widened by 0.25 px (see ``_widen``), so those vertices may lie up
    to 0.25 px outside the pixel centres but never outside the image's extent. Ties in area (zero-area slivers
    such as bent 1-px lines) are broken by perimeter, longest first. An empty mask gives ``()``.
    """
    if max_contours < 1:
        raise ValueError(f"max_contours must be >= 1, got {max_contours}")
    array = _as_2d_bool(mask)
    if not array.any():
        return ()
    contours, _ = cv2.findContours(array.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    shapes = [c.reshape(-1, 2) for c in contours]
    shapes = [s if len(s) >= 3 else _widen(s) for s in shapes]
    keyed = [
        (float(cv2.contourArea(s.astype(np.float32))), float(cv2.arcLength(s.astype(np.float32), True)), s)
        for s in shapes
    ]
    keyed.sort(key=lambda item: (item[0], item[1]), reverse=True)
    return tuple(tuple(float(v) for v in s.ravel()) for _, _, s in keyed[:max_contours])


def rasterize_polygons(polygons: Sequence[Sequence[float]], height: int, width: int) -> np.ndarray:
    """Draw flat polygons (pixel-centre coordinates) into a (height, width) bool mask, boundary included.

    Each polygon is filled on its own, so overlapping polygons give their union rather than cv2's even-odd
    holes. Coordinates are drawn with 1/16 px precision, which keeps ``mask_polygons`` output exact.
    """
    out = np.zeros((height, width), dtype=np.uint8)
    scale = 1 << _FILL_SHIFT
    for polygon in polygons:
        flat = np.asarray(polygon, dtype=np.float64)
        if flat.ndim != 1 or flat.size < 6 or flat.size % 2:
            raise ValueError(f"a polygon needs an even number (>= 6) of coordinates, got {flat.size}")
        points = np.round(flat.reshape(-1, 2) * scale).astype(np.int32)
        cv2.fillPoly(out, [points], 1, lineType=cv2.LINE_8, shift=_FILL_SHIFT)
    return out.astype(np.bool_)


def mask_bbox(mask: np.ndarray) -> tuple[float, float, float, float]:
    """XYWH box of a mask in SAM2's automatic mask generator convention; ``(0, 0, 0, 0)`` when empty.

    ``(x0, y0, x1 - x0, y1 - y0)`` with ``x1, y1`` inclusive, computed with SAM2's own ``batched_mask_to_box``
    and ``box_xyxy_to_xywh`` so records from FastSAM and SAM2 share one convention. Note that this differs
    from pycocotools' ``toBbox``, whose width and height are one larger.
    """
    array = _as_2d_bool(mask)
    box = box_xyxy_to_xywh(batched_mask_to_box(torch.from_numpy(np.ascontiguousarray(array))))
    x, y, w, h = (float(v) for v in box.tolist())
    return (x, y, w, h)


def _stability(logits: torch.Tensor, mask_threshold: float, offset: float) -> torch.Tensor:
    """SAM2's stability score with 0/0 (nothing above the lower threshold) mapped to 0 instead of NaN."""
    if offset < 0:
        raise ValueError(f"offset must be >= 0, got {offset}")
    scores = calculate_stability_score(logits, mask_threshold, offset).float()
    return torch.nan_to_num(scores, nan=0.0).clamp(0.0, 1.0)


def stability_score(mask_logits: np.ndarray | torch.Tensor, mask_threshold: float = 0.0, offset: float = 1.0) -> float:
    """SAM's stability score of one (H, W) logit map: |logits > t + offset| / |logits > t - offset|.

    The inner mask is contained in the outer one, so the ratio is their IoU; a mask that is empty even at
    the lower threshold scores 0.0.
    """
    logits = torch.as_tensor(mask_logits)
    if logits.ndim != 2:
        raise ValueError(f"expected (H, W) logits, got shape {tuple(logits.shape)}")
    return float(_stability(logits, mask_threshold, offset).item())


def stability_scores(
    mask_logits: torch.Tensor | np.ndarray, mask_threshold: float = 0.0, offset: float = 1.0
) -> list[float]:
    """Stability scores of a batch of (N, H, W) logit maps, in one vectorised pass."""
    logits = torch.as_tensor(mask_logits)
    if logits.ndim != 3:
        raise ValueError(f"expected (N, H, W) logits, got shape {tuple(logits.shape)}")
    return [float(v) for v in _stability(logits, mask_threshold, offset).tolist()]


def build_mask_record(
    mask: np.ndarray,
    *,
    predicted_iou: float,
    stability_score: float,
    max_contours: int,
    post_process: bool,
    min_region_area: int,
) -> MaskRecord | None:
    """Build the wire record of one mask, or ``None`` when nothing is left (the caller drops it).

    The mask is cleaned first when ``post_process`` is set; RLE, polygons, bbox and area are then all taken
    from that same final mask so they cannot disagree.
    """
    final = clean_mask(mask, min_region_area) if post_process else _as_2d_bool(mask)
    area = int(np.count_nonzero(final))
    if area == 0:
        return None
    return MaskRecord(
        rle=encode_rle(final),
        polygons=mask_polygons(final, max_contours),
        bbox=mask_bbox(final),
        area=area,
        predicted_iou=float(predicted_iou),
        stability_score=float(stability_score),
    )
