"""The segmentation engine: an RGB image plus prompts and parameters in, a list of masks out.

The fallback rule (also in the README):

1. ``model=fastsam``: FastSAM only. If it raises, the request fails (``model_failed``); if it finds nothing,
   the result has no masks.
2. ``model=sam2``: SAM2 only; ``fallback_reason`` stays empty, since nothing fell back.
3. ``model=auto`` (default): FastSAM first. SAM2 answers instead when FastSAM
   - raises or cannot be loaded (out of memory included) -> ``fastsam_error``,
   - finds no mask (after cleanup) -> ``no_masks``; with prompts: leaves any prompt unanswered by the rule of
     :mod:`pipeline.prompts` (a box no mask touches...) -> ``no_masks``, the detail naming the boxes,
   - finds masks but its best predicted_iou is below ``fallback_min_score`` -> ``low_score``.
   If SAM2 then fails too, the request fails with ``model_failed`` naming both errors; if SAM2 finds nothing,
   its empty answer stands.

With prompts every model gives exactly one mask per prompt (one per box in box order, one for a set of points),
each with its ``prompt_index``; a prompt without an answer gets an empty mask, so indices never shift.

The engine knows nothing of Kafka or Redis: the worker calls :meth:`Segmenter.segment_batch`.
"""

from __future__ import annotations

import functools
import logging
import math
import numbers
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from pipeline.errors import (
    InvalidParametersError,
    InvalidPromptError,
    ModelFailedError,
    ModelUnavailableError,
    SegmentationError,
)
from pipeline.masks import build_mask_record, encode_rle
from pipeline.models import FastSAMModel, RawMask, SAM2Model, SAM2Options, resolve_device
from pipeline.prompts import prompt_count, select_for_prompts
from pipeline.sam2_cache import EmbeddingCache
from pipeline.settings import ModelSettings
from pipeline.timing import ms_since
from pipeline.types import (
    FallbackReason,
    MaskRecord,
    ModelChoice,
    ModelName,
    Prompts,
    SegmentationResult,
    SegmentParams,
)

log = logging.getLogger(__name__)

MAX_PROMPT_POINTS = 64
MAX_PROMPT_BOXES = 64


def resolve_params(params: SegmentParams, settings: ModelSettings) -> SegmentParams:
    """Fill every ``None`` from the settings and validate by the spec (:mod:`pipeline.params`), so equal requests
    resolve to equal parameters and a bad configured default is refused like a bad request value."""
    if not isinstance(params, SegmentParams):
        raise InvalidParametersError(f"params must be a SegmentParams, got {type(params).__name__}")
    defaults = (
        ("conf", settings.default_conf),
        ("iou", settings.default_iou),
        ("imgsz", settings.fastsam_imgsz),
        ("max_contours", settings.max_contours),
        ("mask_post_processing", settings.mask_post_processing),
        ("fallback_min_score", settings.fallback_min_score),
    )
    return _resolved(params, defaults)


@functools.lru_cache(maxsize=1024)
def _resolved(params: SegmentParams, defaults: tuple[tuple[str, object], ...]) -> SegmentParams:
    """Requests mostly repeat a handful of parameter sets: validating each set once keeps pydantic off the dedup
    hit path (both arguments are immutable; a refused set raises and is not cached)."""
    fill = dict(defaults)
    values = params.model_dump()
    return SegmentParams(**{name: fill[name] if value is None else value for name, value in values.items()})


