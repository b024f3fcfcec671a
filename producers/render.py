"""Pictures of results: masks drawn over their image, and contact sheets of several results.

People judge a segmentation by looking at it; numbers (area, scores) do not show a mask that covers the wrong
object. :func:`render_overlay` paints each mask from its lossless RLE (not the polygons, which drop holes) in a
colour of its own from a fixed palette, so the same result always gives the same picture, outlines it, and can draw
its box and its ``predicted_iou/stability_score``. Everything is drawn with OpenCV primitives and its built-in
Hershey font: no font files, no network (ultralytics' plotting downloads a font on first use).

``segpipe render`` draws results saved by ``segpipe results --format json``::

    segpipe results --format json --request-id 3f2a... > result.json
    segpipe render --image photo.jpg --result result.json -o overlay.png
    segpipe render --sheet sheet.png photo.jpg:result.json other.png:other.json

The image must be the one that was sent (the worker reports masks in its pixel coordinates); it is decoded with the
worker's own decoder, so EXIF orientation matches.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from pycocotools import mask as coco_mask

from pipeline.errors import SegmentationError
from pipeline.types import RLE
from schemas import SegmentResultMessage, result_from_dict

__all__ = [
    "LABEL_HEIGHT",
    "PALETTE",
    "contact_sheet",
    "load_results",
    "main",
    "render_overlay",
    "save_overlays",
]

#: Mask colours (RGB), in mask order (best mask first), repeated past the end. Kelly's colours of maximum contrast,
#: without white and black, which would vanish on bright or dark pictures.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (255, 179, 0),
    (128, 62, 117),
    (255, 104, 0),
    (166, 189, 215),
    (193, 0, 32),
    (206, 162, 98),
    (129, 112, 102),
    (0, 125, 52),
    (246, 118, 142),
    (0, 83, 138),
    (255, 122, 92),
    (83, 55, 122),
    (255, 142, 0),
    (179, 40, 81),
    (244, 200, 0),
    (127, 24, 13),
    (147, 170, 0),
    (89, 51, 21),
    (241, 58, 19),
    (35, 44, 22),
)

#: Height in pixels of the caption strip under each tile of a contact sheet.
LABEL_HEIGHT = 24

_FONT = cv2.FONT_HERSHEY_SIMPLEX
_SHEET_BACKGROUND = (24, 24, 24)
_ERROR_COLOUR = (220, 30, 30)
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def _decode_rle(rle: RLE) -> np.ndarray:
    """A result's COCO RLE as an (H, W) bool mask, with pycocotools alone (no torch: a client tool starts fast)."""
    height, width = rle.size
    decoded = coco_mask.decode({"size": [int(height), int(width)], "counts": rle.counts.encode("ascii")})
    return decoded.astype(bool)


def _as_rgb(image: np.ndarray) -> np.ndarray:
    """A uint8 (H, W, 3) copy of a grey, RGB or RGBA picture, so drawing never touches the caller's array."""
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {array.dtype}")
    if array.ndim == 2:
        return np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim == 3 and array.shape[2] == 1:
        return np.repeat(array, 3, axis=2)
    if array.ndim == 3 and array.shape[2] in (3, 4):
        return np.ascontiguousarray(array[:, :, :3]).copy()
    raise ValueError(f"expected an (H, W), (H, W, 3) or (H, W, 4) image, got shape {array.shape}")


