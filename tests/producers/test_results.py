"""The results follower against the real broker: decoding, stop conditions, summaries and the command."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable

import numpy as np
import pytest
from confluent_kafka import Producer

from devstack.services import FAST_GROUP_CONFIG, LocalKafka
from pipeline.masks import encode_rle
from pipeline.types import FallbackReason, MaskRecord, ModelName, SegmentationResult
from producers.results import (
    follow_dead_letters,
    follow_results,
    format_dead_letter,
    format_summary,
    main,
    result_to_json_dict,
)
from schemas import (
    DeadLetter,
    ErrorInfo,
    Header,
    SegmentResultMessage,
    encode_dead_letter,
    encode_result,
)
from segpipe.config import KafkaSettings

TopicFactory = Callable[..., str]


def mask(value: int, score: float) -> MaskRecord:
    pixels = np.zeros((4, 6), dtype=bool)
    pixels[1:3, value : value + 2] = True
    return MaskRecord(
        rle=encode_rle(pixels),
        polygons=((float(value), 1.0, value + 1.0, 1.0, value + 1.0, 2.0),),
        bbox=(float(value), 1.0, 2.0, 2.0),
        area=4,
        predicted_iou=score,
        stability_score=0.5,
    )


def ok_result(request_id: str, *, cached: bool = False) -> SegmentResultMessage:
    core = SegmentationResult(
        masks=(mask(0, 0.25), mask(3, 0.875)),
        model=ModelName.SAM2,
        fallback_reason=FallbackReason.LOW_SCORE,
        fallback_detail="best 0.2 < 0.5",
        width=6,
        height=4,
        inference_width=6,
        inference_height=4,
        timings_ms={"fastsam": 10.0, "sam2": 20.5},
    )
    return SegmentResultMessage.ok(
        request_id, core, image_sha256="ab" * 32, worker_id="w1", cached=cached, source=f"{request_id}.png"
    )


def error_result(request_id: str) -> SegmentResultMessage:
    return SegmentResultMessage.failure(
        request_id, ErrorInfo("invalid_image", "not an image"), worker_id="w2", timings_ms={"decode": 1.5}
    )


def produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    """Each value in its own batch (flush per record): tansu's offset queries misbehave on multi-record batches."""
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    for value in values:
        producer.produce(topic, value=value)
        assert producer.flush(10) == 0


@pytest.fixture
def settings(kafka: LocalKafka, topic_factory: TopicFactory) -> KafkaSettings:
    return KafkaSettings(
        bootstrap_servers=kafka.bootstrap,
        output_topic=topic_factory("results"),
        dead_letter_topic=topic_factory("dead"),
        session_timeout_ms=FAST_GROUP_CONFIG["session.timeout.ms"],
        heartbeat_interval_ms=FAST_GROUP_CONFIG["heartbeat.interval.ms"],
    )


@pytest.fixture
def three_results(settings: KafkaSettings) -> list[SegmentResultMessage]:
    results = [ok_result("r1"), error_result("r2"), ok_result("r3", cached=True)]
    produce(settings.bootstrap_servers, settings.output_topic, [encode_result(r) for r in results])
    return results


def test_yields_decoded_results_and_stops_at_max(
    settings: KafkaSettings, three_results: list[SegmentResultMessage]
) -> None:
    started = time.monotonic()
    got = list(follow_results(settings, max_results=2))
    assert got == three_results[:2]
    assert time.monotonic() - started < 5


def test_stops_once_every_requested_id_is_seen(
    settings: KafkaSettings, three_results: list[SegmentResultMessage]
) -> None:
    assert list(follow_results(settings, request_ids={"r3", "r1"})) == [three_results[0], three_results[2]]


def test_stops_after_silence_and_skips_garbage(
    settings: KafkaSettings, three_results: list[SegmentResultMessage], caplog: pytest.LogCaptureFixture
) -> None:
    produce(settings.bootstrap_servers, settings.output_topic, [b"not avro at all", encode_result(ok_result("r4"))])
    started = time.monotonic()
    got = list(follow_results(settings, timeout_s=1.0))
    elapsed = time.monotonic() - started
    assert [r.request_id for r in got] == ["r1", "r2", "r3", "r4"]
    assert 1.0 <= elapsed < 5
    assert "skipping undecodable record" in caplog.text