def _is_finite_number(value: object) -> bool:
    """Real numbers of any kind (numpy's included), but not bools, NaN or infinities."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def validate_prompts(prompts: Prompts, width: int, height: int) -> None:
    """Refuse prompts a model would silently misread: non-finite, negative, outside the image, malformed."""
    if len(prompts.points) > MAX_PROMPT_POINTS or len(prompts.boxes) > MAX_PROMPT_BOXES:
        raise InvalidPromptError(f"at most {MAX_PROMPT_POINTS} points and {MAX_PROMPT_BOXES} boxes per request")
    if prompts.point_labels and len(prompts.point_labels) != len(prompts.points):
        raise InvalidPromptError(
            f"{len(prompts.point_labels)} point labels for {len(prompts.points)} points: give one label per point"
        )
    if any(label not in (0, 1) for label in prompts.point_labels):
        raise InvalidPromptError("point labels must be 1 (foreground) or 0 (background)")
    for point in prompts.points:
        if len(point) != 2 or not all(_is_finite_number(v) for v in point):
            raise InvalidPromptError(f"point {point!r} must be two finite numbers (x, y)")
        x, y = point
        if not (0 <= x <= width and 0 <= y <= height):
            raise InvalidPromptError(f"point ({x}, {y}) lies outside the {width}x{height} image")
    for box in prompts.boxes:
        if len(box) != 4 or not all(_is_finite_number(v) for v in box):
            raise InvalidPromptError(f"box {box!r} must be four finite numbers (x1, y1, x2, y2)")
        x1, y1, x2, y2 = box
        if not (0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height):
            raise InvalidPromptError(
                f"box ({x1}, {y1}, {x2}, {y2}) must satisfy 0 <= x1 < x2 <= {width} and 0 <= y1 < y2 <= {height}"
            )


@dataclass(slots=True)
class _Job:
    """One image on its way through the engine (mutable working state, never leaves this module)."""

    image: np.ndarray  # RGB, full size: both models resize to their own input inside
    prompts: Prompts
    params: SegmentParams  # resolved
    width: int
    height: int
    timings: dict[str, float]
    fallback_detail: str | None = None
    fallback: FallbackReason | None = None
    records: tuple[MaskRecord, ...] | None = None
    answered_by: ModelName | None = None
    error: SegmentationError | None = None


class Segmenter:
    """FastSAM first, SAM2 as fallback, by the rule in this module's docstring."""

    def __init__(
        self, settings: ModelSettings, *, fastsam: FastSAMModel | None = None, sam2: SAM2Model | None = None
    ) -> None:
        self.settings = settings
        device = resolve_device(settings.device)
        self.device = device
        self.fastsam = fastsam or FastSAMModel(settings.fastsam_model_path, device, runtime=settings.fastsam_runtime)
        self.sam2 = sam2 or SAM2Model(
            settings.sam_model_path,
            device,
            settings.sam2_config,
            SAM2Options(
                points_per_side=settings.sam2_points_per_side,
                points_per_batch=settings.sam2_points_per_batch,
                pred_iou_thresh=settings.sam2_pred_iou_thresh,
                stability_score_thresh=settings.sam2_stability_score_thresh,
                memory_optimization=settings.memory_optimization,
                max_inference_side=settings.max_inference_side,
            ),
            embeddings=EmbeddingCache(
                max_bytes=settings.sam2_embedding_cache_mb * 2**20, max_entries=settings.sam2_embedding_cache_entries
            ),
        )

    def warm_up(self, background_sam2: bool | None = None) -> threading.Thread | None:
        """Load both models now; a missing checkpoint is logged, not fatal (the other model may still answer).

        With ``background_sam2`` (default: ``SAM2_BACKGROUND_LOAD``) SAM2 loads on a thread, returned, so a worker
        can join its group after FastSAM alone (cold start); a fallback arriving before it is done waits on the
        model's lock, which the loader holds. Not a daemon: a process ending during the load waits for it rather
        than aborting inside torch ("terminate called without an active exception").
        """
        background = self.settings.sam2_background_load if background_sam2 is None else background_sam2
        _load_logged(self.fastsam)
        if not background:
            _load_logged(self.sam2)
            return None
        thread = threading.Thread(target=_load_logged, args=(self.sam2,), name="sam2-load")
        thread.start()
        return thread

    def segment(
        self, image: np.ndarray, prompts: Prompts | None = None, params: SegmentParams | None = None
    ) -> SegmentationResult:
        """Segment one RGB uint8 image; raises a :class:`SegmentationError` subclass on failure."""
        (outcome,) = self.segment_batch([(image, prompts or Prompts(), params or SegmentParams())])
        if isinstance(outcome, SegmentationError):
            raise outcome
        return outcome

    def segment_batch(
        self,
        items: Sequence[tuple[np.ndarray, Prompts, SegmentParams]],
        on_ready: Callable[[int, SegmentationResult | SegmentationError], None] | None = None,
    ) -> list[SegmentationResult | SegmentationError]:
        """Segment several images together: unprompted FastSAM work with equal parameters and size runs as one batch.

        Returns one entry per item, in order: the result, or the typed error for that item alone. ``on_ready`` is
        called as soon as an item is final, so FastSAM's answers need not wait for the batch's SAM2 fallbacks.
        """
        jobs: list[_Job | SegmentationError] = [self._prepare(*item) for item in items]
        outcomes: list[SegmentationResult | SegmentationError | None] = [None] * len(jobs)

        def settle(final: bool) -> None:
            for index, job in enumerate(jobs):
                if outcomes[index] is not None:
                    continue
                if isinstance(job, SegmentationError):
                    outcomes[index] = job
                elif job.error is not None or job.records is not None or final:
                    outcomes[index] = self._finish(job)
                else:
                    continue
                if on_ready is not None:
                    on_ready(index, outcomes[index])  # type: ignore[arg-type]

        live = [job for job in jobs if isinstance(job, _Job)]
        settle(final=False)
        self._run_fastsam([j for j in live if j.params.model in (ModelChoice.AUTO, ModelChoice.FASTSAM)])
        settle(final=False)
        self._run_sam2([j for j in live if j.error is None and j.records is None])
        settle(final=True)
        return outcomes  # type: ignore[return-value]

    def _prepare(self, image: np.ndarray, prompts: Prompts, params: SegmentParams) -> _Job | SegmentationError:
        started = time.perf_counter()
        try:
            resolved = resolve_params(params, self.settings)
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise InvalidParametersError(f"expected an RGB uint8 image, got {image.dtype} {image.shape}")
            height, width = image.shape[:2]
            validate_prompts(prompts, width, height)
        except SegmentationError as exc:
            return exc
        # No resizing here: FastSAM and SAM2 each resize to their own input size and give masks at full size
        # (FastSAM's retina masks, SAM2's upsampled logits), so a resize before them would only change the answer.
        timings = {"preprocess": ms_since(started)}
        return _Job(np.ascontiguousarray(image), prompts, resolved, width, height, timings)

    def _run_fastsam(self, jobs: list[_Job]) -> None:
        # The image shape is part of the key: ultralytics letterboxes a mixed-size batch to one common shape, which
        # changes each image's masks, and a result must not depend on its batchmates (dedup caches it per request).
        groups: dict[tuple[float, float, int, tuple[int, ...]], list[_Job]] = defaultdict(list)
        for job in jobs:
            groups[(job.params.conf, job.params.iou, job.params.imgsz, job.image.shape)].append(job)
        for (conf, iou, imgsz, _shape), group in groups.items():
            started = time.perf_counter()
            try:
                # Everything mode for all, prompted or not: prompts select among FastSAM's masks by the rule of
                # pipeline.prompts, and the batch stays one batch.
                raw = self.fastsam.predict(
                    [j.image for j in group],
                    [Prompts() for _ in group],
                    conf=conf,
                    iou=iou,
                    imgsz=imgsz,
                    retina=self.settings.retina_masks,
                )
            except Exception as exc:  # any FastSAM failure (OOM included) is a fallback reason
                _release_accelerator_memory()
                log.warning("FastSAM failed on %d image(s): %s", len(group), exc, exc_info=log.isEnabledFor(10))
                for job in group:
                    job.timings["fastsam"] = ms_since(started) / len(group)
                    self._fastsam_failed(job, exc)
                continue
            share = ms_since(started) / len(group)
            for job, masks in zip(group, raw, strict=True):
                job.timings["fastsam"] = share
                self._fastsam_answered(job, masks)

    def _fastsam_failed(self, job: _Job, exc: Exception) -> None:
        detail = f"{type(exc).__name__}: {exc}"
        if job.params.model == ModelChoice.FASTSAM:
            job.error = ModelFailedError(f"FastSAM failed: {detail}")
        else:
            job.fallback_detail, job.fallback = detail, FallbackReason.FASTSAM_ERROR

    def _fastsam_answered(self, job: _Job, masks: list[RawMask]) -> None:
        if prompt_count(job.prompts):
            # One record per prompt; a prompt FastSAM cannot answer sends the request to SAM2 (auto) or stays empty.
            records = self._prompt_records(job, select_for_prompts(masks, job.prompts))
            answered = [record for record in records if record.area > 0]
            missing = [index for index, record in enumerate(records) if record.area == 0]
            unanswered = _unanswered_prompts(job, missing, len(records)) if missing else None
        else:
            records = self._records(job, masks)
            answered = list(records)
            unanswered = None if records else f"FastSAM found no mask at conf {job.params.conf}"
        if job.params.model == ModelChoice.FASTSAM or (
            unanswered is None and max(r.predicted_iou for r in answered) >= job.params.fallback_min_score
        ):
            job.records, job.answered_by = records, ModelName.FASTSAM
        elif unanswered is not None:
            job.fallback, job.fallback_detail = FallbackReason.NO_MASKS, unanswered
        else:
            job.fallback = FallbackReason.LOW_SCORE
            job.fallback_detail = (
                f"best FastSAM predicted_iou {max(r.predicted_iou for r in answered):.4f} "
                f"< fallback_min_score {job.params.fallback_min_score}"
            )

    def _prompt_records(self, job: _Job, chosen: Sequence[RawMask | None]) -> tuple[MaskRecord, ...]:
        """Exactly one record per prompt, in prompt order, each carrying its ``prompt_index``; a prompt without an
        answer (or whose mask is empty at the original size) gets an empty mask (area 0), so indices never shift."""
        started = time.perf_counter()
        records = []
        for index, raw in enumerate(chosen):
            record = None
            if raw is not None:
                record = build_mask_record(
                    raw.mask,
                    predicted_iou=raw.predicted_iou,
                    stability_score=raw.stability_score,
                    max_contours=job.params.max_contours,
                    post_process=job.params.mask_post_processing,
                    min_region_area=self.settings.min_region_area,
                )
            if record is None:
                record = _empty_record(job.width, job.height, raw)
            records.append(replace(record, prompt_index=index))
        job.timings["postprocess"] = job.timings.get("postprocess", 0.0) + ms_since(started)
        return tuple(records)

    def _run_sam2(self, jobs: list[_Job]) -> None:
        if not jobs:
            return
        started = time.perf_counter()
        try:
            raw = self.sam2.predict([j.image for j in jobs], [j.prompts for j in jobs])
        except Exception as exc:  # noqa: BLE001 - reported per request, never crashes the caller
            _release_accelerator_memory()
            log.warning("SAM2 failed on %d image(s): %s", len(jobs), exc)
            for job in jobs:
                job.timings["sam2"] = ms_since(started) / len(jobs)
                before = f"; FastSAM: {job.fallback_detail}" if job.fallback == FallbackReason.FASTSAM_ERROR else ""
                job.error = ModelFailedError(f"SAM2 failed: {type(exc).__name__}: {exc}{before}")
            return
        share = ms_since(started) / len(jobs)
        for job, masks in zip(jobs, raw, strict=True):
            job.timings["sam2"] = share
            if prompt_count(job.prompts):  # SAM2 answers prompt i with its i-th mask (one per box, one for points)
                records = self._prompt_records(job, _aligned(masks, prompt_count(job.prompts)))
            else:
                records = self._records(job, masks)
            job.records, job.answered_by = records, ModelName.SAM2

    def _records(self, job: _Job, masks: list[RawMask]) -> tuple[MaskRecord, ...]:
        """Clean (when asked) and encode the models' full-size masks; best predicted_iou first."""
        started = time.perf_counter()
        records = []
        for raw in masks:
            record = build_mask_record(
                raw.mask,
                predicted_iou=raw.predicted_iou,
                stability_score=raw.stability_score,
                max_contours=job.params.max_contours,
                post_process=job.params.mask_post_processing,
                min_region_area=self.settings.min_region_area,
            )
            if record is not None:
                records.append(record)
        records.sort(key=lambda r: (-r.predicted_iou, -r.area))
        job.timings["postprocess"] = job.timings.get("postprocess", 0.0) + ms_since(started)
        return tuple(records)

    def _finish(self, job: _Job) -> SegmentationResult | SegmentationError:
        if job.error is not None:
            return job.error
        assert job.records is not None and job.answered_by is not None
        return SegmentationResult(
            masks=job.records,
            model=job.answered_by,
            fallback_reason=job.fallback if job.answered_by == ModelName.SAM2 else None,
            fallback_detail=job.fallback_detail if job.answered_by == ModelName.SAM2 else None,
            width=job.width,
            height=job.height,
            inference_width=int(job.image.shape[1]),
            inference_height=int(job.image.shape[0]),
            timings_ms=job.timings,
        )


