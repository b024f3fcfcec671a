"""Fidelity: with cleanup off, segpipe's masks are the models' own, bit for bit.

The reference is always the libraries called directly — ``ultralytics.FastSAM(path).predict`` (retina masks) and
sam2's ``SAM2AutomaticMaskGenerator`` / ``SAM2ImagePredictor`` built with ``build_sam2(config, path)`` — never the
project's path. Covered: everything mode on a large image (no downscaling), a 4096 x 4096 image, prompts, the
MEMORY_OPTIMIZATION mode, batches (no image lost to ultralytics' NMS time limit) and the first call of a fresh
process. The checkpoints are the demo ones: FastSAM trained on shapes, SAM2 with scaled logits.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from pipeline.masks import decode_rle
from pipeline.models import SAM2Model, SAM2Options, _import_torch, configure_offline, infer_sam2_config
from pipeline.segmenter import Segmenter
from pipeline.settings import ModelSettings
from pipeline.synthetic import make_scene
from pipeline.types import ModelChoice, Prompts, SegmentParams

REPO_ROOT = Path(__file__).resolve().parents[2]
NATIVE = SegmentParams(model=ModelChoice.FASTSAM, conf=0.4, iou=0.8, imgsz=1024, mask_post_processing=False)
# The demo FastSAM is weaker at imgsz 1024 than at its training size: a lower conf keeps several masks to compare.
SEVERAL = NATIVE.model_copy(update={"conf": 0.1})

Pair = tuple[float, bytes]


def _fastsam_pairs(results: list[Any]) -> list[list[Pair]]:
    """(confidence, mask bytes) of every detection, per image, from ultralytics Results."""
    out = []
    for result in results:
        if result.masks is None:
            out.append([])
            continue
        masks = result.masks.data.bool().cpu().numpy()
        out.append([(float(c), m.tobytes()) for c, m in zip(result.boxes.conf.tolist(), masks, strict=True) if m.any()])
    return out


def _record_pairs(result: Any) -> list[Pair]:
    return [(r.predicted_iou, decode_rle(r.rle).tobytes()) for r in result.masks]


@pytest.fixture(scope="module")
def reference_fastsam(demo_checkpoints: tuple[Path, Path]) -> Iterator[Any]:
    """ultralytics' FastSAM on the same file, warmed up once so its predictor is built (ultralytics changes torch's
    thread count while building it; the count is put back so both sides run with the same threads)."""
    configure_offline()
    torch_ = _import_torch()
    from ultralytics import FastSAM

    threads = torch_.get_num_threads()
    model = FastSAM(str(demo_checkpoints[0]))
    model.predict(np.zeros((64, 64, 3), np.uint8), device="cpu", imgsz=64, verbose=False)
    torch_.set_num_threads(threads)
    yield model
    torch_.set_num_threads(threads)


def _reference(model: Any, images: list[np.ndarray], **kwargs: Any) -> list[list[Pair]]:
    kwargs = {"conf": 0.4, "iou": 0.8, "imgsz": 1024, "retina_masks": True, **kwargs}
    bgr = [image[:, :, ::-1] for image in images]  # ultralytics reads numpy images as BGR
    return _fastsam_pairs(model.predict(bgr, device="cpu", verbose=False, save=False, **kwargs))


def _scene_rgb(seed: int, size: tuple[int, int], shapes: tuple[int, int] = (3, 8)) -> np.ndarray:
    image = make_scene(seed, size=size, shapes=shapes, grey=False).image
    return image


# --------------------------------------------------------------------------------------------------------------------
# everything mode: native at full size, MEMORY_OPTIMIZATION or not


@pytest.mark.parametrize("memory_optimization", [False, True], ids=["default", "memory-optimization"])
def test_fastsam_large_image_is_native(
    model_settings: ModelSettings, reference_fastsam: Any, memory_optimization: bool
) -> None:
    """2000 x 1500 at product defaults (iou 0.8, imgsz 1024, retina; conf 0.1): the same masks and scores as
    ultralytics, bit for bit, largest score first — whether or not MEMORY_OPTIMIZATION is on (FastSAM's native
    path already builds full-size masks in bounded chunks, so the mode changes nothing there)."""
    image = _scene_rgb(11, (2000, 1500))
    settings = model_settings.model_copy(update={"memory_optimization": memory_optimization})
    result = Segmenter(settings).segment(image, params=SEVERAL)
    (expected,) = _reference(reference_fastsam, [image], conf=SEVERAL.conf)
    assert len(expected) >= 3, "precondition: several masks to compare"
    assert (result.inference_width, result.inference_height) == (2000, 1500)
    assert sorted(_record_pairs(result)) == sorted(expected)
    scores = [r.predicted_iou for r in result.masks]
    assert scores == sorted(scores, reverse=True)


def test_fastsam_4096_image_is_native(segmenter: Segmenter, reference_fastsam: Any) -> None:
    """The largest side the product accepts at default limits: still the model's own masks, at full size."""
    image = _scene_rgb(12, (4096, 4096), shapes=(2, 3))
    result = segmenter.segment(image, params=SEVERAL)
    (expected,) = _reference(reference_fastsam, [image], conf=SEVERAL.conf)
    assert expected, "precondition: something found"
    assert sorted(_record_pairs(result)) == sorted(expected)


