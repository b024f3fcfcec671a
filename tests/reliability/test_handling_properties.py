"""Property-based: whatever bytes and headers arrive, the worker's handling path yields exactly one outcome, never
raises, and every error outcome carries a dead letter with the original record.

The path is the worker's own, in-process: ``RequestProcessor.prepare`` then ``.segment`` with a real Segmenter on
the tiny checkpoints and a ``DedupCache`` on the real Redis. Only the Kafka loop around it is left out (the e2e
tests cover that), so a thousand payloads fit in a couple of minutes.
"""

from __future__ import annotations

import base64
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis
from hostile_payloads import avro, encode, noise_pixels, npy_bytes, png_claiming
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reliability_harness import Report

from consumers.dedup import DedupCache
from consumers.processor import InboundRecord, Outcome, PendingSegmentation, RequestProcessor
from devstack.services import LocalRedis
from pipeline.segmenter import Segmenter
from pipeline.settings import ModelSettings
from pipeline.types import ModelChoice, Prompts, SegmentParams
from schemas import BARE_HEADERS, ResultStatus, decode_dead_letter, decode_result, encode_dead_letter
from segpipe.config import RedisSettings

pytestmark = pytest.mark.slow

EXAMPLES = 1000
MAX_RECORD_BYTES = 1_000_000


def _model_settings(checkpoints: tuple[Path, Path]) -> ModelSettings:
    fastsam, sam2 = checkpoints
    return ModelSettings(
        fastsam_model_path=fastsam,
        sam_model_path=sam2,
        device="cpu",
        default_conf=0.005,
        fastsam_imgsz=640,
        sam2_points_per_side=4,
        sam2_pred_iou_thresh=0.0,
        sam2_stability_score_thresh=0.0,
    )


@pytest.fixture(scope="module")
def segmenter(demo_checkpoints: tuple[Path, Path]) -> Segmenter:
    engine = Segmenter(_model_settings(demo_checkpoints))
    engine.warm_up()
    return engine


@pytest.fixture(scope="module")
def processor(segmenter: Segmenter, redis_server: LocalRedis) -> Iterator[RequestProcessor]:
    """The worker's processor with a real cache; a short max_wait so a claim left by a bug cannot stall the run."""
    redis.Redis(host=redis_server.host, port=redis_server.port).flushdb()
    cache = DedupCache(
        RedisSettings(host=redis_server.host, port=redis_server.port, lock_ttl=3, max_wait=2.0, socket_timeout=2.0)
    )
    try:
        yield RequestProcessor(segmenter, cache, worker_id="property", max_record_bytes=MAX_RECORD_BYTES)
    finally:
        cache.close()


# ---------------------------------------------------------------------------------------------------- strategies

_PIXELS = noise_pixels(11)
_PNG = encode(_PIXELS, ".png")
_AVRO_FASTSAM = SegmentParams(model=ModelChoice.FASTSAM)
#: Valid payloads to mutate: every format the worker accepts. Avro requests ask for FastSAM (SAM2 takes ~5 s an
#: image here; a thousand examples must fit in minutes), headers may still ask for anything but sam2 below.
SEEDS: dict[str, bytes] = {
    "png": _PNG,
    "jpeg": encode(_PIXELS, ".jpg"),
    "bmp": encode(_PIXELS, ".bmp"),
    "webp": encode(_PIXELS, ".webp"),
    "npy": npy_bytes(_PIXELS),
    "base64": base64.b64encode(_PNG),
    "data-uri": b"data:image/png;base64," + base64.b64encode(_PNG),
    "png-bomb": png_claiming(100_000, 100_000),
    "avro": avro("seed", _PNG, params=_AVRO_FASTSAM)[0],
    "avro-prompts": avro("seed-p", _PNG, params=_AVRO_FASTSAM, prompts=Prompts(points=((10.0, 20.0),)))[0],
}
_HEADER_VALUES = [
    b"avro-v1",
    b"auto",
    b"fastsam",
    b"sam3",
    b"0.3",
    b"NaN",
    b"-1",
    b"1e309",
    b"[[10, 10]]",
    b"[[1, 2, 50, 60]]",
    b"[[1, 2, 3]]",
    b"[1]",
    b"[1, 0]",
    b"true",
    b"maybe",
    b"req-x",
    b"",
    b"\xff\xfe",
]
_HEADER_KEYS = [*sorted(BARE_HEADERS), "SEGPIPE-MODEL", "segpipe-unknown", "traceparent"]


@st.composite
def mutated(draw: st.DrawFn) -> tuple[str, bytes]:
    """A valid seed with up to four byte-level mutations (zero keeps it valid)."""
    name = draw(st.sampled_from(sorted(SEEDS)))
    data = bytearray(SEEDS[name])
    for op in draw(st.lists(st.sampled_from(["flip", "truncate", "insert", "delete", "head"]), max_size=4)):
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[at] ^= draw(st.integers(1, 255))
        elif op == "truncate":
            del data[at:]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=32))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 64))]
        elif op == "head" and data:  # headers are where sizes, formats and lengths live
            data[draw(st.integers(0, min(len(data), 64) - 1))] = draw(st.integers(0, 255))
    return name, bytes(data)


headers_strategy = st.lists(
    st.tuples(
        st.one_of(st.sampled_from(_HEADER_KEYS), st.text(max_size=24)),
        st.one_of(st.none(), st.sampled_from(_HEADER_VALUES), st.binary(max_size=48)),
    ),
    max_size=5,
)


