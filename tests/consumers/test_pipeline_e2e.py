"""The pipeline end to end: real broker, real Redis, real tiny models, two worker processes in one group."""

from __future__ import annotations

import base64
import hashlib
from collections import Counter, defaultdict
from collections.abc import Callable

import cv2
import numpy as np
import pytest
import redis
from kafka_harness import (
    collect,
    collect_results,
    committed_offsets,
    noise_png,
    produce_all,
)
from worker_harness import PipelineTopics, WorkerProcess

from devstack.services import LocalKafka, free_port
from pipeline.types import Prompts
from schemas import (
    ResultStatus,
    SegmentRequest,
    decode_dead_letter,
    encode_request,
    request_headers,
)

pytestmark = pytest.mark.slow


def _avro(request_id: str, image: bytes, **kwargs: object) -> tuple[bytes, bytes, list]:
    request = SegmentRequest(request_id=request_id, image=image, **kwargs)  # type: ignore[arg-type]
    return request_id.encode(), encode_request(request), request_headers(request)


def test_two_workers_segment_each_distinct_image_once_and_commit(
    kafka: LocalKafka,
    redis_client: redis.Redis,
    pipeline_topics: PipelineTopics,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    """Distinct and repeated images over 4 partitions, two workers: one result each, repeats from the cache."""
    first, second = start_worker(), start_worker()
    first.wait_assigned()
    second.wait_assigned()

    distinct = [noise_png(seed, 120, 160) for seed in range(6)]
    records = [_avro(f"req-{i:02d}", image) for i, image in enumerate(distinct)]
    # The same pixels again, sent in other forms: base64 text, and bare records (image as value, id in a header).
    records += [_avro(f"rep-{i:02d}", base64.b64encode(image)) for i, image in enumerate(distinct[:4])]
    records += [(f"bare-{i}".encode(), distinct[i], [("segpipe-request-id", f"bare-{i:02d}".encode())]) for i in (4, 5)]
    ends = produce_all(kafka.bootstrap, pipeline_topics.input, records)

    results = collect_results(kafka.bootstrap, pipeline_topics.output, expected=len(records))
    assert sorted(r.request_id for r in results) == sorted(
        [f"req-{i:02d}" for i in range(6)] + [f"rep-{i:02d}" for i in range(4)] + ["bare-04", "bare-05"]
    ), "every request gets exactly one result"
    assert all(r.status == ResultStatus.OK for r in results), [r.error for r in results if r.error]

    by_image: dict[str, list] = defaultdict(list)
    for result in results:
        by_image[result.image_sha256].append(result)
    assert len(by_image) == 6, "the same pixels hash the same whatever form they came in"
    for copies in by_image.values():
        assert len(copies) == 2
        computed = [r for r in copies if not r.cached]
        assert len(computed) == 1, "each distinct image is segmented exactly once; its repeat comes from the cache"
        assert "fastsam" not in next(r for r in copies if r.cached).timings_ms, "no model ran for the cache hit"
        assert copies[0].masks == copies[1].masks and copies[0].model == copies[1].model

    assert {r.worker_id for r in results} == {"worker-0", "worker-1"}, "both group members did work"
    assert first.stop() == 0 and second.stop() == 0, "SIGTERM: finish, flush, commit, exit cleanly"
    assert committed_offsets(kafka.bootstrap, pipeline_topics.group, pipeline_topics.input, 4) == {
        p: ends.get(p, -1001) for p in range(4)
    }, "offsets committed up to the last record of each partition"


def test_bad_input_gives_error_result_and_dead_letter_and_worker_survives(
    kafka: LocalKafka,
    redis_client: redis.Redis,
    pipeline_topics: PipelineTopics,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    """Corrupt, empty, malformed-Avro and bad-prompt records: error results + dead letters, then a good one works."""
    worker = start_worker()
    worker.wait_assigned()
    good = noise_png(42, 96, 128)
    records = [
        _avro("corrupt", b"\x89PNG\r\n\x1a\n this is not really a png"),
        _avro("empty", b""),
        (b"malformed", b"\x02\xff\xff\xff garbage", [("segpipe-format", b"avro-v1")]),
        (b"bad-model", good, [("segpipe-request-id", b"bad-model"), ("segpipe-model", b"sam3")]),
        _avro("outside", good, prompts=Prompts(points=((500.0, 10.0),))),
        _avro("fine", good),
    ]
    produce_all(kafka.bootstrap, pipeline_topics.input, records)
    results = {r.request_id: r for r in collect_results(kafka.bootstrap, pipeline_topics.output, expected=6)}
    assert results["fine"].status == ResultStatus.OK
    codes = {rid: r.error.code for rid, r in results.items() if r.error}
    assert codes["corrupt"] == "invalid_image"
    assert codes["empty"] == "invalid_image"
    assert codes["bad-model"] == "invalid_parameters"
    assert codes["outside"] == "invalid_prompt"
    malformed = [rid for rid, code in codes.items() if code == "malformed_request"]
    assert len(malformed) == 1, codes

    letters = [decode_dead_letter(v) for v in collect(kafka.bootstrap, pipeline_topics.dead_letter, expected=5)]
    assert Counter(letter.error.code for letter in letters) == Counter(codes.values())
    originals = {letter.request_id: letter.original_value for letter in letters}
    assert originals["bad-model"] == good, "the dead letter keeps the original payload byte for byte"
    assert all(letter.topic == pipeline_topics.input and letter.offset >= 0 for letter in letters)
    assert worker.process.poll() is None, "the worker is still running"
    assert worker.stop() == 0


def test_redis_unreachable_keeps_working_without_dedup(
    kafka: LocalKafka, pipeline_topics: PipelineTopics, start_worker: Callable[..., WorkerProcess]
) -> None:
    """REDIS_PORT points at nothing: every request still gets its result; none is served from a cache."""
    worker = start_worker(REDIS_PORT=str(free_port()), REDIS_SOCKET_TIMEOUT="0.2")
    worker.wait_assigned()
    image = noise_png(7, 96, 128)
    produce_all(kafka.bootstrap, pipeline_topics.input, [_avro(f"r{i}", image) for i in range(3)])
    results = collect_results(kafka.bootstrap, pipeline_topics.output, expected=3)
    assert sorted(r.request_id for r in results) == ["r0", "r1", "r2"]
    assert all(r.status == ResultStatus.OK and not r.cached for r in results)
    assert worker.stop() == 0
    assert "working without dedup" in worker.log()


def test_noise_png_helper_is_deterministic() -> None:
    """The helper above must give equal bytes for equal seeds, or the dedup assertions would prove nothing."""
    assert noise_png(1, 10, 10) == noise_png(1, 10, 10)
    assert hashlib.sha256(noise_png(1, 10, 10)).digest() != hashlib.sha256(noise_png(2, 10, 10)).digest()
    assert cv2.imdecode(np.frombuffer(noise_png(3, 12, 16), np.uint8), cv2.IMREAD_COLOR).shape == (12, 16, 3)