def test_latest_skips_what_is_already_there(settings: KafkaSettings, three_results: list[SegmentResultMessage]) -> None:
    later = ok_result("later")

    def publish_later() -> None:
        time.sleep(1.0)
        produce(settings.bootstrap_servers, settings.output_topic, [encode_result(later)])

    thread = threading.Thread(target=publish_later)
    thread.start()
    try:
        assert list(follow_results(settings, from_beginning=False, timeout_s=4.0, max_results=1)) == [later]
    finally:
        thread.join()


def test_a_missing_topic_ends_at_the_timeout(settings: KafkaSettings) -> None:
    started = time.monotonic()
    assert list(follow_results(settings, topic="never-created-topic", timeout_s=0.5)) == []
    assert time.monotonic() - started < 5


def test_group_member_resumes_after_what_it_yielded(
    settings: KafkaSettings, three_results: list[SegmentResultMessage]
) -> None:
    group = f"results-test-{uuid.uuid4().hex[:8]}"
    first = follow_results(settings, group_id=group, max_results=2, timeout_s=15)
    assert [r.request_id for r in first] == ["r1", "r2"]
    # The stored offsets are committed on close: the next member of the group starts after them.
    assert [r.request_id for r in follow_results(settings, group_id=group, max_results=1, timeout_s=15)] == ["r3"]


def test_dead_letters(settings: KafkaSettings) -> None:
    letters = [
        DeadLetter(
            request_id=rid,
            error=ErrorInfo("malformed_request", "bad avro"),
            original_value=b"\x00garbage",
            original_key=rid.encode() if rid else None,
            original_headers=(Header("segpipe-format", b"avro-v1"),),
            topic="segpipe.requests",
            partition=0,
            offset=7,
            worker_id="w1",
            failed_at_ms=1_700_000_000_000,
        )
        for rid in (None, "d1")
    ]
    produce(settings.bootstrap_servers, settings.dead_letter_topic, [encode_dead_letter(dl) for dl in letters])
    assert list(follow_dead_letters(settings, max_results=2)) == letters
    assert list(follow_dead_letters(settings, request_ids={"d1"})) == letters[1:]
    line = format_dead_letter(letters[0])
    assert line.startswith("-  dead-letter  error=malformed_request")
    assert "from=segpipe.requests[0]@7" in line and "value_bytes=8" in line


def test_format_summary() -> None:
    ok = format_summary(ok_result("r1", cached=True))
    assert ok.split("  ") == [
        "r1",
        "ok",
        "model=sam2(fallback=low_score)",
        "masks=2",
        "best=0.875",
        "cached=yes",
        "size=6x4",
        "total_ms=30.5",
        "error=-",
    ]
    failed = format_summary(error_result("r2"))
    assert failed.split("  ") == [
        "r2",
        "error",
        "model=-",
        "masks=0",
        "best=-",
        "cached=no",
        "size=-",
        "total_ms=1.5",
        "error=invalid_image",
    ]


def test_json_keeps_or_drops_mask_data() -> None:
    full = result_to_json_dict(ok_result("r1"))
    assert full["masks"][0]["rle"]["counts"] and full["masks"][0]["polygons"]
    light = result_to_json_dict(ok_result("r1"), masks=False)
    assert light["masks"][1] == {
        "bbox": [3.0, 1.0, 2.0, 2.0],
        "area": 4,
        "predicted_iou": 0.875,
        "stability_score": 0.5,
    }
    json.dumps(full)


def test_command_prints_summaries_and_json(
    settings: KafkaSettings, three_results: list[SegmentResultMessage], capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["--bootstrap-servers", settings.bootstrap_servers, "--topic", settings.output_topic]
    assert main([*base, "--max", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [format_summary(r) for r in three_results]

    assert main([*base, "--format", "json", "--request-id", "r1"]) == 0
    (record,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert record["request_id"] == "r1" and record["masks"][0]["rle"]["counts"] == three_results[0].masks[0].rle.counts

    assert main([*base, "--format", "json", "--no-masks", "--max", "1"]) == 0
    (record,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert "rle" not in record["masks"][0] and "polygons" not in record["masks"][0]


def test_command_exit_1_for_unseen_ids_and_bad_arguments(
    settings: KafkaSettings, three_results: list[SegmentResultMessage], capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["--bootstrap-servers", settings.bootstrap_servers, "--topic", settings.output_topic]
    assert main([*base, "--request-id", "r2", "--request-id", "nope", "--timeout", "1"]) == 1
    captured = capsys.readouterr()
    assert captured.out.startswith("r2  error") and "not seen: nope" in captured.err
    assert main([*base, "--max", "0"]) == 1
    assert main([*base, "--format", "xml"]) == 1
    assert "error" in capsys.readouterr().err
