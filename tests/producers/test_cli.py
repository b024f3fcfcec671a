"""segpipe-publish run in-process against the real broker: output, inputs, environment defaults, failures."""

from __future__ import annotations

import base64
import io
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, TopicPartition
from PIL import Image

from devstack.services import FAST_GROUP_CONFIG, LocalKafka
from pipeline.types import ModelChoice, Prompts, SegmentParams
from producers.cli import ENV_PREFIX, main
from schemas import decode_request, parse_bare_request

TopicFactory = Callable[..., str]


def png_bytes(value: int = 0) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((4, 4, 3), value, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def read_records(bootstrap: str, topic: str, count: int, timeout: float = 15.0) -> list[Message]:
    """Read ``count`` records of partition 0 from the beginning, by assignment (no group join to wait for)."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"read-{uuid.uuid4().hex[:8]}", **FAST_GROUP_CONFIG}
    )
    consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    records: list[Message] = []
    deadline = time.monotonic() + timeout
    try:
        while len(records) < count:
            assert time.monotonic() < deadline, f"only {len(records)} of {count} records within {timeout} s"
            msg = consumer.poll(0.2)
            if msg is not None:
                assert msg.error() is None, msg.error()
                records.append(msg)
    finally:
        consumer.close()
    return records


def output_lines(capsys: pytest.CaptureFixture[str]) -> list[tuple[str, str]]:
    out = capsys.readouterr().out
    return [tuple(line.split("\t")) for line in out.splitlines()]  # type: ignore[misc]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The developer's own SEGPIPE_PUBLISH_* / KAFKA_* variables must not leak into these tests."""
    for name in list(os.environ):
        if name.startswith((ENV_PREFIX, "KAFKA_")):
            monkeypatch.delenv(name)


@pytest.fixture
def images(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    (folder / "b.png").write_bytes(png_bytes(1))
    (folder / "a.png").write_bytes(png_bytes(2))
    (folder / "sub" / "c.png").write_bytes(png_bytes(3))
    (folder / "readme.txt").write_text("not an image")
    return folder


def test_files_and_directories_print_ids_and_sources(
    kafka: LocalKafka, topic_factory: TopicFactory, images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    topic = topic_factory("cli")
    single = tmp_path / "single.png"
    single.write_bytes(png_bytes(9))
    status = main(
        [str(single), str(images), "--bootstrap-servers", kafka.bootstrap, "--topic", topic, "--points", "[[1, 2]]"]
    )
    assert status == 0
    lines = output_lines(capsys)
    assert [source for _, source in lines] == ["single.png", "a.png", "b.png"]

    records = read_records(kafka.bootstrap, topic, 3)
    assert [decode_request(r.value()).request_id for r in records] == [request_id for request_id, _ in lines]
    requests = [decode_request(r.value()) for r in records]
    assert [r.image for r in requests] == [png_bytes(9), png_bytes(2), png_bytes(1)]
    assert all(r.prompts == Prompts(points=((1.0, 2.0),)) for r in requests)


def test_recursive_bare_with_parameters(
    kafka: LocalKafka, topic_factory: TopicFactory, images: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    topic = topic_factory("cli")
    argv = [str(images), "--recursive", "--bare", "--bootstrap-servers", kafka.bootstrap, "--topic", topic]
    argv += ["--model", "SAM2", "--conf", "0.3", "--iou", "0.6", "--imgsz", "320", "--max-contours", "2"]
    argv += ["--no-mask-post-processing", "--fallback-min-score", "0.8", "--reply-to", "mine"]
    argv += ["--points", "[[1, 1], [2, 2]]", "--labels", "[1, 0]", "--boxes", "[[0, 0, 3, 3]]", "--no-progress"]
    assert main(argv) == 0
    lines = output_lines(capsys)
    assert [source for _, source in lines] == ["a.png", "b.png", "sub/c.png"]

    for record, (request_id, source) in zip(read_records(kafka.bootstrap, topic, 3), lines, strict=True):
        request = parse_bare_request(record.value(), record.headers(), fallback_request_id="unused")
        assert request.request_id == request_id and request.source == source and request.reply_to == "mine"
        assert request.params == SegmentParams(
            model=ModelChoice.SAM2,
            conf=0.3,
            iou=0.6,
            imgsz=320,
            max_contours=2,
            mask_post_processing=False,
            fallback_min_score=0.8,
        )
        assert request.prompts == Prompts(
            points=((1.0, 1.0), (2.0, 2.0)), point_labels=(1, 0), boxes=((0.0, 0.0, 3.0, 3.0),)
        )


def test_base64_file_stdin_and_repeat(
    kafka: LocalKafka,
    topic_factory: TopicFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    topic = topic_factory("cli")
    text = base64.b64encode(png_bytes(5)).decode("ascii") + "\n"
    b64_file = tmp_path / "image.b64"
    b64_file.write_text(text)
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(png_bytes(6))))

    argv = ["--base64-file", str(b64_file), "--stdin", "--repeat", "2"]
    assert main([*argv, "--bootstrap-servers", kafka.bootstrap, "--topic", topic]) == 0
    lines = output_lines(capsys)
    assert [source for _, source in lines] == ["image.b64", "image.b64", "stdin", "stdin"]
    assert len({request_id for request_id, _ in lines}) == 4  # repeats are distinct requests (the cache dedups)

    requests = [decode_request(r.value()) for r in read_records(kafka.bootstrap, topic, 4)]
    assert [r.image for r in requests] == [text.encode()] * 2 + [png_bytes(6)] * 2


def test_environment_defaults_and_flags_winning(
    kafka: LocalKafka,
    topic_factory: TopicFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    env_topic, kafka_topic = topic_factory("cli-env"), topic_factory("cli-kafka")
    image = tmp_path / "x.png"
    image.write_bytes(png_bytes())
    monkeypatch.setenv("SEGPIPE_PUBLISH_BOOTSTRAP_SERVERS", kafka.bootstrap)
    monkeypatch.setenv("SEGPIPE_PUBLISH_TOPIC", env_topic)
    monkeypatch.setenv("SEGPIPE_PUBLISH_MODEL", "fastsam")
    monkeypatch.setenv("SEGPIPE_PUBLISH_CONF", "0.4")
    monkeypatch.setenv("SEGPIPE_PUBLISH_BARE", "yes")
    monkeypatch.setenv("SEGPIPE_PUBLISH_MASK_POST_PROCESSING", "on")
    monkeypatch.setenv("SEGPIPE_PUBLISH_REPEAT", "2")
    monkeypatch.setenv("SEGPIPE_PUBLISH_POINTS", "[[3, 3]]")
    assert main([str(image), "--conf", "0.9"]) == 0
    assert len(output_lines(capsys)) == 2
    for record in read_records(kafka.bootstrap, env_topic, 2):
        request = parse_bare_request(record.value(), record.headers(), fallback_request_id="unused")
        assert request.params == SegmentParams(model=ModelChoice.FASTSAM, conf=0.9, mask_post_processing=True)
        assert request.prompts.points == ((3.0, 3.0),)

    # Without SEGPIPE_PUBLISH_TOPIC / _BOOTSTRAP_SERVERS the KAFKA_* settings apply; a false boolean variable works.
    monkeypatch.delenv("SEGPIPE_PUBLISH_TOPIC")
    monkeypatch.delenv("SEGPIPE_PUBLISH_BOOTSTRAP_SERVERS")
    monkeypatch.setenv("SEGPIPE_PUBLISH_BARE", "0")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka.bootstrap)
    monkeypatch.setenv("KAFKA_INPUT_TOPIC", kafka_topic)
    assert main([str(image), "--repeat", "1"]) == 0
    ((request_id, _),) = output_lines(capsys)
    (record,) = read_records(kafka.bootstrap, kafka_topic, 1)
    request = decode_request(record.value())
    assert request.request_id == request_id
    assert request.params == SegmentParams(model=ModelChoice.FASTSAM, conf=0.4, mask_post_processing=True)


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        ([], {}, "nothing to publish"),
        (["missing.png"], {}, "no such file"),
        (["--stdin", "--points", "not json"], {}, "--points"),
        (["--stdin", "--points", "[[1]]"], {}, "--points[0]"),
        (["--stdin", "--points", "[[1, 2]]", "--labels", "[1, 1]"], {}, "--labels"),
        (["--stdin", "--model", "sam3"], {}, "model must be one of auto, fastsam, sam2, got 'sam3'"),
        (["--stdin", "--repeat", "0"], {}, "at least 1"),
        (["--stdin", "--unknown-flag"], {}, "unrecognized"),
        (["--stdin"], {"SEGPIPE_PUBLISH_IMGSZ": "big"}, "imgsz must be an integer in [32, 4096]"),
        (["--stdin"], {"SEGPIPE_PUBLISH_BARE": "maybe"}, "SEGPIPE_PUBLISH_BARE"),
        (["--stdin"], {"KAFKA_MESSAGE_MAX_BYTES": "1"}, "KAFKA"),
    ],
)
def test_bad_arguments_exit_1_with_a_message(
    argv: list[str],
    env: dict[str, str],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"img")))
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "error" in captured.err and message in captured.err


