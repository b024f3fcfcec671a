"""The segmentation engine with the REAL (random-weight) FastSAM and SAM2: fallback rule, prompts, encoding, scaling.

The models are the real architectures loaded from real checkpoint files; nothing here mocks them. Two kinds of
stand-ins appear, each named for what it is: ``Tripwire`` (a model that must never be touched: it proves a code
path did not run a model) and ``ThresholdingFastSAMDouble`` (a geometric double used only by the unit test of the
MEMORY_OPTIMIZATION coordinate mapping, where a real model's random masks would make geometry unknowable).

SAM2 costs 5-10 s per image on CPU, so its runs are counted: 6 in this file (everything mode once, prompted 5x).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch

from pipeline.checkpoints import build_fastsam_checkpoint
from pipeline.errors import (
    InvalidParametersError,
    InvalidPromptError,
    ModelFailedError,
    SegmentationError,
)
from pipeline.masks import decode_rle, mask_bbox
from pipeline.models import FastSAMModel, RawMask, SAM2Model, SAM2Options, configure_offline
from pipeline.segmenter import Segmenter
from pipeline.settings import ModelSettings
from pipeline.types import (
    FallbackReason,
    MaskRecord,
    ModelChoice,
    ModelName,
    Prompts,
    SegmentationResult,
    SegmentParams,
)

# The shared test images are read-only (see conftest); SAM2's transform warns that torch cannot mark such an
# array read-only too. It only reads the image, so the warning is noise here.
pytestmark = pytest.mark.filterwarnings("ignore:The given NumPy array is not writable:UserWarning")

LOW_CONF = 0.005  # random FastSAM finds ~60 masks at this confidence (its best score is ~0.0123)
HIGH_CONF = 0.4  # ... and none at this one
BOX = Prompts(boxes=((40.0, 40.0, 200.0, 180.0),))
FASTSAM_LOW = SegmentParams(model=ModelChoice.FASTSAM, conf=LOW_CONF, mask_post_processing=False)
# Random FastSAM's masks do not depend on the image: at conf 0.005 they are 3 distinct slivers on the right edge,
# at conf 0.002 ~150 distinct anchor-shaped blocks all over it. Prompt tests use the latter, so that a prompt
# arriving at the wrong place (x/y swapped, wrong scale) selects a visibly different mask.
PROMPT_CONF = 0.002
FASTSAM_PROMPTED = SegmentParams(model=ModelChoice.FASTSAM, conf=PROMPT_CONF, mask_post_processing=False)


# --------------------------------------------------------------------------------------------------------------------
# helpers and stand-ins


class Tripwire:
    """Stands in for a model that must NOT be used: any load/predict is counted and raises."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.calls = 0

    def load(self) -> None:
        self.calls += 1
        raise AssertionError(f"{self.name} must not be loaded here")

    def predict(self, *args: Any, **kwargs: Any) -> list[list[RawMask]]:
        self.calls += 1
        raise AssertionError(f"{self.name} must not run here")


class RecordingSAM2:
    """Wraps the real SAM2Model and keeps what it returned, so a Segmenter's records can be checked bit for bit
    against the model's own masks from the very same run (SAM2 is too slow to run twice)."""

    def __init__(self, inner: SAM2Model) -> None:
        self.inner = inner
        self.outputs: list[list[list[RawMask]]] = []

    def load(self) -> None:
        self.inner.load()

    def predict(self, images: list[np.ndarray], prompts: list[Prompts]) -> list[list[RawMask]]:
        out = self.inner.predict(images, prompts)
        self.outputs.append(out)
        return out


def engine(settings: ModelSettings, *, fastsam: Any, sam2: Any) -> Segmenter:
    """A Segmenter over given model objects (real shared ones, tripwires or doubles)."""
    return Segmenter(settings, fastsam=fastsam, sam2=sam2)


def assert_record_consistent(record: MaskRecord, width: int, height: int) -> None:
    """Every field of a record describes the same pixels, inside the image."""
    mask = decode_rle(record.rle)
    assert record.rle.size == (height, width)
    assert mask.shape == (height, width)
    assert int(mask.sum()) == record.area > 0
    x, y, w, h = record.bbox
    assert min(x, y, w, h) >= 0
    assert x + w <= width - 1 and y + h <= height - 1
    assert record.bbox == mask_bbox(mask)
    assert 0.0 <= record.stability_score <= 1.0
    assert math.isfinite(record.predicted_iou)
    assert record.polygons
    for polygon in record.polygons:
        assert len(polygon) >= 6 and len(polygon) % 2 == 0
        xs, ys = np.asarray(polygon[0::2]), np.asarray(polygon[1::2])
        assert xs.min() >= 0 and xs.max() <= width  # COCO coordinates: pixel edges, 0..width
        assert ys.min() >= 0 and ys.max() <= height


