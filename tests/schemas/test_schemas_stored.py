"""Stored results and cache hits spliced from them: byte for byte what decoding and re-encoding would give."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.errors import MalformedRequestError
from pipeline.types import RLE, FallbackReason, MaskRecord, ModelName
from schemas import SegmentResultMessage, decode_result, encode_result
from schemas.messages import ResultStatus
from schemas.stored import MAGIC, PER_REQUEST_FIELDS, EncodedMasks, StoredResult, encode_stored
from tests.schemas.test_schemas_avro import MASK, error_result, ok_result

texts = st.text(max_size=40)
optional_texts = st.none() | texts
floats = st.floats(allow_nan=False, width=64)


@st.composite
def masks(draw: st.DrawFn) -> MaskRecord:
    return MaskRecord(
        rle=RLE(size=(draw(st.integers(1, 5000)), draw(st.integers(1, 5000))), counts=draw(texts)),
        polygons=tuple(tuple(draw(st.lists(floats, max_size=12))) for _ in range(draw(st.integers(0, 3)))),
        bbox=(draw(floats), draw(floats), draw(floats), draw(floats)),
        area=draw(st.integers(0, 2**31 - 1)),
        predicted_iou=draw(floats),
        stability_score=draw(floats),
    )


@st.composite
def ok_results(draw: st.DrawFn) -> SegmentResultMessage:
    fallback = draw(st.none() | st.sampled_from(list(FallbackReason)))
    return SegmentResultMessage(
        request_id=draw(texts),
        status=ResultStatus.OK,
        image_sha256=draw(optional_texts),
        width=draw(st.none() | st.integers(1, 2**31 - 1)),
        height=draw(st.none() | st.integers(1, 2**31 - 1)),
        inference_width=draw(st.none() | st.integers(1, 2**31 - 1)),
        inference_height=draw(st.none() | st.integers(1, 2**31 - 1)),
        model=draw(st.sampled_from(list(ModelName))),
        fallback_reason=fallback,
        fallback_detail=draw(optional_texts),
        cached=draw(st.booleans()),
        masks=tuple(draw(st.lists(masks(), max_size=5))),
        timings_ms=draw(st.dictionaries(texts, floats, max_size=4)),
        error=None,
        worker_id=draw(texts),
        source=draw(optional_texts),
        created_at_ms=draw(st.integers(0, 253_402_300_799_999)),
    )


@settings(max_examples=200, deadline=None)
@given(
    original=ok_results(),
    request_id=texts,
    worker_id=texts,
    source=optional_texts,
    timings=st.dictionaries(texts, floats, max_size=4),
    created=st.integers(0, 253_402_300_799_999),  # decodable as a datetime (year 9999)
)
def test_hit_bytes_equal_reencoding_the_decoded_original(
    original: SegmentResultMessage,
    request_id: str,
    worker_id: str,
    source: str | None,
    timings: dict[str, float],
    created: int,
) -> None:
    """The splice is an optimisation only: any consumer sees exactly the bytes the slow path would publish."""
    entry = StoredResult.parse(encode_stored(original))
    message, data = entry.hit(request_id, worker_id, source, timings, created_at_ms=created)
    expected = original.with_cache_hit(request_id, worker_id, source, timings, created_at_ms=created)
    assert data == encode_result(expected)
    assert message == expected
    assert decode_result(data) == expected


def test_hit_masks_stay_encoded_until_read() -> None:
    original = replace(ok_result(), masks=(MASK, replace(MASK, area=7)))
    message, _ = StoredResult.parse(encode_stored(original)).hit("r2", "w2", None)
    assert isinstance(message.masks, EncodedMasks)
    assert message.masks._records is None  # the point: len() and the hit did not decode
    assert len(message.masks) == 2
    assert message.masks._records is None
    assert list(message.masks) == [MASK, replace(MASK, area=7)]
    assert message.masks[1].area == 7
    assert message.cached is True
    assert message.model == ModelName.SAM2
    assert message.fallback_reason == FallbackReason.LOW_SCORE
    assert message.created_at_ms > 0


def test_only_ok_results_are_stored() -> None:
    with pytest.raises(ValueError, match="only ok"):
        encode_stored(error_result())


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: b"",
        lambda data: encode_result(ok_result()),  # an entry of the old layout (a whole result)
        lambda data: data[:-3],  # truncated
        lambda data: data + b"\x00",  # trailing bytes
        lambda data: MAGIC + b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff",  # absurd varint
    ],
)
def test_damaged_entries_are_refused(damage) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(MalformedRequestError):
        StoredResult.parse(damage(encode_stored(ok_result())))


def test_damaged_chunk_is_refused_when_hit() -> None:
    """A well-framed entry whose head bytes are garbage: refused, so the worker recomputes."""
    entry = StoredResult.parse(encode_stored(ok_result()))
    broken = StoredResult((b"\xff" * len(entry.chunks[0]), *entry.chunks[1:]), entry.mask_count)
    with pytest.raises(MalformedRequestError):
        broken.hit("r", "w", None)


def test_per_request_fields_are_the_ones_with_cache_hit_changes() -> None:
    """If with_cache_hit started changing another field, the splice would silently keep the stored value."""
    original = ok_result()
    hit = original.with_cache_hit("other-id", "other-worker", "other-source", {"x": 1.0}, created_at_ms=1)
    changed = {name for name in original.__slots__ if getattr(original, name) != getattr(hit, name)}  # type: ignore[attr-defined]
    assert changed <= PER_REQUEST_FIELDS
    assert {"request_id", "worker_id", "source", "timings_ms", "created_at_ms"} <= changed
