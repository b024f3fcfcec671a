"""The processor's two paths against a real Redis and the real tiny models: repeats of a stored payload are answered
in bulk without decoding the image (the fast path); other encodings of a stored image, by their pixels."""

from __future__ import annotations

import base64
from pathlib import Path

import cv2
import numpy as np
import pytest
import redis

import consumers.processor as processor_module
from consumers.dedup import KEY_PREFIX, DedupCache
from consumers.processor import (
    Answered,
    InboundRecord,
    Outcome,
    ParsedRequest,
    PendingSegmentation,
    RequestProcessor,
)
from pipeline.segmenter import Segmenter
from pipeline.settings import ModelSettings
from pipeline.types import ModelChoice, SegmentParams
from schemas import SegmentRequest, decode_result, encode_request, encode_result, request_headers
from schemas.stored import EncodedMasks

FASTSAM = SegmentParams(model=ModelChoice.FASTSAM)


def _pixels(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = np.full((96, 128, 3), 40, np.uint8)
    cv2.rectangle(image, (20, 20), (90, 70), (200, 180, 60), -1)
    return np.clip(image.astype(int) + rng.integers(-20, 20, image.shape), 0, 255).astype(np.uint8)


def _png(pixels: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", pixels[:, :, ::-1])
    assert ok
    return data.tobytes()


_offsets = iter(range(1_000_000))


def _record(request_id: str, image: bytes, params: SegmentParams = FASTSAM) -> InboundRecord:
    request = SegmentRequest(request_id=request_id, image=image, params=params)
    headers = tuple(request_headers(request))
    return InboundRecord(encode_request(request), request_id.encode(), headers, "in", 0, next(_offsets))


@pytest.fixture(scope="module")
def segmenter(demo_checkpoints: tuple[Path, Path]) -> Segmenter:
    fastsam, sam2 = demo_checkpoints
    settings = ModelSettings(
        fastsam_model_path=fastsam, sam_model_path=sam2, device="cpu", default_conf=0.005, fastsam_imgsz=640
    )
    return Segmenter(settings)


@pytest.fixture
def processor(segmenter: Segmenter, dedup_cache: DedupCache) -> RequestProcessor:
    return RequestProcessor(segmenter, dedup_cache, worker_id="w-test")


def _compute(processor: RequestProcessor, record: InboundRecord) -> Outcome:
    """The model path, as the worker runs it: fast path miss, prepare, one micro-batch."""
    (parsed,) = processor.prepare_batch([record])
    assert isinstance(parsed, ParsedRequest)
    pending = processor.prepare(parsed)
    assert isinstance(pending, PendingSegmentation)
    (outcome,) = processor.segment([pending])
    assert outcome.result.error is None and not outcome.result.cached
    return outcome


def test_repeats_of_a_stored_payload_are_answered_without_decoding(
    processor: RequestProcessor, monkeypatch: pytest.MonkeyPatch
) -> None:
    png = _png(_pixels(1))
    original = _compute(processor, _record("first", png))
    assert len(original.result.masks) > 0

    def no_decoding(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("the fast path decoded an image")

    monkeypatch.setattr(processor_module, "decode_image", no_decoding)
    batch = [_record("again-1", png), _record("broken", b"\x89PNG not really"), _record("again-2", png)]
    hit_1, broken, hit_2 = processor.prepare_batch(batch)

    assert isinstance(broken, ParsedRequest)  # an unknown payload needs the model path (which will reject it)
    for hit, request_id in ((hit_1, "again-1"), (hit_2, "again-2")):
        assert isinstance(hit, Outcome)
        assert hit.result.request_id == request_id
        assert hit.result.cached and hit.result.worker_id == "w-test"
        assert isinstance(hit.result.masks, EncodedMasks)
        published = decode_result(hit.result_bytes)  # what the worker publishes is a complete, ordinary result
        assert published.masks == original.result.masks
        assert published.model == original.result.model
        assert published.cached and published.request_id == request_id
        assert set(published.timings_ms) == {"decode", "dedup"}
        assert hit.result_bytes == encode_result(published)


def test_another_encoding_of_a_stored_image_hits_by_pixels_then_by_payload(processor: RequestProcessor) -> None:
    pixels = _pixels(2)
    png = _png(pixels)
    original = _compute(processor, _record("png", png))
    as_base64 = base64.b64encode(png)

    (parsed,) = processor.prepare_batch([_record("b64-1", as_base64)])
    assert isinstance(parsed, ParsedRequest)  # a payload never seen before
    by_pixels = processor.prepare(parsed)
    assert isinstance(by_pixels, Outcome) and by_pixels.result.cached
    assert decode_result(by_pixels.result_bytes).masks == original.result.masks

    (by_payload,) = processor.prepare_batch([_record("b64-2", as_base64)])  # the hit left an alias behind
    assert isinstance(by_payload, Outcome) and by_payload.result.cached


def test_other_parameters_are_not_a_repeat(processor: RequestProcessor) -> None:
    png = _png(_pixels(3))
    _compute(processor, _record("conf-default", png))
    other_conf = SegmentParams(model=ModelChoice.FASTSAM, conf=0.01)
    (other,) = processor.prepare_batch([_record("conf-other", png, other_conf)])
    assert isinstance(other, ParsedRequest)


def test_an_expired_or_unreadable_entry_is_recomputed(processor: RequestProcessor, redis_client: redis.Redis) -> None:
    png = _png(_pixels(4))
    _compute(processor, _record("first", png))
    entries = [key for key in redis_client.scan_iter(f"{KEY_PREFIX}:result:*") if not key.endswith(b":claim")]
    assert len(entries) == 1
    redis_client.set(entries[0], b"not a stored result")  # e.g. written by an older version
    (item,) = processor.prepare_batch([_record("again", png)])
    assert isinstance(item, ParsedRequest)
    redis_client.delete(entries[0])  # expired: the alias points nowhere
    (item,) = processor.prepare_batch([_record("again", png)])
    assert isinstance(item, ParsedRequest)


def test_a_redelivered_record_this_group_delivered_is_not_answered_again(
    segmenter: Segmenter, dedup_cache: DedupCache, redis_client: redis.Redis
) -> None:
    """After a kill -9 or a rebalance the group redelivers what was not committed; what had been delivered is marked,
    by the record's own coordinates and per consumer group, and only those are skipped."""
    group_a = RequestProcessor(segmenter, dedup_cache, worker_id="w-a", scope="group-a")
    group_b = RequestProcessor(segmenter, dedup_cache, worker_id="w-b", scope="group-b")
    unscoped = RequestProcessor(segmenter, dedup_cache, worker_id="w-c")
    png = _png(_pixels(7))
    delivered, broken, pending = _record("done", png), _record("bad", b"junk"), _record("not-yet", png)
    group_a.mark_answered([delivered, broken])

    again, bad_again, other = group_a.prepare_batch([delivered, broken, pending])
    assert isinstance(again, Answered) and again.record is delivered
    assert isinstance(bad_again, Answered), "an error result and its dead letter are not published twice either"
    assert isinstance(other, ParsedRequest), "never delivered: answered as usual"
    assert all(not isinstance(item, Answered) for item in group_b.prepare_batch([delivered, broken]))
    assert all(not isinstance(item, Answered) for item in unscoped.prepare_batch([delivered, broken]))

    # The same offset with another timestamp is another record (a topic deleted and created again).
    reborn = InboundRecord(delivered.value, delivered.key, delivered.headers, "in", 0, delivered.offset, 12345)
    assert not isinstance(group_a.prepare_batch([reborn])[0], Answered)
    ttls = [redis_client.ttl(key) for key in redis_client.scan_iter(f"{KEY_PREFIX}:answered:*")]
    assert len(ttls) == 2 and all(0 < ttl <= dedup_cache.settings.answered_ttl for ttl in ttls)


def test_redis_unreachable_sends_everything_to_the_model_path(
    segmenter: Segmenter, unreachable_cache: DedupCache
) -> None:
    processor = RequestProcessor(segmenter, unreachable_cache, worker_id="w-test", scope="g")
    items = processor.prepare_batch([_record("a", _png(_pixels(5))), _record("b", b"junk")])
    assert all(isinstance(item, ParsedRequest) for item in items)
    assert not unreachable_cache.healthy


@pytest.mark.parametrize(
    ("key", "headers", "expected"),
    [
        (b"order-17", (), "order-17"),  # a UTF-8 key names the request
        ("é".encode() * 128, (), "é" * 128),  # 256 bytes: still a name
        (b"k" * 257, (), "in:3:99"),  # longer: a hash or a payload, not a name
        (b"\xff\xfe", (), "in:3:99"),  # not UTF-8
        (None, (), "in:3:99"),
        (b"order-17", (("segpipe-request-id", b"hdr"),), "hdr"),  # the header wins
        (b"order-17", (("SEGPIPE-REQUEST-ID", b"hdr"),), "hdr"),
    ],
)
def test_request_id_is_header_then_key_then_position(key: bytes | None, headers: tuple, expected: str) -> None:
    record = InboundRecord(b"value", key, headers, "in", 3, 99)
    assert (record.header_request_id or record.fallback_request_id) == expected
    assert record.origin.key == key and (record.origin.topic, record.origin.partition, record.origin.offset) == (
        "in",
        3,
        99,
    )