def assert_result_consistent(result: SegmentationResult) -> None:
    for record in result.masks:
        assert_record_consistent(record, result.width, result.height)
    if any(r.prompt_index is not None for r in result.masks):  # prompted: one record per prompt, in prompt order
        assert [r.prompt_index for r in result.masks] == list(range(len(result.masks)))
        return
    keys = [(-r.predicted_iou, -r.area) for r in result.masks]
    assert keys == sorted(keys), "records must come best predicted_iou first, then largest"


def raw_key(raw: RawMask) -> tuple[bytes, tuple[int, ...], float, float]:
    return (
        np.ascontiguousarray(raw.mask, dtype=bool).tobytes(),
        raw.mask.shape,
        raw.predicted_iou,
        raw.stability_score,
    )


def record_key(record: MaskRecord) -> tuple[bytes, tuple[int, ...], float, float]:
    mask = decode_rle(record.rle)
    return (mask.tobytes(), mask.shape, record.predicted_iou, record.stability_score)


def garbage_file(path: Path, seed: int = 7) -> Path:
    """Write seeded random bytes: a checkpoint that exists but cannot be unpickled (a real load failure)."""
    path.write_bytes(np.random.default_rng(seed).integers(0, 256, 8192, dtype=np.uint8).tobytes())
    return path


# --------------------------------------------------------------------------------------------------------------------
# module fixtures


@pytest.fixture(scope="module")
def corrupt_fastsam(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return garbage_file(tmp_path_factory.mktemp("corrupt") / "FastSAM-corrupt.pt")


@pytest.fixture(scope="module")
def corrupt_sam2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # The official-style name lets the config be inferred, so the failure is the file's content, not its name.
    return garbage_file(tmp_path_factory.mktemp("corrupt") / "sam2.1_hiera_tiny-corrupt.pt", seed=8)


@pytest.fixture(scope="module")
def random_fastsam_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A RANDOM-weight FastSAM (the architecture of the demo one, before training): its masks do not depend on the
    image and come in predictable numbers at tiny thresholds, which is what the routing, prompt-placement and
    stability tests below are built on. Fidelity, ordering and score tests use the trained demo checkpoint
    (tests/pipeline/test_fidelity.py)."""
    return build_fastsam_checkpoint(tmp_path_factory.mktemp("random") / "FastSAM-random-yolov8n-seg.pt")


@pytest.fixture(scope="module")
def segmenter(segmenter: Segmenter, model_settings: ModelSettings, random_fastsam_path: Path) -> Segmenter:
    """This module's engine: the session's SAM2 with the random FastSAM."""
    return engine(model_settings, fastsam=FastSAMModel(random_fastsam_path, "cpu"), sam2=segmenter.sam2)


@pytest.fixture(scope="module")
def fastsam_raw_noise(segmenter: Segmenter, noise_image: np.ndarray) -> list[RawMask]:
    """FastSAM's own unprompted masks on the noise image, straight from FastSAMModel.predict."""
    (masks,) = segmenter.fastsam.predict([noise_image], [Prompts()], conf=LOW_CONF, iou=0.8, imgsz=640, retina=True)
    assert len(masks) >= 10, "precondition: random FastSAM finds masks at conf 0.005"
    return masks


@pytest.fixture(scope="module")
def fastsam_raw_blocks(segmenter: Segmenter, noise_image: np.ndarray) -> list[RawMask]:
    """FastSAM's unprompted masks at conf 0.002: many distinct blocks, for the prompt tests."""
    (masks,) = segmenter.fastsam.predict([noise_image], [Prompts()], conf=PROMPT_CONF, iou=0.8, imgsz=640, retina=True)
    assert len({m.mask.tobytes() for m in masks}) >= 20, "precondition: many distinct masks at conf 0.002"
    return masks


@contextmanager
def predictor_calls(model: SAM2Model) -> Iterator[list[dict[str, Any]]]:
    """Record the arguments SAM2's real image predictor receives (it still runs): with random weights SAM2's masks
    ignore where the prompt is, so this is how a test sees that prompts arrive in the right place and form."""
    predictor = model._predictor
    real = predictor.predict
    calls: list[dict[str, Any]] = []

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs)
        return real(*args, **kwargs)

    predictor.predict = spy
    try:
        yield calls
    finally:
        del predictor.predict


@dataclass(frozen=True)
class SAM2Run:
    result: SegmentationResult
    raw: list[RawMask]  # what SAM2Model.predict returned in that very run
    calls: list[dict[str, Any]]  # what SAM2's image predictor was called with


@pytest.fixture(scope="module")
def sam2_point_run(segmenter: Segmenter, model_settings: ModelSettings, noise_image: np.ndarray) -> SAM2Run:
    """ONE SAM2 run (model=sam2, one point, no cleanup) shared by four tests."""
    recorder = RecordingSAM2(segmenter.sam2)
    fastsam = Tripwire("FastSAM")
    with predictor_calls(segmenter.sam2) as calls:
        result = engine(model_settings, fastsam=fastsam, sam2=recorder).segment(
            noise_image,
            Prompts(points=((200.0, 80.0),), point_labels=(1,)),
            SegmentParams(model=ModelChoice.SAM2, mask_post_processing=False),
        )
    assert fastsam.calls == 0, "model=sam2 must not touch FastSAM"
    ((raw,),) = recorder.outputs
    return SAM2Run(result, raw, calls)


