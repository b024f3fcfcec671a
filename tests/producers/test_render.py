"""Pictures of results: colours land in the masks and nowhere else, boxes at the bbox, sheets of the stated size."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from pipeline.masks import build_mask_record
from pipeline.types import MaskRecord, ModelName, SegmentationResult
from producers.render import LABEL_HEIGHT, PALETTE, contact_sheet, main, render_overlay, save_overlays
from producers.results import result_to_json_dict
from schemas import ErrorInfo, SegmentResultMessage

HEIGHT, WIDTH = 120, 160
GREY = 90


def picture() -> np.ndarray:
    """A flat grey picture: any drawn pixel differs from it."""
    return np.full((HEIGHT, WIDTH, 3), GREY, dtype=np.uint8)


def disk(cx: int, cy: int, radius: int) -> np.ndarray:
    mask = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    cv2.circle(mask, (cx, cy), radius, 1, thickness=cv2.FILLED)
    return mask.astype(bool)


def record(mask: np.ndarray, iou: float = 0.91, stability: float = 0.87) -> MaskRecord:
    built = build_mask_record(
        mask, predicted_iou=iou, stability_score=stability, max_contours=3, post_process=False, min_region_area=0
    )
    assert built is not None
    return built


def result_of(*masks: np.ndarray, request_id: str = "req-1", source: str | None = None) -> SegmentResultMessage:
    core = SegmentationResult(
        masks=tuple(record(mask) for mask in masks),
        model=ModelName.FASTSAM,
        fallback_reason=None,
        fallback_detail=None,
        width=WIDTH,
        height=HEIGHT,
        inference_width=WIDTH,
        inference_height=HEIGHT,
    )
    return SegmentResultMessage.ok(request_id, core, image_sha256=None, worker_id="w", source=source)


# Two disks, far apart, and a point far from both (and from their boxes and score labels).
LEFT = disk(40, 60, 22)
RIGHT = disk(118, 70, 25)
FAR = (110, 5)  # (y, x): bottom-left corner area


def test_each_mask_is_coloured_and_the_rest_untouched() -> None:
    image = picture()
    out = render_overlay(image, result_of(LEFT, RIGHT))
    assert out.shape == (HEIGHT, WIDTH, 3) and out.dtype == np.uint8
    assert np.array_equal(image, picture()), "the input array is not modified"
    left, right = out[60, 40], out[70, 118]
    assert not np.array_equal(left, image[60, 40]) and not np.array_equal(right, image[70, 118])
    assert not np.array_equal(left, right), "distinct colours per mask"
    expected = np.rint(0.5 * GREY + 0.5 * np.array(PALETTE[0], dtype=np.float64)).astype(np.uint8)
    assert np.array_equal(left, expected), "the best mask gets the first palette colour, blended at alpha"
    assert np.array_equal(out[FAR], image[FAR]), "a pixel far from every mask is unchanged"
    # Outside the masks only boxes and labels may change: a region far from both stays as it was.
    assert np.array_equal(out[100:, :10], image[100:, :10])


def test_overlaps_show_the_better_mask_and_alpha_is_respected() -> None:
    best = disk(60, 60, 20)
    worse = disk(70, 60, 20)  # overlaps best around x = 60..80
    out = render_overlay(picture(), result_of(best, worse), show_boxes=False, show_scores=False, alpha=1.0)
    assert tuple(out[60, 65]) == PALETTE[0], "the overlap shows the better (first) mask, opaque at alpha 1"
    assert tuple(out[60, 85]) == PALETTE[1]
    clear = render_overlay(picture(), result_of(best), show_boxes=False, show_scores=False, alpha=0.0)
    assert np.array_equal(clear[60, 60], picture()[60, 60]), "alpha 0 leaves the inside as it was"
    with pytest.raises(ValueError, match="alpha"):
        render_overlay(picture(), result_of(best), alpha=1.5)


def test_boxes_are_drawn_at_the_bbox() -> None:
    result = result_of(LEFT)
    x, y, w, h = (round(v) for v in result.masks[0].bbox)
    assert not LEFT[y, x], "a disk does not cover its bbox corner"
    bare = render_overlay(picture(), result, show_boxes=False, show_scores=False)
    boxed = render_overlay(picture(), result, show_boxes=True, show_scores=False)
    assert np.array_equal(bare[y, x], picture()[y, x])
    for corner in ((y, x), (y, x + w), (y + h, x), (y + h, x + w)):
        assert tuple(boxed[corner]) == PALETTE[0], f"box corner {corner}"
    assert np.array_equal(boxed[y + h // 2, x + w // 2], bare[y + h // 2, x + w // 2]), "the box is not filled"


def test_scores_are_written_near_the_box() -> None:
    result = result_of(RIGHT)
    quiet = render_overlay(picture(), result, show_scores=False)
    labelled = render_overlay(picture(), result, show_scores=True)
    changed = np.argwhere((quiet != labelled).any(axis=2))
    assert len(changed) > 0
    x, y, _, _ = result.masks[0].bbox
    assert changed[:, 0].max() <= y + 30 and changed[:, 1].min() >= min(x, WIDTH - 80) - 1, "label at the box corner"


def test_error_result_and_grey_input_and_wrong_size() -> None:
    error = SegmentResultMessage.failure("bad", ErrorInfo("invalid_image", "nope"), worker_id="w")
    out = render_overlay(picture()[:, :, 0], error)
    assert out.shape == (HEIGHT, WIDTH, 3)
    assert not np.array_equal(out[:8, :40], picture()[:8, :40]), "a banner names the error"
    assert np.array_equal(out[FAR], picture()[FAR])
    with pytest.raises(ValueError, match="render the image that was sent"):
        render_overlay(np.zeros((10, 10, 3), np.uint8), result_of(LEFT))


def test_contact_sheet_dimensions_and_placement() -> None:
    tiles = [np.full((100, 200, 3), 200, np.uint8), np.full((50, 100), 10, np.uint8), picture()]
    sheet = contact_sheet(
        tiles, ["wide", "grey", "a label far too long to fit in a narrow tile at all"], columns=2, tile_width=64
    )
    # The tiles scale to 64 x 32, 64 x 32 and 64 x 48 (width x height): the tallest sets every cell's height.
    cell_height = 48 + LABEL_HEIGHT
    assert sheet.shape == (2 * cell_height, 2 * 64, 3)
    assert tuple(sheet[5, 5]) == (200, 200, 200) and tuple(sheet[5, 64 + 5]) == (10, 10, 10)
    assert tuple(sheet[cell_height + 5, 5]) == (GREY, GREY, GREY)
    one = contact_sheet([picture()], ["only"], columns=4, tile_width=320)
    assert one.shape == (round(HEIGHT * 320 / WIDTH) + LABEL_HEIGHT, 320, 3), "fewer tiles than columns: narrower"
    with pytest.raises(ValueError):
        contact_sheet([picture()], [])


def test_save_overlays_writes_one_png_per_result_and_a_sheet(tmp_path: Path) -> None:
    pairs = [(picture(), result_of(LEFT, request_id="a/1")), (picture(), result_of(RIGHT, request_id="b"))]
    paths = save_overlays(pairs, tmp_path / "out")
    assert [p.name for p in paths] == ["00-a_1.png", "01-b.png", "contact_sheet.png"]
    for path in paths:
        with Image.open(path) as opened:
            assert opened.format == "PNG"
    with Image.open(paths[0]) as first:
        assert first.size == (WIDTH, HEIGHT)
        assert np.array_equal(np.asarray(first.convert("RGB")), render_overlay(picture(), pairs[0][1]))


def write_inputs(tmp_path: Path) -> tuple[Path, Path]:
    image_path = tmp_path / "photo.png"
    Image.fromarray(picture()).save(image_path)
    result_path = tmp_path / "result.json"
    result_path.write_text(json.dumps(result_to_json_dict(result_of(LEFT, RIGHT, source="photo.png"))))
    return image_path, result_path


def test_cli_writes_an_overlay_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image_path, result_path = write_inputs(tmp_path)
    out = tmp_path / "overlay.png"
    assert main(["--image", str(image_path), "--result", str(result_path), "-o", str(out)]) == 0
    with Image.open(out) as opened:
        assert opened.format == "PNG" and opened.size == (WIDTH, HEIGHT)
        pixels = np.asarray(opened.convert("RGB"))
    assert not np.array_equal(pixels[60, 40], picture()[60, 40])
    assert capsys.readouterr().out.strip() == str(out)


def test_cli_picks_a_result_from_json_lines_and_makes_a_sheet(tmp_path: Path) -> None:
    image_path, _ = write_inputs(tmp_path)
    lines = tmp_path / "results.jsonl"
    lines.write_text(
        "\n".join(
            json.dumps(result_to_json_dict(result_of(m, request_id=rid))) for m, rid in ((LEFT, "x"), (RIGHT, "y"))
        )
    )
    out = tmp_path / "y.png"
    assert main(["--image", str(image_path), "--result", str(lines), "-o", str(out), "--request-id", "y"]) == 0
    with Image.open(out) as opened:
        pixels = np.asarray(opened.convert("RGB"))
    assert np.array_equal(pixels[60, 40], picture()[60, 40]) and not np.array_equal(pixels[70, 118], picture()[70, 118])
    assert main(["--image", str(image_path), "--result", str(lines), "-o", str(out)]) == 1, "two results: which?"

    sheet = tmp_path / "sheet.png"
    single = tmp_path / "single.json"
    single.write_text(json.dumps(result_to_json_dict(result_of(LEFT))))
    assert main(["--sheet", str(sheet), f"{image_path}:{single}", f"{image_path}:{single}", "--tile-width", "100"]) == 0
    with Image.open(sheet) as opened:
        assert opened.size == (200, round(HEIGHT * 100 / WIDTH) + LABEL_HEIGHT)


def test_cli_explains_unusable_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image_path, _ = write_inputs(tmp_path)
    no_masks = tmp_path / "no-masks.json"
    no_masks.write_text(json.dumps(result_to_json_dict(result_of(LEFT), masks=False)))
    assert main(["--image", str(image_path), "--result", str(no_masks), "-o", str(tmp_path / "x.png")]) == 1
    assert "--no-masks" in capsys.readouterr().err
    small = tmp_path / "small.png"
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(small)
    _, result_path = write_inputs(tmp_path)
    assert main(["--image", str(small), "--result", str(result_path), "-o", str(tmp_path / "x.png")]) == 1
    assert "render the image that was sent" in capsys.readouterr().err
