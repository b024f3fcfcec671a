"""Masks answer prompts: one mask per box in box order on both models, one per set of points, each with its
``prompt_index``; a FastSAM mask that does not touch its box never counts (pipeline.prompts states the rule).

The selection rule is checked on constructed masks (pure logic, exact expectations); the engine's contract on the
real checkpoints, whatever their weights: the tiny random ones here, trained ones later.
"""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.masks import decode_rle
from pipeline.models import RawMask
from pipeline.prompts import prompt_count, select_for_prompts
from pipeline.segmenter import Segmenter
from pipeline.types import FallbackReason, ModelChoice, ModelName, Prompts, SegmentParams

H, W = 60, 80


def _mask(x1: int, y1: int, x2: int, y2: int, score: float = 0.5) -> RawMask:
    """A rectangle of pixels [x1, x2) x [y1, y2)."""
    mask = np.zeros((H, W), dtype=bool)
    mask[y1:y2, x1:x2] = True
    return RawMask(mask=mask, predicted_iou=score, stability_score=0.9)


# --- the rule, on constructed masks ----------------------------------------------------------------------------


def test_a_mask_outside_its_box_never_answers_it() -> None:
    """The reported case: the only mask lies outside the box; ultralytics returned it (IoU 0), the rule does not."""
    far = _mask(75, 0, 78, 1, score=0.99)
    assert select_for_prompts([far], Prompts(boxes=((5.0, 5.0, 40.0, 40.0),))) == [None]


def test_each_box_gets_its_best_overlapping_mask_in_box_order() -> None:
    left, right, big = _mask(0, 0, 20, 20), _mask(50, 30, 70, 50), _mask(0, 0, 80, 60, score=0.9)
    boxes = ((52.0, 32.0, 68.0, 48.0), (0.0, 0.0, 19.0, 19.0), (0.0, 0.0, 80.0, 60.0), (30.0, 0.0, 40.0, 10.0))
    chosen = select_for_prompts([left, right, big], Prompts(boxes=boxes))
    # box 3 touches only the big mask: an overlap, however poor, is an answer; none at all is not
    assert chosen == [right, left, big, big]


def test_two_boxes_may_share_a_mask_and_both_keep_their_answer() -> None:
    blob = _mask(10, 10, 50, 50)
    assert select_for_prompts([blob], Prompts(boxes=((10.0, 10.0, 30.0, 30.0), (30.0, 30.0, 50.0, 50.0)))) == [
        blob,
        blob,
    ]


def test_a_box_mask_must_hold_the_boxes_foreground_points_and_no_background_point() -> None:
    small, large = _mask(10, 10, 30, 30), _mask(0, 0, 60, 50, score=0.3)
    box = ((10.0, 10.0, 30.0, 30.0),)
    assert select_for_prompts([small, large], Prompts(boxes=box)) == [small]
    # a foreground point inside the box but outside the small mask rules the small one out
    with_point = Prompts(points=((12.0, 35.0),), boxes=((10.0, 10.0, 30.0, 40.0),))
    assert select_for_prompts([small, large], with_point) == [large]
    # a background point inside the large mask rules it out
    background = Prompts(points=((55.0, 45.0),), point_labels=(0,), boxes=box)
    assert select_for_prompts([small, large], background) == [small]


def test_points_select_the_best_scored_mask_holding_every_foreground_point_and_no_background_point() -> None:
    """The point rule: candidates contain every foreground point and no background point; best predicted_iou wins,
    then the smaller area."""
    inner, outer, other = _mask(10, 10, 30, 30, 0.6), _mask(0, 0, 60, 60, 0.8), _mask(40, 0, 80, 20, 0.95)
    masks = [inner, outer, other]
    assert select_for_prompts(masks, Prompts(points=((15.0, 15.0),))) == [outer]
    assert select_for_prompts(masks, Prompts(points=((15.0, 15.0), (50.0, 50.0)), point_labels=(1, 0))) == [inner]
    assert select_for_prompts(masks, Prompts(points=((15.0, 15.0), (75.0, 5.0)))) == [None]  # no mask holds both
    tie = [_mask(0, 0, 40, 40, 0.7), _mask(5, 5, 25, 25, 0.7)]
    assert select_for_prompts(tie, Prompts(points=((10.0, 10.0),))) == [tie[1]]