# --------------------------------------------------------------------------------------------------------------------
# the fallback rule, branch by branch


def test_auto_falls_back_with_no_masks_when_fastsam_finds_nothing(
    segmenter: Segmenter, noise_image: np.ndarray
) -> None:
    """auto + conf 0.4: random FastSAM finds nothing, so SAM2 answers (everything mode) with reason no_masks."""
    result = segmenter.segment(noise_image, params=SegmentParams(conf=HIGH_CONF))
    assert result.model == ModelName.SAM2
    assert result.fallback_reason == FallbackReason.NO_MASKS
    assert result.fallback_detail is not None and f"conf {HIGH_CONF}" in result.fallback_detail
    assert len(result.masks) >= 1
    assert {"fastsam", "sam2"} <= set(result.timings_ms)
    assert_result_consistent(result)


def test_auto_keeps_fastsam_answer_when_it_finds_masks(
    model_settings: ModelSettings, segmenter: Segmenter, noise_image: np.ndarray
) -> None:
    """auto + conf 0.005: FastSAM's masks stand; SAM2 is never touched and no fallback is reported."""
    sam2 = Tripwire("SAM2")
    result = engine(model_settings, fastsam=segmenter.fastsam, sam2=sam2).segment(
        noise_image, params=SegmentParams(conf=LOW_CONF)
    )
    assert result.model == ModelName.FASTSAM
    assert result.fallback_reason is None and result.fallback_detail is None
    assert len(result.masks) >= 1
    assert sam2.calls == 0
    assert_result_consistent(result)


def test_auto_falls_back_with_low_score(segmenter: Segmenter, noise_image: np.ndarray) -> None:
    """auto + conf 0.005 + fallback_min_score 1.0: FastSAM answers the whole-image box (every mask overlaps it) but a
    confidence is always below 1, so SAM2 answers. (BOX itself gets no_masks from the random weights, whose specks
    all lie outside it: see tests/pipeline/test_prompts.py.)"""
    whole = Prompts(boxes=((0.0, 0.0, float(noise_image.shape[1]), float(noise_image.shape[0])),))
    result = segmenter.segment(noise_image, whole, SegmentParams(conf=LOW_CONF, fallback_min_score=1.0))
    assert result.model == ModelName.SAM2
    assert result.fallback_reason == FallbackReason.LOW_SCORE
    assert result.fallback_detail is not None and "fallback_min_score 1.0" in result.fallback_detail
    assert len(result.masks) == 1  # one box prompt: one SAM2 mask
    assert_result_consistent(result)


@pytest.mark.parametrize("broken", ["corrupt", "missing"])
def test_auto_falls_back_when_fastsam_cannot_load(
    broken: str,
    model_settings: ModelSettings,
    segmenter: Segmenter,
    noise_image: np.ndarray,
    corrupt_fastsam: Path,
    tmp_path: Path,
) -> None:
    """A FastSAM checkpoint that is garbage or absent is a real load failure: SAM2 answers with fastsam_error."""
    path = corrupt_fastsam if broken == "corrupt" else tmp_path / "no-such-FastSAM.pt"
    result = engine(model_settings, fastsam=FastSAMModel(path, "cpu"), sam2=segmenter.sam2).segment(noise_image, BOX)
    assert result.model == ModelName.SAM2
    assert result.fallback_reason == FallbackReason.FASTSAM_ERROR
    assert result.fallback_detail is not None
    assert "ModelUnavailableError" in result.fallback_detail and path.name in result.fallback_detail
    assert len(result.masks) == 1
    assert_result_consistent(result)


def test_fastsam_only_fails_when_fastsam_cannot_load(
    model_settings: ModelSettings, noise_image: np.ndarray, corrupt_fastsam: Path
) -> None:
    """model=fastsam allows no fallback: a broken FastSAM is model_failed, and SAM2 is never touched."""
    sam2 = Tripwire("SAM2")
    segmenter = engine(model_settings, fastsam=FastSAMModel(corrupt_fastsam, "cpu"), sam2=sam2)
    with pytest.raises(ModelFailedError) as caught:
        segmenter.segment(noise_image, params=SegmentParams(model=ModelChoice.FASTSAM, conf=LOW_CONF))
    assert caught.value.code == "model_failed"
    assert "FastSAM" in caught.value.message and corrupt_fastsam.name in caught.value.message
    assert sam2.calls == 0