@pytest.fixture(scope="module")
def reference_sam2(demo_checkpoints: tuple[Path, Path]) -> Any:
    _import_torch()
    from sam2.build_sam import build_sam2

    path = demo_checkpoints[1]
    return build_sam2(infer_sam2_config(path), str(path), device="cpu")


def _generator_records(model: Any, image: np.ndarray, settings: ModelSettings) -> list[tuple[float, float, bytes]]:
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

    generator = SAM2AutomaticMaskGenerator(
        model,
        points_per_side=settings.sam2_points_per_side,
        points_per_batch=settings.sam2_points_per_batch,
        pred_iou_thresh=settings.sam2_pred_iou_thresh,
        stability_score_thresh=settings.sam2_stability_score_thresh,
        output_mode="binary_mask",
    )
    with torch.inference_mode():
        records = generator.generate(image)
    return [(r["predicted_iou"], r["stability_score"], r["segmentation"].tobytes()) for r in records]


def test_sam2_everything_is_native(
    segmenter: Segmenter, model_settings: ModelSettings, reference_sam2: Any, shapes_image: np.ndarray
) -> None:
    """SAM2's automatic mask generator on the full image with the same settings: the same masks, scores and
    stability scores (the scores describe the raw masks, as in SAM2's own output)."""
    result = segmenter.segment(shapes_image, params=SegmentParams(model=ModelChoice.SAM2, mask_post_processing=False))
    expected = _generator_records(reference_sam2, np.ascontiguousarray(shapes_image), model_settings)
    assert expected, "precondition: the scaled-logit SAM2 gives masks"
    got = [(r.predicted_iou, r.stability_score, decode_rle(r.rle).tobytes()) for r in result.masks]
    assert sorted(got) == sorted(expected)


def test_sam2_memory_optimization_stays_within_iou(
    model_settings: ModelSettings, segmenter: Segmenter, shapes_image: np.ndarray
) -> None:
    """MEMORY_OPTIMIZATION above max_inference_side batches fewer points; every mask keeps IoU >= 0.98 with the
    native one (same logits, same upsampling, same threshold: in practice identical)."""
    options = SAM2Options(
        points_per_side=model_settings.sam2_points_per_side,
        points_per_batch=model_settings.sam2_points_per_batch,
        pred_iou_thresh=model_settings.sam2_pred_iou_thresh,
        stability_score_thresh=model_settings.sam2_stability_score_thresh,
        memory_optimization=True,
        max_inference_side=128,
    )
    saving = SAM2Model(model_settings.sam_model_path, "cpu", None, options)
    assert saving._points_per_batch(*shapes_image.shape[:2]) < options.points_per_batch  # the mode is really on
    (native,) = segmenter.sam2.predict([np.ascontiguousarray(shapes_image)], [Prompts()])
    (saved,) = saving.predict([np.ascontiguousarray(shapes_image)], [Prompts()])
    assert native and len(saved) == len(native)
    by_score = sorted(native, key=lambda m: -m.predicted_iou), sorted(saved, key=lambda m: -m.predicted_iou)
    for a, b in zip(*by_score, strict=True):
        assert (a.mask & b.mask).sum() / (a.mask | b.mask).sum() >= 0.98


# --------------------------------------------------------------------------------------------------------------------
# prompts


@pytest.mark.parametrize(
    "prompts",
    [
        Prompts(boxes=((10.0, 20.0, 130.0, 160.0),)),
        Prompts(points=((230.0, 70.0),), point_labels=(1,)),
    ],
    ids=["box", "point"],
)
def test_fastsam_prompts_are_native(
    segmenter: Segmenter, reference_fastsam: Any, shapes_image: np.ndarray, prompts: Prompts
) -> None:
    """A prompt's FastSAM mask is one of ultralytics' own everything-mode masks, bit for bit with its score: the
    prompt only selects among them (by the rule of pipeline.prompts, tested in test_prompts.py, which differs from
    ultralytics' where that one answers with a mask that misses the box or with every mask holding a point)."""
    image = np.ascontiguousarray(shapes_image)
    result = segmenter.segment(image, prompts, NATIVE.model_copy(update={"conf": 0.05}))
    (everything,) = _reference(reference_fastsam, [image], conf=0.05)
    (record,) = result.masks
    assert record.prompt_index == 0
    assert record.area > 0, "precondition: the prompt selects a mask"
    assert _record_pairs(result)[0] in everything