def _text_colour(background: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black on light colours, white on dark ones (Rec. 601 luma), so captions stay readable on any palette entry."""
    red, green, blue = background
    return (0, 0, 0) if 0.299 * red + 0.587 * green + 0.114 * blue > 140 else (255, 255, 255)


def _font_for(height: int, width: int) -> tuple[float, int]:
    """Font scale and stroke for a picture: legible on a thumbnail, not huge on a photo."""
    scale = min(1.2, max(0.35, max(height, width) / 1200))
    return scale, max(1, round(scale * 1.5))


def _label(
    canvas: np.ndarray, text: str, x: int, y: int, colour: tuple[int, int, int], scale: float, stroke: int
) -> None:
    """Draw ``text`` on a filled box of ``colour`` whose top-left corner is near (x, y), kept inside the picture."""
    height, width = canvas.shape[:2]
    (text_w, text_h), baseline = cv2.getTextSize(text, _FONT, scale, stroke)
    box_h = text_h + baseline + 2
    left = min(max(x, 0), max(width - text_w - 2, 0))
    top = y - box_h if y - box_h >= 0 else y  # above the point when there is room, else below it
    top = min(max(top, 0), max(height - box_h, 0))
    cv2.rectangle(canvas, (left, top), (left + text_w + 2, top + box_h), colour, thickness=cv2.FILLED)
    cv2.putText(canvas, text, (left + 1, top + text_h + 1), _FONT, scale, _text_colour(colour), stroke, cv2.LINE_AA)


def render_overlay(
    image: np.ndarray,
    result: SegmentResultMessage,
    *,
    show_boxes: bool = True,
    show_scores: bool = True,
    alpha: float = 0.5,
) -> np.ndarray:
    """The image (RGB) with the result's masks painted over it; the input array is not modified.

    Mask ``i`` (best first) gets ``PALETTE[i % len(PALETTE)]``; where masks overlap, the better mask's colour is
    shown, blended once with the image at ``alpha`` (0: masks invisible, 1: opaque), and every mask is outlined in
    its colour. ``show_boxes`` draws each bbox (SAM2's inclusive ``[x, y, w, h]``); ``show_scores`` writes
    ``predicted_iou/stability_score`` at its top-left corner. An error result gives the image with a banner naming
    the error code. Raises ``ValueError`` when the masks do not have the image's size (the wrong image, or one
    decoded with another orientation).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be between 0 and 1, got {alpha}")
    canvas = _as_rgb(image)
    height, width = canvas.shape[:2]
    scale, stroke = _font_for(height, width)
    if result.error is not None:
        _label(canvas, f"error: {result.error.code}", 0, 0, _ERROR_COLOUR, scale, stroke)
        return canvas

    masks = [_decode_rle(mask.rle) for mask in result.masks]
    for index, pixels in enumerate(masks):
        if pixels.shape != (height, width):
            raise ValueError(
                f"mask {index} of result {result.request_id} is {pixels.shape[1]}x{pixels.shape[0]} but the image "
                f"is {width}x{height}: render the image that was sent"
            )
    # One owner per pixel (the best mask covering it), so overlaps are not blended twice into mud.
    owner = np.full((height, width), -1, dtype=np.int32)
    for index in reversed(range(len(masks))):
        owner[masks[index]] = index
    covered = owner >= 0
    if covered.any():
        colours = np.array(PALETTE, dtype=np.float32)[owner[covered] % len(PALETTE)]
        blended = (1.0 - alpha) * canvas[covered].astype(np.float32) + alpha * colours
        canvas[covered] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)

    outline = max(1, round(max(height, width) / 600))
    for index in reversed(range(len(masks))):
        colour = PALETTE[index % len(PALETTE)]
        contours, _ = cv2.findContours(masks[index].astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(canvas, contours, -1, colour, thickness=1)
        record = result.masks[index]
        x, y, w, h = (round(float(v)) for v in record.bbox)
        if show_boxes:
            cv2.rectangle(canvas, (x, y), (x + w, y + h), colour, thickness=outline)
        if show_scores:
            text = f"{_score(record.predicted_iou)}/{_score(record.stability_score)}"
            _label(canvas, text, x, y, colour, scale, stroke)
    return canvas


def _score(value: float) -> str:
    return f"{value:.2f}" if math.isfinite(value) else "nan"


def _resize_to_width(tile: np.ndarray, width: int) -> np.ndarray:
    height = max(1, round(tile.shape[0] * width / tile.shape[1]))
    interpolation = cv2.INTER_AREA if width < tile.shape[1] else cv2.INTER_LINEAR
    return cv2.resize(tile, (width, height), interpolation=interpolation)


def _fit_text(text: str, width: int, scale: float, stroke: int) -> str:
    """``text`` cut (with "...") to fit ``width`` pixels: Hershey fonts have no ellipsis glyph."""
    if cv2.getTextSize(text, _FONT, scale, stroke)[0][0] <= width:
        return text
    while text and cv2.getTextSize(text + "...", _FONT, scale, stroke)[0][0] > width:
        text = text[:-1]
    return text + "..."


def contact_sheet(tiles: list[np.ndarray], labels: list[str], *, columns: int = 4, tile_width: int = 320) -> np.ndarray:
    """Tiles side by side in a grid, each scaled to ``tile_width`` with its label underneath (RGB).

    The grid has ``min(columns, len(tiles))`` columns; every cell is ``tile_width`` wide and as tall as the tallest
    scaled tile plus :data:`LABEL_HEIGHT`, so the sheet is ``rows * cell_height`` by ``columns * tile_width``
    pixels. Tiles are top-aligned on a dark background; labels too long for a cell are cut.
    """
    if not tiles:
        raise ValueError("a contact sheet needs at least one tile")
    if len(labels) != len(tiles):
        raise ValueError(f"{len(tiles)} tiles but {len(labels)} labels")
    if columns < 1 or tile_width < 16:
        raise ValueError(f"columns must be >= 1 and tile_width >= 16, got {columns} and {tile_width}")
    scaled = [_resize_to_width(_as_rgb(tile), tile_width) for tile in tiles]
    cell_height = max(tile.shape[0] for tile in scaled) + LABEL_HEIGHT
    cols = min(columns, len(scaled))
    rows = math.ceil(len(scaled) / cols)
    sheet = np.empty((rows * cell_height, cols * tile_width, 3), dtype=np.uint8)
    sheet[:] = _SHEET_BACKGROUND
    scale, stroke = 0.45, 1
    for index, (tile, label) in enumerate(zip(scaled, labels, strict=True)):
        top, left = (index // cols) * cell_height, (index % cols) * tile_width
        sheet[top : top + tile.shape[0], left : left + tile_width] = tile
        text = _fit_text(label, tile_width - 8, scale, stroke)
        baseline_y = top + cell_height - (LABEL_HEIGHT - cv2.getTextSize("Ag", _FONT, scale, stroke)[0][1]) // 2
        cv2.putText(sheet, text, (left + 4, baseline_y), _FONT, scale, (235, 235, 235), stroke, cv2.LINE_AA)
    return sheet


def _caption(result: SegmentResultMessage) -> str:
    """What a contact-sheet tile says about its result: where it came from, and what the pipeline made of it."""
    name = result.source or result.request_id
    if result.error is not None:
        return f"{name}: error {result.error.code}"
    fallback = f" ({result.fallback_reason})" if result.fallback_reason is not None else ""
    cached = ", cached" if result.cached else ""
    return f"{name}: {result.model}{fallback}, {len(result.masks)} masks{cached}"


def _write_png(path: Path, image: np.ndarray) -> Path:
    Image.fromarray(image).save(path, format="PNG")
    return path


def save_overlays(pairs: list[tuple[np.ndarray, SegmentResultMessage]], out_dir: Path) -> list[Path]:
    """One overlay PNG per (image, result) and a ``contact_sheet.png`` of them all, in ``out_dir``.

    Files are ``NN-<request id>.png`` in the given order (the number keeps them in order and unique); the returned
    list holds them in that order, then the sheet's path (no sheet when ``pairs`` is empty).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    tiles: list[np.ndarray] = []
    for index, (image, result) in enumerate(pairs):
        overlay = render_overlay(image, result)
        name = _SAFE_NAME.sub("_", result.request_id)[:80] or "result"
        paths.append(_write_png(out_dir / f"{index:02d}-{name}.png", overlay))
        tiles.append(overlay)
    if tiles:
        sheet = contact_sheet(tiles, [_caption(result) for _, result in pairs])
        paths.append(_write_png(out_dir / "contact_sheet.png", sheet))
    return paths


# --- command -------------------------------------------------------------------------------------------------------


class RenderError(Exception):
    """A problem with the command's input, reported on stderr with exit status 1."""


def load_results(path: Path) -> list[SegmentResultMessage]:
    """Results from a file ``segpipe results --format json`` wrote: one JSON object, a JSON array, or JSON lines."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RenderError(f"cannot read {path}: {exc}") from None
    try:
        parsed = json.loads(text)
        records = parsed if isinstance(parsed, list) else [parsed]
    except ValueError:
        try:
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
        except ValueError as exc:
            raise RenderError(f"{path} is neither JSON nor JSON lines: {exc}") from None
    results = []
    for number, record in enumerate(records, start=1):
        try:
            results.append(result_from_dict(record))
        except SegmentationError as exc:
            raise RenderError(
                f"{path}, result {number}: {exc.message} (was it printed with --no-masks? masks need their RLE)"
            ) from None
    if not results:
        raise RenderError(f"{path} holds no result")
    return results


def _pick(results: list[SegmentResultMessage], path: Path, image: Path, request_id: str | None) -> SegmentResultMessage:
    """The result to draw: the one asked for, the only one, or the latest whose source names the image."""
    if request_id is not None:
        chosen = [r for r in results if r.request_id == request_id]
        if not chosen:
            raise RenderError(f"no result for request {request_id} in {path}")
        return chosen[-1]
    if len(results) == 1:
        return results[0]
    named = [r for r in results if r.source in (image.name, str(image))]
    if named:
        return named[-1]
    raise RenderError(f"{path} holds {len(results)} results and none has source {image.name!r}: pass --request-id")


def _load_image(path: Path) -> np.ndarray:
    """The image as the worker saw it: same decoder, so EXIF orientation and channel order match the masks."""
    from pipeline.image_io import decode_image

    try:
        return decode_image(path.read_bytes())
    except OSError as exc:
        raise RenderError(f"cannot read {path}: {exc}") from None
    except SegmentationError as exc:
        raise RenderError(f"{path}: {exc.message}") from None


def _overlay(image_path: Path, result: SegmentResultMessage, args: argparse.Namespace) -> np.ndarray:
    try:
        return render_overlay(
            _load_image(image_path),
            result,
            show_boxes=not args.no_boxes,
            show_scores=not args.no_scores,
            alpha=args.alpha,
        )
    except ValueError as exc:
        raise RenderError(f"{image_path}: {exc}") from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segpipe render",
        description="Draw results (from `segpipe results --format json`) over their images.",
        epilog="examples:\n"
        "  segpipe render --image photo.jpg --result result.json -o overlay.png\n"
        "  segpipe render --sheet sheet.png photo.jpg:result.json other.png:other.json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("pairs", nargs="*", metavar="IMAGE:RESULT", help="with --sheet: image and result file pairs")
    parser.add_argument("--image", type=Path, help="the image that was sent")
    parser.add_argument("--result", type=Path, help="its result: JSON object, array or JSON lines")
    parser.add_argument("-o", "--output", type=Path, help="overlay PNG to write")
    parser.add_argument("--request-id", help="which result of --result to draw (default: the only one)")
    parser.add_argument("--sheet", type=Path, metavar="PNG", help="write a contact sheet of IMAGE:RESULT pairs")
    parser.add_argument("--columns", type=int, default=4, help="contact sheet columns (default 4)")
    parser.add_argument("--tile-width", type=int, default=320, help="contact sheet tile width (default 320)")
    parser.add_argument("--alpha", type=float, default=0.5, help="mask opacity, 0 to 1 (default 0.5)")
    parser.add_argument("--no-boxes", action="store_true", help="do not draw boxes")
    parser.add_argument("--no-scores", action="store_true", help="do not write predicted_iou/stability_score")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``segpipe render``; returns the exit status (1 on bad arguments or unreadable input)."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.sheet is not None:
            if args.image or args.result or args.output:
                raise RenderError("--sheet takes IMAGE:RESULT pairs, not --image/--result/-o")
            if not args.pairs:
                raise RenderError("--sheet needs at least one IMAGE:RESULT pair")
            tiles, labels = [], []
            for pair in args.pairs:
                image_text, sep, result_text = pair.rpartition(":")
                if not sep or not image_text or not result_text:
                    raise RenderError(f"expected IMAGE:RESULT, got {pair!r}")
                image_path, result_path = Path(image_text), Path(result_text)
                result = _pick(load_results(result_path), result_path, image_path, None)
                tiles.append(_overlay(image_path, result, args))
                labels.append(_caption(result))
            try:
                sheet = contact_sheet(tiles, labels, columns=args.columns, tile_width=args.tile_width)
            except ValueError as exc:
                raise RenderError(str(exc)) from None
            _write_png(args.sheet, sheet)
            print(args.sheet)
            return 0
        if args.pairs:
            raise RenderError("IMAGE:RESULT pairs go with --sheet")
        if args.image is None or args.result is None or args.output is None:
            raise RenderError("give --image, --result and -o (or --sheet with IMAGE:RESULT pairs)")
        result = _pick(load_results(args.result), args.result, args.image, args.request_id)
        _write_png(args.output, _overlay(args.image, result, args))
        print(args.output)
        return 0
    except (RenderError, OSError) as exc:
        print(f"segpipe render: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