def test_both_models_broken_fails_naming_both(
    model_settings: ModelSettings, noise_image: np.ndarray, corrupt_fastsam: Path, corrupt_sam2: Path
) -> None:
    """auto with both checkpoints corrupt: model_failed, and the message names both failures."""
    segmenter = engine(
        model_settings,
        fastsam=FastSAMModel(corrupt_fastsam, "cpu"),
        sam2=SAM2Model(corrupt_sam2, "cpu", None, SAM2Options()),
    )
    with pytest.raises(ModelFailedError) as caught:
        segmenter.segment(noise_image, BOX)
    message = caught.value.message
    assert "SAM2" in message and corrupt_sam2.name in message
    assert "FastSAM" in message and corrupt_fastsam.name in message


def test_sam2_only_reports_no_fallback(sam2_point_run: SAM2Run) -> None:
    """model=sam2: SAM2 answers, nothing fell back, and FastSAM never ran (see the fixture's tripwire)."""
    result = sam2_point_run.result
    assert result.model == ModelName.SAM2
    assert result.fallback_reason is None and result.fallback_detail is None
    assert "fastsam" not in result.timings_ms


def test_fastsam_only_with_nothing_found_returns_empty(
    model_settings: ModelSettings, segmenter: Segmenter, noise_image: np.ndarray
) -> None:
    """model=fastsam + conf 0.4: an empty FastSAM answer stands; there is no fallback."""
    sam2 = Tripwire("SAM2")
    result = engine(model_settings, fastsam=segmenter.fastsam, sam2=sam2).segment(
        noise_image, params=SegmentParams(model=ModelChoice.FASTSAM, conf=HIGH_CONF)
    )
    assert result.model == ModelName.FASTSAM
    assert result.masks == ()
    assert result.fallback_reason is None
    assert sam2.calls == 0


# --------------------------------------------------------------------------------------------------------------------
# prompts on both models


def _box_choice(masks: list[RawMask], box: tuple[float, float, float, float]) -> int:
    """ultralytics' FastSAM box rule: the mask with the best IoU against the (integer) box."""
    x1, y1, x2, y2 = (int(v) for v in box)
    stack = np.stack([m.mask for m in masks]).astype(np.int64)
    inside = stack[:, y1:y2, x1:x2].sum(axis=(1, 2))
    union = (x2 - x1) * (y2 - y1) + stack.sum(axis=(1, 2)) - inside
    return int(np.argmax(inside / union))


def _tight_box(mask: np.ndarray) -> tuple[float, float, float, float]:
    ys, xs = np.nonzero(mask)
    return (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))


def test_fastsam_box_prompts_select_the_best_mask_per_box(
    segmenter: Segmenter, noise_image: np.ndarray, fastsam_raw_blocks: list[RawMask]
) -> None:
    """Boxes reach FastSAM in image coordinates: each box yields the unprompted mask that best matches it.

    The boxes are drawn tightly around two of FastSAM's own masks, chosen so that a box read with x and y swapped
    would select a different mask: a coordinate mix-up cannot pass unnoticed."""
    raw = fastsam_raw_blocks
    masks = [m.mask for m in raw]
    height, width = noise_image.shape[:2]
    boxes: list[tuple[float, float, float, float]] = []
    for mask in masks:
        x1, y1, x2, y2 = box = _tight_box(mask)
        swapped = (y1, x1, y2, x2)
        if x2 - x1 == y2 - y1 or y2 > width or x2 > height:
            continue
        if any(np.array_equal(mask, masks[_box_choice(raw, b)]) for b in boxes):
            continue
        if np.array_equal(masks[_box_choice(raw, box)], mask) and not np.array_equal(
            masks[_box_choice(raw, swapped)], mask
        ):
            boxes.append(box)
        if len(boxes) == 2:
            break
    assert len(boxes) == 2, "precondition: two masks that their tight boxes select, and their swapped boxes do not"
    result = segmenter.segment(noise_image, Prompts(boxes=tuple(boxes)), FASTSAM_PROMPTED)
    expected = {_box_choice(raw, box) for box in boxes}
    assert result.model == ModelName.FASTSAM
    assert len(result.masks) == 2
    assert Counter(record_key(r) for r in result.masks) == Counter(raw_key(raw[i]) for i in expected)
    assert_result_consistent(result)