def _aligned(masks: list[RawMask], count: int) -> list[RawMask | None]:
    """A model's per-prompt masks padded (or cut) to one per prompt."""
    return [*masks[:count], *([None] * (count - len(masks)))]


def _empty_record(width: int, height: int, raw: RawMask | None) -> MaskRecord:
    """The answer "nothing" to one prompt: an all-zero mask at the original size."""
    return MaskRecord(
        rle=encode_rle(np.zeros((height, width), dtype=bool)),
        polygons=(),
        bbox=(0.0, 0.0, 0.0, 0.0),
        area=0,
        predicted_iou=0.0 if raw is None else float(raw.predicted_iou),
        stability_score=0.0 if raw is None else float(raw.stability_score),
    )


def _release_accelerator_memory() -> None:
    """After a failure (out of memory above all), give cached GPU memory back before the fallback runs."""
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001 - best effort only
        pass


def _unanswered_prompts(job: _Job, missing: list[int], count: int) -> str:
    """Why FastSAM's answer to a prompted request does not count (the NO_MASKS detail)."""
    if job.prompts.boxes:
        which = ", ".join(str(index) for index in missing)
        return (
            f"FastSAM has no mask overlapping box {which} of {count} at conf {job.params.conf} "
            "(a box's mask must have pixels inside it); SAM2 answered every box"
        )
    return f"no FastSAM mask at conf {job.params.conf} contains every foreground point and no background point"


def _load_logged(model: FastSAMModel | SAM2Model) -> None:
    try:
        model.load()
    except ModelUnavailableError as exc:
        log.error("%s", exc)