def test_oversized_image_stops_with_exit_1(
    kafka: LocalKafka,
    topic_factory: TopicFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    topic = topic_factory("cli")
    small, large = tmp_path / "a.png", tmp_path / "b.png"
    small.write_bytes(b"x" * 10)
    large.write_bytes(b"x" * 5000)
    monkeypatch.setenv("KAFKA_MESSAGE_MAX_BYTES", "2000")
    assert main([str(small), str(large), "--bootstrap-servers", kafka.bootstrap, "--topic", topic]) == 1
    captured = capsys.readouterr()
    assert "b.png" in captured.err and "KAFKA_MESSAGE_MAX_BYTES" in captured.err
    ((request_id, source),) = [tuple(line.split("\t")) for line in captured.out.splitlines()]
    assert source == "a.png"  # what was published before the refusal is still delivered and reported
    assert decode_request(read_records(kafka.bootstrap, topic, 1)[0].value()).request_id == request_id


def test_undelivered_requests_exit_1(
    kafka: LocalKafka, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    image = tmp_path / "x.png"
    image.write_bytes(png_bytes())
    monkeypatch.setenv("KAFKA_EXTRA_CONFIG", '{"message.timeout.ms": 1500, "log_level": 0}')
    # The broker answers (so the pre-flight probe passes) but refuses the records: an invalid topic name.
    assert main([str(image), "--bootstrap-servers", kafka.bootstrap, "--topic", "invalid/topic?"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "not delivered" in captured.err and "1 request(s) not delivered" in captured.err


def test_help_lists_environment_variables(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("MODEL", "POINTS", "LABELS", "BOXES", "MAX_CONTOURS", "BASE64_FILE", "BARE", "TOPIC", "REPEAT"):
        assert f"SEGPIPE_PUBLISH_{name}" in out