def test_sam2_point_prompt_is_native(segmenter: Segmenter, reference_sam2: Any, shapes_image: np.ndarray) -> None:
    """A point gives SAM2's best of its three guesses, as SAM2ImagePredictor returns it."""
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    image = np.ascontiguousarray(shapes_image)
    point = (70.0, 200.0)
    predictor = SAM2ImagePredictor(reference_sam2)
    with torch.inference_mode():
        predictor.set_image(image)
        masks, scores, _ = predictor.predict(point_coords=np.array([point]), point_labels=np.array([1]))
    best = int(np.argmax(scores))
    params = SegmentParams(model=ModelChoice.SAM2, mask_post_processing=False)
    (record,) = segmenter.segment(image, Prompts(points=(point,), point_labels=(1,)), params).masks
    assert np.array_equal(decode_rle(record.rle), masks[best].astype(bool))
    assert record.predicted_iou == pytest.approx(float(scores[best]), abs=0)


# --------------------------------------------------------------------------------------------------------------------
# batches never lose an image


class _SlowClock:
    """Stands in for the ``time`` module inside ultralytics' NMS: every reading is 1,000 s after the last, so its
    time limit (2 s + 0.05 s per image) is always exceeded after the first image of a batch."""

    def __init__(self) -> None:
        self.now = 0.0

    def time(self) -> float:
        self.now += 1000.0
        return self.now


def test_batch_never_loses_an_image_to_the_nms_time_limit(
    segmenter: Segmenter, reference_fastsam: Any, noise_image: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch at a conf that leaves thousands of candidate boxes equals the images run one by one, bit for bit,
    even when NMS is past ultralytics' time limit; ultralytics itself (the control) drops the batch's tail."""
    from ultralytics.utils import nms

    candidates: list[int] = []
    original = nms.non_max_suppression

    def counting(prediction: Any, conf_thres: float, *args: Any, **kwargs: Any) -> Any:
        scores = (prediction[0] if isinstance(prediction, (list, tuple)) else prediction)[:, 4:5]
        candidates.extend(int(n) for n in (scores.amax(1) > conf_thres).sum(-1))
        return original(prediction, conf_thres, *args, **kwargs)

    monkeypatch.setattr(nms, "non_max_suppression", counting)
    monkeypatch.setattr(nms, "time", _SlowClock())
    # Noise, not scenes: the trained checkpoint leaves only ~100 candidates above 0.001 on a clean scene.
    images = [np.ascontiguousarray(noise_image), np.ascontiguousarray(noise_image[::-1]), np.roll(noise_image, 97, 1)]
    kwargs = {"conf": 0.001, "iou": 0.8, "imgsz": 640, "retina": True}
    batched = segmenter.fastsam.predict(images, [Prompts()] * 3, **kwargs)
    assert min(candidates) >= 1000, f"precondition: thousands of candidate boxes per image, got {candidates}"
    singles = [segmenter.fastsam.predict([image], [Prompts()], **kwargs)[0] for image in images]
    assert all(singles), "precondition: every image has masks"
    for batch_masks, single_masks in zip(batched, singles, strict=True):
        assert [(m.predicted_iou, m.mask.tobytes()) for m in batch_masks] == [
            (m.predicted_iou, m.mask.tobytes()) for m in single_masks
        ]
    control = _reference(reference_fastsam, images, conf=0.001, iou=0.8, imgsz=640)
    assert control[0] and not control[-1], "control: ultralytics' own NMS limit drops the end of the batch"


# --------------------------------------------------------------------------------------------------------------------
# the first call of a fresh process


def test_first_call_equals_second_in_a_fresh_process(demo_checkpoints: tuple[Path, Path]) -> None:
    """ultralytics picks its own thread count while building its predictor; segpipe builds it at load (a real
    predict on a tiny image) with the thread count fixed, so call 1 and call 2 give the same masks, bit for bit."""
    code = (
        "import hashlib, numpy as np\n"
        "from pipeline.models import FastSAMModel\n"
        "from pipeline.synthetic import make_scene\n"
        "from pipeline.types import Prompts\n"
        f"model = FastSAMModel({str(demo_checkpoints[0])!r}, 'cpu')\n"
        "image = np.random.default_rng(7).integers(0, 256, (240, 320, 3), dtype=np.uint8)\n"
        "for _ in range(2):\n"
        "    (masks,) = model.predict([image], [Prompts()], conf=0.01, iou=0.8, imgsz=640, retina=True)\n"
        "    digest = hashlib.sha256(b''.join(m.mask.tobytes() for m in masks)).hexdigest()\n"
        "    print(len(masks), digest)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "TORCH_NUM_THREADS")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    first, second = done.stdout.strip().splitlines()[-2:]
    assert int(first.split()[0]) >= 20, "precondition: enough masks for a thread change to show"
    assert first == second
