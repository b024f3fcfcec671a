"""Message dataclasses: constructors from the core's result, cache re-addressing, invariants, immutability."""

from __future__ import annotations

import dataclasses
import time

import pytest

from pipeline.errors import InvalidImageError
from pipeline.types import RLE, FallbackReason, MaskRecord, ModelName, SegmentationResult
from schemas import (
    DeadLetter,
    ErrorInfo,
    Header,
    ResultStatus,
    SegmentRequest,
    SegmentResultMessage,
    headers_from_kafka,
    now_ms,
)

MASK = MaskRecord(RLE((2, 2), "04"), ((0.0, 0.0, 1.0, 0.0, 1.0, 1.0),), (0.0, 0.0, 2.0, 2.0), 4, 0.9, 0.95)
CORE = SegmentationResult(
    masks=(MASK,),
    model=ModelName.SAM2,
    fallback_reason=FallbackReason.NO_MASKS,
    fallback_detail="FastSAM found no mask",
    width=2,
    height=2,
    inference_width=2,
    inference_height=2,
    timings_ms={"fastsam": 10.0, "sam2": 30.0},
)


def test_ok_copies_the_core_result_and_merges_timings() -> None:
    msg = SegmentResultMessage.ok(
        "r1",
        CORE,
        image_sha256="ab" * 32,
        worker_id="w1",
        source="a.png",
        timings_ms={"decode": 1.0, "sam2": 31.0},
        created_at_ms=123,
    )
    assert msg.status is ResultStatus.OK and msg.error is None
    assert (msg.model, msg.fallback_reason, msg.fallback_detail) == (
        ModelName.SAM2,
        FallbackReason.NO_MASKS,
        "FastSAM found no mask",
    )
    assert (msg.width, msg.height, msg.inference_width, msg.inference_height) == (2, 2, 2, 2)
    assert msg.masks == (MASK,) and msg.cached is False
    assert msg.timings_ms == {"fastsam": 10.0, "sam2": 31.0, "decode": 1.0}  # the worker's value wins
    assert CORE.timings_ms == {"fastsam": 10.0, "sam2": 30.0}  # the core's dict is not mutated
    assert (msg.request_id, msg.worker_id, msg.source, msg.created_at_ms) == ("r1", "w1", "a.png", 123)


def test_created_at_defaults_to_now() -> None:
    before = now_ms()
    msg = SegmentResultMessage.ok("r", CORE, image_sha256=None, worker_id="w")
    assert before <= msg.created_at_ms <= now_ms()
    assert abs(now_ms() - time.time() * 1000) < 1000


def test_failure_has_no_masks_model_or_sizes() -> None:
    err = ErrorInfo.from_error(InvalidImageError("not an image"))
    assert err == ErrorInfo("invalid_image", "not an image")
    msg = SegmentResultMessage.failure("r2", err, worker_id="w1", created_at_ms=7)
    assert msg.status is ResultStatus.ERROR and msg.error == err
    assert msg.masks == () and msg.model is None and msg.width is None and msg.cached is False
    assert msg.timings_ms == {} and msg.image_sha256 is None and msg.created_at_ms == 7


def test_with_cache_hit_readdresses_a_stored_result() -> None:
    stored = SegmentResultMessage.ok("r1", CORE, image_sha256="ab", worker_id="w1", source="a.png", created_at_ms=1)
    hit = stored.with_cache_hit("r2", "w2", "b.png", {"cache": 0.2}, 99)
    assert (hit.request_id, hit.worker_id, hit.source, hit.created_at_ms) == ("r2", "w2", "b.png", 99)
    assert hit.cached is True
    assert hit.timings_ms == {"cache": 0.2}
    for same in ("masks", "model", "fallback_reason", "width", "height", "image_sha256", "status"):
        assert getattr(hit, same) == getattr(stored, same)
    assert stored.cached is False and stored.request_id == "r1"


def test_invariants_are_enforced() -> None:
    good = SegmentResultMessage.ok("r", CORE, image_sha256=None, worker_id="w", created_at_ms=0)
    with pytest.raises(ValueError, match="cannot carry an error"):
        dataclasses.replace(good, error=ErrorInfo("c", "m"))
    with pytest.raises(ValueError, match="name the model"):
        dataclasses.replace(good, model=None)
    with pytest.raises(ValueError, match="must carry an ErrorInfo"):
        dataclasses.replace(good, status=ResultStatus.ERROR)
    with pytest.raises(ValueError, match="unknown result status"):
        dataclasses.replace(good, status="partial")


def test_messages_are_frozen_and_slotted() -> None:
    req = SegmentRequest(request_id="r", image=b"x")
    with pytest.raises(dataclasses.FrozenInstanceError):
        req.request_id = "other"  # type: ignore[misc]
    for cls in (SegmentRequest, SegmentResultMessage, ErrorInfo, Header, DeadLetter):
        assert "__slots__" in cls.__dict__, cls
        assert dataclasses.fields(cls)


def test_request_repr_leaves_the_image_out() -> None:
    req = SegmentRequest(request_id="r", image=b"\x00" * 10_000)
    assert "image" not in repr(req) and len(repr(req)) < 500


def test_headers_from_kafka_keeps_order_repeats_and_nulls() -> None:
    assert headers_from_kafka(None) == ()
    assert headers_from_kafka([("a", b"1"), ("a", None), ("b", "é")]) == (
        Header("a", b"1"),
        Header("a", None),
        Header("b", "é".encode()),
    )