@st.composite
def fresh_image(draw: st.DrawFn) -> bytes:
    """A valid image of any odd size (1x1, 1x1000, grey, RGBA...): the model must cope or fail per request."""
    height = draw(st.one_of(st.integers(1, 160), st.sampled_from([1, 2, 1000])))
    width = draw(st.one_of(st.integers(1, 160), st.sampled_from([1, 3, 1000])))
    channels = draw(st.sampled_from([1, 3, 4]))
    seed = draw(st.integers(0, 2**32 - 1))
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, channels), dtype=np.uint8)
    fmt = draw(st.sampled_from([".png", ".jpg", ".bmp", ".npy"]))
    if fmt == ".npy":
        return npy_bytes(pixels if channels != 1 else pixels[:, :, 0])
    if fmt == ".jpg" and channels == 4:
        pixels = pixels[:, :, :3]
    return encode(pixels, fmt)


@st.composite
def records(draw: st.DrawFn) -> tuple[str, bytes | None, bytes | None, list[tuple[str, bytes | None]]]:
    """(kind, value, key, headers): random bytes, a tombstone, an oversized value, or a mutated valid seed."""
    kind = draw(st.sampled_from(["random"] * 2 + ["mutated"] * 6 + ["fresh"] * 2 + ["tombstone", "oversized"]))
    if kind == "fresh":
        value: bytes | None = draw(fresh_image())
        # FastSAM only: the automatic fallback to SAM2 (~5 s an image here) on these would not fit the budget.
        return kind, value, None, [("segpipe-model", b"fastsam"), *draw(st.one_of(st.just([]), headers_strategy))]
    if kind == "random":
        value = draw(st.binary(max_size=4096))
    elif kind == "tombstone":
        value = None
    elif kind == "oversized":
        value = b"\x89PNG\r\n\x1a\n" + bytes(MAX_RECORD_BYTES)
    else:
        kind, value = draw(mutated())
    headers = draw(st.one_of(st.just([]), headers_strategy))  # half plain records, half with hostile headers
    if kind.startswith("avro") and draw(st.booleans()):
        headers = [("segpipe-format", b"avro-v1"), *headers]
    # sam2 would cost ~5 s an example; a header asking for it is mapped to auto (FastSAM, SAM2 only on fallback).
    headers = [(k, b"auto" if v is not None and v.strip().lower() == b"sam2" else v) for k, v in headers]
    key = draw(st.one_of(st.none(), st.binary(max_size=16)))
    return kind, value, key, headers


# ---------------------------------------------------------------------------------------------------- the property


def _handle(processor: RequestProcessor, record: InboundRecord) -> list[Outcome]:
    """What the worker does with one record: prepare on the decode pool, then the model for what needs it."""
    prepared = processor.prepare(record)
    if isinstance(prepared, PendingSegmentation):
        return processor.segment([prepared])
    return [prepared]


def test_every_payload_yields_exactly_one_outcome(processor: RequestProcessor, report: Report) -> None:
    stats: Counter[str] = Counter()
    offsets = iter(range(10**9))
    started = time.monotonic()

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
    )
    @given(records())
    def check(drawn: tuple[str, bytes | None, bytes | None, list[tuple[str, bytes | None]]]) -> None:
        kind, value, key, headers = drawn
        record = InboundRecord(value, key, tuple(headers), "requests", 0, next(offsets), timestamp_ms=1)
        outcomes = _handle(processor, record)  # must not raise
        assert len(outcomes) == 1, outcomes
        (outcome,) = outcomes
        assert outcome.record is record
        result = outcome.result
        assert decode_result(outcome.result_bytes) == result, "the published bytes decode to the result"
        stats["examples"] += 1
        stats[f"kind:{kind}"] += 1
        if result.status == ResultStatus.OK:
            assert outcome.dead_letter is None and result.model is not None
            stats["ok"] += 1
            stats[f"model:{result.model}"] += 1
            stats["cached"] += int(result.cached)
            return
        letter = outcome.dead_letter
        assert letter is not None, "an error result always comes with a dead letter"
        assert result.error is not None and letter.error == result.error and letter.error.message
        assert (letter.topic, letter.partition, letter.offset) == ("requests", 0, record.offset)
        if value is not None and len(value) + 64 * 1024 > MAX_RECORD_BYTES:
            assert letter.original_value is None and "not copied" in letter.error.message
        else:
            assert letter.original_value == value, "the dead letter keeps the original payload byte for byte"
            assert [(h.key, h.value) for h in letter.original_headers] == headers
        assert decode_dead_letter(encode_dead_letter(letter)) == letter, "and it can be published"
        stats[f"error:{result.error.code}"] += 1

    check()
    elapsed = time.monotonic() - started
    assert stats["examples"] >= EXAMPLES, stats
    assert stats["ok"] > 0 and stats["examples"] - stats["ok"] > 0, f"both paths exercised: {stats}"
    report(payloads=stats["examples"], seconds=round(elapsed, 1), crashes=0, **dict(sorted(stats.items())))


def test_models_are_deterministic_on_cpu(segmenter: Segmenter) -> None:
    """Why a recomputed duplicate equals the original: the same image gives the same masks, run after run."""
    image = noise_pixels(21)
    for model in (ModelChoice.FASTSAM, ModelChoice.SAM2):
        first = segmenter.segment(image, params=SegmentParams(model=model))
        second = segmenter.segment(image, params=SegmentParams(model=model))
        assert first.masks and first.masks == second.masks, model