def test_prompt_count() -> None:
    assert prompt_count(Prompts()) == 0
    assert prompt_count(Prompts(points=((1.0, 1.0), (2.0, 2.0)))) == 1
    assert prompt_count(Prompts(points=((1.0, 1.0),), boxes=((0.0, 0.0, 5.0, 5.0),) * 3)) == 3


# --- the engine's contract, on the real checkpoints ------------------------------------------------------------

BOXES = ((10.0, 10.0, 120.0, 100.0), (200.0, 20.0, 310.0, 200.0), (60.0, 150.0, 160.0, 230.0))


def _overlaps(record_mask: np.ndarray, box: tuple[float, float, float, float]) -> bool:
    x1, y1, x2, y2 = (int(v) for v in box)
    return bool(record_mask[y1:y2, x1:x2].any())


@pytest.mark.parametrize(
    "params",
    [
        SegmentParams(model=ModelChoice.SAM2),
        SegmentParams(model=ModelChoice.FASTSAM, conf=0.005),
        SegmentParams(model=ModelChoice.AUTO, conf=0.005),
    ],
    ids=["sam2", "fastsam", "auto"],
)
def test_n_boxes_give_exactly_one_mask_per_box_in_box_order(
    segmenter: Segmenter, noise_image: np.ndarray, params: SegmentParams
) -> None:
    result = segmenter.segment(noise_image, Prompts(boxes=BOXES), params)
    assert [mask.prompt_index for mask in result.masks] == [0, 1, 2]
    if result.model == ModelName.FASTSAM:
        for mask, box in zip(result.masks, BOXES, strict=True):  # a FastSAM answer touches its box, or is empty
            assert mask.area == 0 or _overlaps(decode_rle(mask.rle), box)
        if params.model == ModelChoice.AUTO:
            assert all(mask.area > 0 for mask in result.masks)  # auto never lets FastSAM leave a box unanswered
    else:
        assert result.model == ModelName.SAM2


def test_boxes_fastsam_cannot_answer_go_to_sam2_and_the_detail_names_them(
    segmenter: Segmenter, noise_image: np.ndarray
) -> None:
    """At conf 0.99 FastSAM has no mask at all (random or trained weights alike on noise): every box is unanswered."""
    result = segmenter.segment(noise_image, Prompts(boxes=BOXES), SegmentParams(conf=0.99))
    assert result.model == ModelName.SAM2
    assert result.fallback_reason == FallbackReason.NO_MASKS
    assert result.fallback_detail is not None
    assert "no mask overlapping box 0, 1, 2 of 3" in result.fallback_detail


def test_a_point_set_gets_one_mask_with_prompt_index_0(segmenter: Segmenter, noise_image: np.ndarray) -> None:
    points = Prompts(points=((100.0, 80.0), (110.0, 90.0)), point_labels=(1, 1))
    for params in (SegmentParams(model=ModelChoice.SAM2), SegmentParams(model=ModelChoice.FASTSAM, conf=0.005)):
        result = segmenter.segment(noise_image, points, params)
        assert [mask.prompt_index for mask in result.masks] == [0]
        mask = result.masks[0]
        if result.model == ModelName.FASTSAM and mask.area:
            pixels = decode_rle(mask.rle)
            assert pixels[80, 100] and pixels[90, 110]  # FastSAM's choice holds every foreground point


def test_everything_mode_masks_answer_no_prompt(segmenter: Segmenter, noise_image: np.ndarray) -> None:
    result = segmenter.segment(noise_image, Prompts(), SegmentParams(model=ModelChoice.FASTSAM, conf=0.005))
    assert result.masks and all(mask.prompt_index is None for mask in result.masks)