def test_fastsam_point_prompts_honour_labels(
    segmenter: Segmenter, noise_image: np.ndarray, fastsam_raw_blocks: list[RawMask]
) -> None:
    """A foreground point keeps the masks under it, a background point (label 0) removes those under it; of those
    left, the point rule (pipeline.prompts) answers with the best predicted_iou, then the smallest."""
    raw = fastsam_raw_blocks
    stack = np.stack([m.mask for m in raw])
    height, width = noise_image.shape[:2]
    # foreground: an off-diagonal pixel (x != y, and (y, x) inside the image too, so a swap would be visible)
    fx, fy = 200, 100
    holding_fg = stack[:, fy, fx]
    assert holding_fg.any() and (holding_fg != stack[:, min(fx, height - 1), min(fy, width - 1)]).any()
    # background: a pixel covered by some, but not all, of the masks holding the foreground point
    candidates = [
        (int(y), int(x)) for y, x in np.argwhere(stack[holding_fg].any(axis=0) & ~stack[holding_fg].all(axis=0))
    ]
    by, bx = candidates[len(candidates) // 2]
    expected = [i for i in range(len(stack)) if holding_fg[i] and not stack[i, by, bx]]
    dropped = [i for i in range(len(stack)) if holding_fg[i] and stack[i, by, bx]]
    assert expected and dropped, "precondition: the background point removes some, not all, foreground masks"
    labelled = Prompts(points=((float(fx), float(fy)), (float(bx), float(by))), point_labels=(1, 0))
    result = segmenter.segment(noise_image, labelled, FASTSAM_PROMPTED)
    best = min(expected, key=lambda i: (-raw[i].predicted_iou, int(stack[i].sum())))
    assert [record_key(r) for r in result.masks] == [raw_key(raw[best])]
    assert_result_consistent(result)
    # without labels both points are foreground: the answer must hold both, so labels really arrive
    both = segmenter.segment(noise_image, Prompts(points=labelled.points), FASTSAM_PROMPTED)
    holding_both = [i for i in range(len(stack)) if stack[i, fy, fx] and stack[i, by, bx]]
    (answer,) = both.masks
    if holding_both:
        assert record_key(answer) in {raw_key(raw[i]) for i in holding_both}
    else:
        assert answer.area == 0


def test_sam2_point_prompt_gives_one_consistent_mask(sam2_point_run: SAM2Run) -> None:
    """A point prompt is one object: SAM2 returns its best of three guesses, as one well-formed record."""
    result = sam2_point_run.result
    assert len(result.masks) == 1
    assert_result_consistent(result)
    (call,) = sam2_point_run.calls
    assert call["point_coords"].tolist() == [[200.0, 80.0]]  # (x, y) in image pixels, as SAM2 expects
    assert call["point_labels"].tolist() == [1]
    assert call.get("box") is None
    assert call["multimask_output"] is True


def test_sam2_two_boxes_give_one_mask_each(segmenter: Segmenter, noise_image: np.ndarray) -> None:
    """Each box prompt is its own object: two boxes reach SAM2 as one (2, 4) batch and give two masks."""
    boxes = ((10.0, 10.0, 120.0, 100.0), (150.0, 100.0, 310.0, 230.0))
    with predictor_calls(segmenter.sam2) as calls:
        result = segmenter.segment(noise_image, Prompts(boxes=boxes), SegmentParams(model=ModelChoice.SAM2))
    assert result.model == ModelName.SAM2
    assert len(result.masks) == 2
    assert_result_consistent(result)
    (call,) = calls
    assert call["box"].tolist() == [list(b) for b in boxes]  # x1, y1, x2, y2 in image pixels
    assert call["point_coords"] is None and call["multimask_output"] is False


# --------------------------------------------------------------------------------------------------------------------
# RLE fidelity: the wire record is the model's mask, bit for bit


def test_fastsam_records_are_the_models_masks_bit_for_bit(
    segmenter: Segmenter, noise_image: np.ndarray, fastsam_raw_noise: list[RawMask]
) -> None:
    """Without cleanup, decoding each RLE gives back exactly FastSAMModel.predict's mask, score and stability."""
    result = segmenter.segment(noise_image, params=FASTSAM_LOW)
    nonempty = [m for m in fastsam_raw_noise if m.mask.any()]
    assert len(result.masks) == len(nonempty)
    assert Counter(record_key(r) for r in result.masks) == Counter(raw_key(m) for m in nonempty)


def test_sam2_record_is_the_models_mask_bit_for_bit(sam2_point_run: SAM2Run) -> None:
    """Same for SAM2 (prompted): the record decodes to the very mask SAM2 returned in that run."""
    result, raw = sam2_point_run.result, sam2_point_run.raw
    assert [record_key(r) for r in result.masks] == [raw_key(m) for m in raw if m.mask.any()]


# --------------------------------------------------------------------------------------------------------------------
# MEMORY_OPTIMIZATION: the models always see the full-size image


class ThresholdingFastSAMDouble:
    """GEOMETRIC TEST DOUBLE for FastSAMModel (same load/predict signature): its 'mask' is the bright pixels of the
    image it is handed, so the geometry of the answer is known. It records the images' shapes and the prompts."""

    def __init__(self) -> None:
        self.shapes: list[tuple[int, ...]] = []
        self.prompts: list[Prompts] = []

    def load(self) -> None:
        pass

    def predict(
        self, images: list[np.ndarray], prompts: list[Prompts], *, conf: float, iou: float, imgsz: int, retina: bool
    ) -> list[list[RawMask]]:
        self.shapes.extend(image.shape for image in images)
        self.prompts.extend(prompts)
        return [[RawMask(mask=image.max(axis=2) > 127, predicted_iou=0.9, stability_score=0.95)] for image in images]


@pytest.mark.parametrize("memory_optimization", [False, True])
def test_models_get_the_full_size_image_and_prompts(model_settings: ModelSettings, memory_optimization: bool) -> None:
    """UNIT test of the engine (geometric double, not a model): a 2000x1500 image and its prompts reach the model
    unchanged whether MEMORY_OPTIMIZATION is on or not (both models resize inside; a resize before them would
    change their answer), and the mask comes back as the model gave it."""
    width, height = 2000, 1500
    image = np.zeros((height, width, 3), dtype=np.uint8)
    cv2.rectangle(image, (400, 300), (1199, 899), (255, 255, 255), thickness=-1)
    settings = model_settings.model_copy(update={"memory_optimization": memory_optimization, "max_inference_side": 512})
    double = ThresholdingFastSAMDouble()
    segmenter = engine(settings, fastsam=double, sam2=Tripwire("SAM2"))
    prompts = Prompts(points=((800.0, 600.0),), point_labels=(1,), boxes=((400.0, 300.0, 1200.0, 900.0),))
    params = SegmentParams(model=ModelChoice.FASTSAM, mask_post_processing=False)
    result = segmenter.segment(image, prompts, params)

    assert double.shapes == [(height, width, 3)]
    (seen,) = double.prompts
    assert seen.empty, "FastSAM runs in everything mode; the prompts select among its masks (pipeline.prompts)"
    assert (result.width, result.height, result.inference_width, result.inference_height) == (2000, 1500, 2000, 1500)
    (record,) = result.masks  # the box selects the drawn rectangle
    assert record.prompt_index == 0
    np.testing.assert_array_equal(decode_rle(record.rle), image[:, :, 0] > 127)
    assert_record_consistent(record, width, height)


@pytest.mark.parametrize("shape", [(240, 320, 3), (300, 200, 3)], ids=["landscape", "portrait-letterboxed"])
def test_fastsam_without_retina_masks_answers_at_image_size(
    shape: tuple[int, int, int], model_settings: ModelSettings, segmenter: Segmenter
) -> None:
    """RETINA_MASKS=false: ultralytics returns masks at the letterboxed network size (padding included); they must
    come back un-padded at the image's size and cover what the full-resolution masks cover."""
    image = np.random.default_rng(3).integers(0, 256, shape, dtype=np.uint8)
    settings = model_settings.model_copy(update={"retina_masks": False})
    params = SegmentParams(model=ModelChoice.FASTSAM, conf=PROMPT_CONF, mask_post_processing=False)
    result = engine(settings, fastsam=segmenter.fastsam, sam2=Tripwire("SAM2")).segment(image, params=params)
    height, width = shape[:2]
    assert result.masks
    assert {r.rle.size for r in result.masks} == {(height, width)}
    assert_result_consistent(result)
    (retina,) = segmenter.fastsam.predict([image], [Prompts()], conf=PROMPT_CONF, iou=0.8, imgsz=640, retina=True)
    full = np.stack([m.mask for m in retina]).reshape(len(retina), -1).astype(np.float32)
    large = [decode_rle(r.rle).reshape(-1).astype(np.float32) for r in result.masks if r.area >= 500]
    assert large
    for mask in large:
        inter = full @ mask
        assert (inter / (full.sum(axis=1) + mask.sum() - inter)).max() >= 0.9


# --------------------------------------------------------------------------------------------------------------------
# hostile input is refused, typed, before any model runs

NAN = float("nan")
_IMG = (240, 320)


@pytest.mark.parametrize(
    ("prompts", "params", "error"),
    [
        pytest.param(Prompts(points=((NAN, 10.0),)), SegmentParams(), InvalidPromptError, id="nan-point"),
        pytest.param(Prompts(points=((10.0, float("inf")),)), SegmentParams(), InvalidPromptError, id="inf-point"),
        pytest.param(Prompts(points=((-1.0, 10.0),)), SegmentParams(), InvalidPromptError, id="negative-x"),
        pytest.param(Prompts(points=((321.0, 10.0),)), SegmentParams(), InvalidPromptError, id="x-past-width"),
        pytest.param(Prompts(points=((10.0, 241.0),)), SegmentParams(), InvalidPromptError, id="y-past-height"),
        pytest.param(
            Prompts(boxes=((50.0, 10.0, 50.0, 40.0),)), SegmentParams(), InvalidPromptError, id="box-x2-equals-x1"
        ),
        pytest.param(
            Prompts(boxes=((60.0, 10.0, 50.0, 40.0),)), SegmentParams(), InvalidPromptError, id="box-x2-below-x1"
        ),
        pytest.param(
            Prompts(boxes=((10.0, 10.0, 400.0, 40.0),)), SegmentParams(), InvalidPromptError, id="box-past-width"
        ),
        pytest.param(Prompts(boxes=((10.0, NAN, 20.0, 40.0),)), SegmentParams(), InvalidPromptError, id="nan-box"),
        pytest.param(
            Prompts(points=((1.0, 1.0), (2.0, 2.0)), point_labels=(1,)),
            SegmentParams(),
            InvalidPromptError,
            id="labels-count-mismatch",
        ),
        pytest.param(Prompts(point_labels=(1,)), SegmentParams(), InvalidPromptError, id="labels-without-points"),
        pytest.param(
            Prompts(points=((1.0, 1.0),), point_labels=(2,)), SegmentParams(), InvalidPromptError, id="label-2"
        ),
        pytest.param(
            Prompts(points=tuple((float(i), 1.0) for i in range(65))),
            SegmentParams(),
            InvalidPromptError,
            id="65-points",
        ),
        pytest.param(
            Prompts(boxes=tuple((0.0, 0.0, 10.0, 10.0) for _ in range(65))),
            SegmentParams(),
            InvalidPromptError,
            id="65-boxes",
        ),
        pytest.param(Prompts(), {"model": "foo"}, InvalidParametersError, id="unknown-model"),
        pytest.param(Prompts(), {"conf": 1.5}, InvalidParametersError, id="conf-1.5"),
        pytest.param(Prompts(), {"conf": NAN}, InvalidParametersError, id="conf-nan"),
        pytest.param(Prompts(), {"iou": -0.1}, InvalidParametersError, id="iou-negative"),
        pytest.param(
            Prompts(),
            {"fallback_min_score": float("inf")},
            InvalidParametersError,
            id="fallback-min-score-inf",
        ),
        pytest.param(Prompts(), {"imgsz": 16}, InvalidParametersError, id="imgsz-16"),
        pytest.param(Prompts(), {"max_contours": 0}, InvalidParametersError, id="max-contours-0"),
    ],
)
def test_invalid_prompts_and_parameters_are_refused_before_any_model(
    model_settings: ModelSettings,
    noise_image: np.ndarray,
    prompts: Prompts,
    params: SegmentParams | dict[str, object],
    error: type[SegmentationError],
) -> None:
    """Each bad request gets its typed error (and code); neither model is loaded or run. Bad parameters are refused
    by the spec as soon as they are given (a dict here, so that construction happens inside the test)."""
    fastsam, sam2 = Tripwire("FastSAM"), Tripwire("SAM2")
    with pytest.raises(error) as caught:
        given = SegmentParams(**params) if isinstance(params, dict) else params
        engine(model_settings, fastsam=fastsam, sam2=sam2).segment(noise_image, prompts, given)
    assert type(caught.value) is error
    assert caught.value.code == error.code
    assert fastsam.calls == 0 and sam2.calls == 0


def test_unknown_model_is_a_parameter_error() -> None:
    """An unknown model name is a parameter error (from the spec), not a ValueError from the enum."""
    with pytest.raises(InvalidParametersError, match="model must be one of auto, fastsam, sam2, got 'foo'"):
        SegmentParams(model="foo")


@pytest.mark.parametrize(
    "image",
    [
        np.zeros(_IMG, dtype=np.uint8),  # grayscale
        np.zeros((*_IMG, 4), dtype=np.uint8),  # RGBA
        np.zeros((*_IMG, 3), dtype=np.float32),  # float RGB
        np.zeros((*_IMG, 3), dtype=np.uint16),  # 16-bit RGB
    ],
    ids=["gray", "rgba", "float32", "uint16"],
)
def test_non_rgb_uint8_images_are_refused(model_settings: ModelSettings, image: np.ndarray) -> None:
    """The engine takes RGB uint8 only; anything else is invalid_parameters before a model sees it."""
    fastsam, sam2 = Tripwire("FastSAM"), Tripwire("SAM2")
    with pytest.raises(InvalidParametersError):
        engine(model_settings, fastsam=fastsam, sam2=sam2).segment(image)
    assert fastsam.calls == 0 and sam2.calls == 0


# --------------------------------------------------------------------------------------------------------------------
# batches


def test_segment_batch_keeps_order_and_isolates_errors(
    segmenter: Segmenter, noise_image: np.ndarray, shapes_image: np.ndarray
) -> None:
    """[ok, ok, invalid] comes back as [result, result, error] in order; batched results equal single ones."""
    params = SegmentParams(conf=LOW_CONF)
    out = segmenter.segment_batch(
        [
            (noise_image, Prompts(), params),
            (shapes_image, Prompts(), params),
            (noise_image, Prompts(points=((NAN, 1.0),)), params),
        ]
    )
    assert [type(x) for x in out] == [SegmentationResult, SegmentationResult, InvalidPromptError]
    for batched, image in zip(out[:2], (noise_image, shapes_image), strict=True):
        assert isinstance(batched, SegmentationResult)
        single = segmenter.segment(image, params=params)
        assert batched.model == single.model == ModelName.FASTSAM
        assert batched.masks and batched.masks == single.masks


def test_batch_of_different_sizes_equals_single_results(segmenter: Segmenter, noise_image: np.ndarray) -> None:
    """Results must not depend on batchmates (dedup caches them by request): images of different sizes batched
    together give what each gives alone. (ultralytics letterboxes a mixed-size batch to a common square shape.)"""
    other = np.random.default_rng(9).integers(0, 256, (300, 200, 3), dtype=np.uint8)
    params = SegmentParams(model=ModelChoice.FASTSAM, conf=LOW_CONF)
    out = segmenter.segment_batch([(noise_image, Prompts(), params), (other, Prompts(), params)])
    for batched, image in zip(out, (noise_image, other), strict=True):
        assert isinstance(batched, SegmentationResult)
        assert batched.masks == segmenter.segment(image, params=params).masks


# --------------------------------------------------------------------------------------------------------------------
# stability score: computed from FastSAM's logits, not a constant


def _scaled_fastsam(source: Path, target: Path, exponent: int) -> Path:
    """Save FastSAM with its mask-coefficient convs (the last, activation-free layer of each cv4 branch) scaled by
    2**exponent: mask logits (coefficients @ prototypes) scale exactly by that factor, signs (hence masks and
    boxes and scores) are unchanged, and SAM's stability at offset 1 becomes the original's at offset 2**-exponent,
    which can only grow. (Scaling proto.cv3.conv instead does not scale logits: BN and SiLU follow it.)"""
    configure_offline()
    from pipeline._torchvision_cpu import ensure_torchvision_ops

    ensure_torchvision_ops()
    from ultralytics import FastSAM

    model = FastSAM(str(source))
    head = model.model.model[-1]
    with torch.no_grad():
        for branch in head.cv4:
            branch[-1].weight.mul_(2.0**exponent)
            branch[-1].bias.mul_(2.0**exponent)
    model.save(str(target))
    return target


@pytest.fixture(scope="module")
def sharpened_fastsam(random_fastsam_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    directory = tmp_path_factory.mktemp("sharpened")
    source = random_fastsam_path
    return {k: _scaled_fastsam(source, directory / f"FastSAM-logits-x2e{k}.pt", k) for k in (14, 16)}


def test_fastsam_stability_is_computed_from_logits(
    model_settings: ModelSettings,
    segmenter: Segmenter,
    noise_image: np.ndarray,
    fastsam_raw_noise: list[RawMask],
    sharpened_fastsam: dict[int, Path],
) -> None:
    """Same masks, same scores, sharper logits: the stability score must rise (it is ~0 on the random weights)."""
    original = segmenter.segment(noise_image, params=FASTSAM_LOW)
    sharp = engine(model_settings, fastsam=FastSAMModel(sharpened_fastsam[16], "cpu"), sam2=Tripwire("SAM2")).segment(
        noise_image, params=FASTSAM_LOW
    )
    assert Counter((r.rle.counts, r.predicted_iou) for r in sharp.masks) == Counter(
        (r.rle.counts, r.predicted_iou) for r in original.masks
    )
    assert np.mean([r.stability_score for r in original.masks]) < 0.05
    assert np.mean([r.stability_score for r in sharp.masks]) > 0.9

    # per mask, in FastSAM's own order: stability never decreases as the logits are scaled up
    ladder = [fastsam_raw_noise] + [
        FastSAMModel(sharpened_fastsam[k], "cpu").predict(
            [noise_image], [Prompts()], conf=LOW_CONF, iou=0.8, imgsz=640, retina=True
        )[0]
        for k in (14, 16)
    ]
    assert len({len(rung) for rung in ladder}) == 1
    for masks in zip(*ladder, strict=True):
        assert all(np.array_equal(masks[0].mask, m.mask) for m in masks[1:])
        scores = [m.stability_score for m in masks]
        assert scores == sorted(scores), scores


def test_fastsam_stability_follows_its_mask_through_prompt_selection(
    noise_image: np.ndarray, sharpened_fastsam: dict[int, Path]
) -> None:
    """Prompt selection drops rows; each kept mask must still carry its own stability (not another row's)."""
    model = FastSAMModel(sharpened_fastsam[14], "cpu")  # x2**14: stabilities spread over (0, 1]
    kwargs: dict[str, Any] = {"conf": PROMPT_CONF, "iou": 0.8, "imgsz": 640, "retina": True}
    (everything,) = model.predict([noise_image], [Prompts()], **kwargs)
    assert len({round(m.stability_score, 6) for m in everything}) > 5, "precondition: varied stabilities"
    points = ((200.0, 100.0),)  # inside some of the masks, not all
    (chosen,) = model.predict([noise_image], [Prompts(points=points)], **kwargs)
    assert 0 < len(chosen) < len(everything)
    pairs = Counter((m.mask.tobytes(), m.stability_score) for m in everything)
    for mask in chosen:
        assert (mask.mask.tobytes(), mask.stability_score) in pairs
