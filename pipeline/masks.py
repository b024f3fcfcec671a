"""From a model's boolean mask to the wire's :class:`~pipeline.types.MaskRecord`.

Every field of a record is derived from one final mask (after the optional cleanup), so the RLE, the polygons,
the bbox and the area always describe the same pixels. The heavy lifting is left to the libraries SAM2 itself
relies on: pycocotools for RLE, ``sam2.utils.amg`` for small-region cleanup, boxes and stability scores, and
OpenCV for contours; this module only adapts shapes, dtypes and edge cases.

Coordinate conventions: polygons are COCO's: continuous coordinates in which pixel ``mask[y, x]`` covers the square
``[x, x + 1] x [y, y + 1]``, each polygon running along the outer edges of its pixels, so pycocotools renders the
pixels back. The bbox is SAM2's automatic mask generator's: ``(x0, y0, x1 - x0, y1 - y0)`` with ``x1, y1`` the last
(inclusive) column and row of the mask, so ``w``/``h`` are one less than the pixel extent and a one-pixel mask has
``w == h == 0``.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch
from pycocotools import mask as coco_mask
from sam2.utils.amg import calculate_stability_score, remove_small_regions

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
        "Outer contours of the mask as COCO polygons, one per connected region, largest region (in pixels) first "
        "and at most MAX_CONTOURS, each a flat [x1, y1, x2, y2, ...] list along the outer edges of the region's "
        "pixels (pixel [y, x] covers [x, x+1] x [y, y+1]), so pycocotools draws the region back; holes are not "
        "represented (use the RLE for exact pixels)."
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
    "prompt_index": (
        "The prompt this mask answers: its box's index in boxes, 0 for a set of points without boxes, "
        "null in everything mode."
    ),
}


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
    bounds = _bounds(array)
    assert bounds is not None
    crop, (top, left) = _clean_window(array, bounds, min_region_area)
    return _paste(crop, top, left, array.shape)


Bounds = tuple[int, int, int, int]  # first row, last row, first column, last column (inclusive)


def _bounds(array: np.ndarray) -> Bounds | None:
    rows = np.flatnonzero(array.any(axis=1))
    if not rows.size:
        return None
    cols = np.flatnonzero(array.any(axis=0))
    return int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])


def _paste(crop: np.ndarray, top: int, left: int, shape: tuple[int, ...], order: str = "C") -> np.ndarray:
    full = np.zeros(shape, dtype=crop.dtype, order=order)  # type: ignore[call-overload]
    full[top : top + crop.shape[0], left : left + crop.shape[1]] = crop
    return full


def _clean_window(array: np.ndarray, bounds: Bounds, min_region_area: int) -> tuple[np.ndarray, tuple[int, int]]:
    """:func:`clean_mask` of a non-empty mask with box ``bounds``, worked out on that box plus a margin: the cleaned
    crop and its (top, left) offset. Equal to SAM2's full-frame ``remove_small_regions`` (holes, then islands), in time
    proportional to the mask's box rather than the image.

    Why a window is exact: background outside the box can only reach the box through the margin, so a background
    region that does not touch the margin is a hole wholly inside the window, with the same area as in the full
    frame; one that touches the margin is at least as large in the full frame as in the window, so when it reaches
    the threshold inside the window it is kept either way. Only a margin region below the threshold inside the
    window could be a hole SAM2 fills (a tiny image, a mask cutting a corner off), and then the full frame is used.
    Filled holes lie inside the box, so islands are the same in the window too.
    """
    height, width = array.shape
    y0, y1, x0, x1 = bounds
    # A margin of one pixel, widened to even coordinates: OpenCV labels 8-connected regions in 2x2 blocks, and an
    # aligned window keeps their order, which decides SAM2's tie between equally small islands (the first is kept).
    top, left = max(y0 - 1, 0) & ~1, max(x0 - 1, 0) & ~1
    crop = array[top : min(y1 + 2, height), left : min(x1 + 2, width)]
    _, labels, stats, _ = cv2.connectedComponentsWithStats((~crop).astype(np.uint8), connectivity=8)
    small = stats[:, cv2.CC_STAT_AREA] < min_region_area
    small[0] = False  # label 0 is the mask itself
    margin = np.concatenate(
        [
            labels[0] if top < y0 else labels[:0, 0],
            labels[-1] if y1 + 1 < height else labels[:0, 0],
            labels[:, 0] if left < x0 else labels[:0, 0],
            labels[:, -1] if x1 + 1 < width else labels[:0, 0],
        ]
    )
    if small[margin].any():
        filled, _ = remove_small_regions(array, min_region_area, mode="holes")
        return _remove_small_islands(np.asarray(filled, dtype=np.bool_), min_region_area), (0, 0)
    filled = crop | small[labels] if small.any() else crop
    return _remove_small_islands(filled, min_region_area), (top, left)


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


def _pixel_edge_contours(mask: np.ndarray) -> list[np.ndarray]:
    """Outer contours of a (cropped) mask along pixel edges, as (N, 2) int arrays of pixel-corner coordinates.

    OpenCV traces pixel centres. Tracing the mask upsampled 2x instead and mapping each traced sub-pixel to its
    nearest pixel corner, ``(p + 1) // 2``, turns every step into a move along a pixel edge (or no move), so each
    polygon is the exact outline of its pixels' squares: what COCO means by a polygon.
    """
    doubled = np.repeat(np.repeat(mask.astype(np.uint8), 2, axis=0), 2, axis=1)
    traced, _ = cv2.findContours(doubled, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    contours = []
    for contour in traced:
        corners = (contour.reshape(-1, 2) + 1) // 2
        step = np.diff(corners, axis=0, append=corners[:1])
        corners, step = corners[step.any(axis=1)], step[step.any(axis=1)]  # drop repeated corners
        before = np.roll(step, 1, axis=0)
        turn = (step[:, 0] * before[:, 1] - step[:, 1] * before[:, 0]) != 0
        contours.append(corners[turn] if turn.any() else corners)  # keep corners where the outline turns
    return contours


def mask_polygons(mask: np.ndarray, max_contours: int) -> tuple[tuple[float, ...], ...]:
    """Outer contours of a mask as COCO polygons: flat ``(x1, y1, x2, y2, ...)`` along pixel edges.

    Coordinates are continuous image coordinates in which pixel ``mask[y, x]`` covers the square ``[x, x + 1] x
    [y, y + 1]`` (COCO's convention), and each polygon follows the edges of its region's outermost pixels, so
    pycocotools (``frPyObjects`` + ``decode``) draws the region's pixels back. One polygon per 8-connected region,
    at most ``max_contours``, largest region (in pixels) first; ties go to the longer outline. Holes are not
    represented and regions inside holes are dropped (the RLE carries both). An empty mask gives ``()``.
    """
    if max_contours < 1:
        raise ValueError(f"max_contours must be >= 1, got {max_contours}")
    array = _as_2d_bool(mask)
    bounds = _bounds(array)
    if bounds is None:
        return ()
    y0, y1, x0, x1 = bounds
    return _crop_polygons(array[y0 : y1 + 1, x0 : x1 + 1], y0, x0, max_contours)


def _crop_polygons(crop: np.ndarray, top: int, left: int, max_contours: int) -> tuple[tuple[float, ...], ...]:
    """:func:`mask_polygons` of a mask tightly cropped to its box, whose top-left pixel is (top, left)."""
    _, labels, stats, _ = cv2.connectedComponentsWithStats(crop.astype(np.uint8), connectivity=8)
    keyed = []
    for corners in _pixel_edge_contours(crop):
        # The corner right of and below the top-left-most corner touches that region's first pixel.
        first = corners[np.lexsort((corners[:, 0], corners[:, 1]))[0]]
        pixels = int(stats[labels[first[1], first[0]], cv2.CC_STAT_AREA])
        keyed.append((pixels, float(cv2.arcLength(corners.astype(np.float32), True)), corners + np.array([left, top])))
    keyed.sort(key=lambda item: (item[0], item[1]), reverse=True)
    return tuple(tuple(float(v) for v in corners.ravel()) for _, _, corners in keyed[:max_contours])


def rasterize_polygons(polygons: Sequence[Sequence[float]], height: int, width: int) -> np.ndarray:
    """Draw COCO polygons into a (height, width) bool mask with pycocotools, as any COCO reader would.

    Each polygon is drawn on its own and the results are merged, so overlapping polygons give their union.
    """
    flat = [list(map(float, polygon)) for polygon in polygons]
    for polygon in flat:
        if len(polygon) < 6 or len(polygon) % 2:
            raise ValueError(f"a polygon needs an even number (>= 6) of coordinates, got {len(polygon)}")
    if not flat:
        return np.zeros((height, width), dtype=np.bool_)
    rles = coco_mask.frPyObjects(flat, height, width)
    return np.ascontiguousarray(coco_mask.decode(coco_mask.merge(rles)), dtype=np.bool_)


def mask_bbox(mask: np.ndarray) -> tuple[float, float, float, float]:
    """XYWH box of a mask in SAM2's automatic mask generator convention; ``(0, 0, 0, 0)`` when empty.

    ``(x0, y0, x1 - x0, y1 - y0)`` with ``x1, y1`` inclusive: what SAM2's ``batched_mask_to_box`` and
    ``box_xyxy_to_xywh`` give (the tests compare them), read from the mask's occupied rows and columns without a
    torch round trip. Records from FastSAM and SAM2 share this convention. Note that this differs from
    pycocotools' ``toBbox``, whose width and height are one larger.
    """
    bounds = _bounds(_as_2d_bool(mask))
    return (0.0, 0.0, 0.0, 0.0) if bounds is None else _xywh(bounds)


def _xywh(bounds: Bounds) -> tuple[float, float, float, float]:
    y0, y1, x0, x1 = bounds
    return (float(x0), float(y0), float(x1 - x0), float(y1 - y0))


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
    array = _as_2d_bool(mask)
    bounds = _bounds(array)
    if bounds is None:
        return None
    # Everything but the RLE is worked out on the mask's box: the cost follows the mask's size, not the image's.
    if post_process and min_region_area > 0:
        window, (top, left) = _clean_window(array, bounds, min_region_area)
        inner = _bounds(window)
        assert inner is not None  # cleaning never empties a non-empty mask
        bounds = (inner[0] + top, inner[1] + top, inner[2] + left, inner[3] + left)
        crop = window[inner[0] : inner[1] + 1, inner[2] : inner[3] + 1]
    else:
        crop = array[bounds[0] : bounds[1] + 1, bounds[2] : bounds[3] + 1]
    y0, _, x0, _ = bounds
    encoded = coco_mask.encode(_paste(crop.view(np.uint8), y0, x0, array.shape, order="F"))
    return MaskRecord(
        rle=RLE(size=(array.shape[0], array.shape[1]), counts=encoded["counts"].decode("ascii")),
        polygons=_crop_polygons(crop, y0, x0, max_contours),
        bbox=_xywh(bounds),
        area=int(np.count_nonzero(crop)),
        predicted_iou=float(predicted_iou),
        stability_score=float(stability_score),
    )
