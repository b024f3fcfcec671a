"""SegmentationProducer against the real broker: every input form round-trips, refusals happen before sending."""

from __future__ import annotations

import base64
import io
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, TopicPartition
from PIL import Image

from devstack.services import FAST_GROUP_CONFIG, LocalKafka, free_port
from pipeline.errors import InvalidParametersError, InvalidPromptError
from pipeline.image_io import decode_image
from pipeline.types import ModelChoice, Prompts, SegmentParams
from producers import IMAGE_EXTENSIONS, Delivery, Failure, PublishError, SegmentationProducer
from producers.publisher import image_key
from schemas import FORMAT_AVRO, FORMAT_HEADER, decode_request, parse_bare_request
from segpipe.config import KafkaSettings
from segpipe.kafka import make_producer

TopicFactory = Callable[..., str]

PIXELS = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)


def png_bytes(array: np.ndarray = PIXELS) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def read_records(bootstrap: str, topic: str, count: int, timeout: float = 15.0) -> list[Message]:
    """Read ``count`` records of partition 0 from the beginning, by assignment (no group join to wait for)."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"read-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            **FAST_GROUP_CONFIG,
        }
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


def header_dict(msg: Message) -> dict[str, bytes]:
    return dict(msg.headers() or [])


@pytest.fixture
def settings(kafka: LocalKafka, topic_factory: TopicFactory) -> KafkaSettings:
    return KafkaSettings(
        bootstrap_servers=kafka.bootstrap,
        input_topic=topic_factory("pub"),
        session_timeout_ms=FAST_GROUP_CONFIG["session.timeout.ms"],
        heartbeat_interval_ms=FAST_GROUP_CONFIG["heartbeat.interval.ms"],
    )


def test_each_input_form_round_trips_as_avro(settings: KafkaSettings, tmp_path: Path) -> None:
    png = png_bytes()
    text = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    image_file = tmp_path / "cat.png"
    image_file.write_bytes(png)
    params = SegmentParams(model=ModelChoice.SAM2, conf=0.25, imgsz=640, mask_post_processing=False)

    with SegmentationProducer(settings) as producer:
        ids = [
            producer.publish(
                png,
                points=[[1, 2], [3.5, 1]],
                point_labels=[1, 0],
                boxes=[[0, 0, 4, 3]],
                params=params,
                source="bytes",
                reply_to="replies",
            ),
            producer.publish(text),
            producer.publish(PIXELS, request_id="array-1"),
            producer.publish(image_file),
        ]
        deliveries = producer.flush()
    assert ids[2] == "array-1"
    assert len(set(ids)) == 4 and all(len(i) == 32 for i in ids[:2] + ids[3:])  # uuid4 hex by default
    assert deliveries == [Delivery(rid, settings.input_topic, 0, offset) for offset, rid in enumerate(ids)]

    records = read_records(settings.bootstrap_servers, settings.input_topic, 4)
    requests = [decode_request(r.value()) for r in records]
    assert [r.key() for r in records] == [image_key(r.image) for r in requests]  # repeats share a partition
    for record, request in zip(records, requests, strict=True):
        headers = header_dict(record)
        assert headers[FORMAT_HEADER] == FORMAT_AVRO
        assert headers["segpipe-request-id"] == request.request_id.encode()
        assert len(record.key()) == 32
        assert request.submitted_at_ms > 0

    first, b64, array, from_file = requests
    assert first.image == png
    assert first.prompts == Prompts(points=((1.0, 2.0), (3.5, 1.0)), point_labels=(1, 0), boxes=((0.0, 0.0, 4.0, 3.0),))
    assert first.params == SegmentParams(model=ModelChoice.SAM2, conf=0.25, imgsz=640, mask_post_processing=False)
    assert (first.source, first.reply_to) == ("bytes", "replies")
    assert b64.image == text.encode("utf-8") and b64.source is None
    np.testing.assert_array_equal(np.load(io.BytesIO(array.image), allow_pickle=False), PIXELS)
    assert from_file.image == png and from_file.source == "cat.png"
    for request in requests:
        np.testing.assert_array_equal(decode_image(request.image), PIXELS)


def test_grey_array_is_sent_as_npy(settings: KafkaSettings) -> None:
    grey = np.full((3, 2), 200, dtype=np.uint8)
    with SegmentationProducer(settings) as producer:
        producer.publish(grey)
    (record,) = read_records(settings.bootstrap_servers, settings.input_topic, 1)
    payload = decode_request(record.value()).image
    np.testing.assert_array_equal(np.load(io.BytesIO(payload), allow_pickle=False), grey)
    np.testing.assert_array_equal(decode_image(payload), np.repeat(grey[:, :, None], 3, axis=2))


def test_bare_mode_reads_back_with_the_same_request(settings: KafkaSettings) -> None:
    png = png_bytes()
    params = SegmentParams(
        model=ModelChoice.FASTSAM,
        conf=0.1 + 0.2,  # not exactly representable in short decimal: repr must round-trip it
        iou=0.5,
        imgsz=512,
        max_contours=3,
        mask_post_processing=True,
        fallback_min_score=np.float32(0.75),
    )
    with SegmentationProducer(settings, bare=True) as producer:
        full = producer.publish(
            png,
            points=np.array([[1, 2]]),
            point_labels=[1],
            boxes=[[0, 0, 4, 3]],
            params=params,
            source="s.png",
            reply_to="r",
        )
        plain = producer.publish("aGVsbG8=")
    first, second = read_records(settings.bootstrap_servers, settings.input_topic, 2)

    assert first.value() == png and first.key() == image_key(png)
    assert FORMAT_HEADER not in header_dict(first)
    request = parse_bare_request(first.value(), first.headers(), fallback_request_id="unused")
    assert request.request_id == full
    assert request.params == SegmentParams(
        model=ModelChoice.FASTSAM,
        conf=0.1 + 0.2,
        iou=0.5,
        imgsz=512,
        max_contours=3,
        mask_post_processing=True,
        fallback_min_score=float(np.float32(0.75)),
    )
    assert request.prompts == Prompts(points=((1.0, 2.0),), point_labels=(1,), boxes=((0.0, 0.0, 4.0, 3.0),))
    assert (request.source, request.reply_to) == ("s.png", "r")

    assert second.value() == b"aGVsbG8="
    bare = parse_bare_request(second.value(), second.headers(), fallback_request_id="unused")
    assert bare.request_id == plain and second.key() == image_key(b"aGVsbG8=")
    assert bare.params == SegmentParams() and bare.prompts == Prompts()
    assert set(header_dict(second)) == {"segpipe-request-id", "segpipe-model"}


def test_directory_publishing_picks_images_sorted(settings: KafkaSettings, tmp_path: Path) -> None:
    png = png_bytes()
    for name in ("b.png", "a.JPG", "c.npy", "notes.txt", "d.gif", "sub/e.webp", "sub/deeper/f.tif", "sub/g.md"):
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png)
    (tmp_path / "dir.png").mkdir()  # a directory named like an image is not a file

    with SegmentationProducer(settings) as producer:
        flat = producer.publish_directory(tmp_path)
        deep = producer.publish_directory(tmp_path, recursive=True, progress=True)
    assert len(flat) == 3 and len(deep) == 5

    records = read_records(settings.bootstrap_servers, settings.input_topic, 8)
    sources = [decode_request(r.value()).source for r in records]
    assert [decode_request(r.value()).request_id for r in records] == flat + deep
    assert sources[:3] == ["a.JPG", "b.png", "c.npy"]
    assert sources[3:] == ["a.JPG", "b.png", "c.npy", "sub/deeper/f.tif", "sub/e.webp"]
    assert ".gif" not in IMAGE_EXTENSIONS


def test_publish_files_keeps_order_and_refuses_a_shared_id(settings: KafkaSettings, tmp_path: Path) -> None:
    paths = []
    for name in ("z.png", "y.png"):
        paths.append(tmp_path / name)
        paths[-1].write_bytes(png_bytes())
    with SegmentationProducer(settings) as producer:
        with pytest.raises(ValueError, match="request_id"):
            producer.publish_files(paths, request_id="same")
        ids = producer.publish_files(paths, params=SegmentParams(model=ModelChoice.SAM2))
    records = read_records(settings.bootstrap_servers, settings.input_topic, 2)
    decoded = [decode_request(r.value()) for r in records]
    assert [d.request_id for d in decoded] == ids
    assert [d.source for d in decoded] == ["z.png", "y.png"]
    assert all(d.params.model == ModelChoice.SAM2 for d in decoded)


def test_oversized_payload_is_refused_before_sending(kafka: LocalKafka, topic_factory: TopicFactory) -> None:
    small = KafkaSettings(bootstrap_servers=kafka.bootstrap, input_topic=topic_factory("big"), message_max_bytes=1000)
    with SegmentationProducer(small) as producer:
        with pytest.raises(ValueError, match="KAFKA_MESSAGE_MAX_BYTES=1000"):
            producer.publish(b"x" * 2000)
        assert producer.in_flight == 0
        producer.publish(b"x" * 100)  # well under the limit: goes through
        assert len(producer.flush()) == 1
    with SegmentationProducer(small, bare=True) as bare:
        with pytest.raises(ValueError, match="KAFKA_MESSAGE_MAX_BYTES"):
            bare.publish(b"x" * 2000)
        assert bare.in_flight == 0


def test_bad_requests_are_refused_before_sending(settings: KafkaSettings, tmp_path: Path) -> None:
    with SegmentationProducer(settings) as producer:
        with pytest.raises(InvalidPromptError, match="points"):
            producer.publish(b"img", points=[[1]])
        with pytest.raises(InvalidPromptError, match="labels"):
            producer.publish(b"img", points=[[1, 2]], point_labels=[1, 1])
        with pytest.raises(InvalidPromptError, match="boxes"):
            producer.publish(b"img", boxes=[[1, 2, 3]])
        with pytest.raises(InvalidParametersError, match="model must be one of auto, fastsam, sam2"):
            producer.publish(b"img", params=SegmentParams(model="sam3"))  # the spec refuses it on construction
        with pytest.raises(InvalidParametersError, match="conf"):
            producer.publish(b"img", params=SegmentParams(conf="high"))  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="empty"):
            producer.publish(b"")
        with pytest.raises(ValueError, match=r"pathlib\.Path"):
            producer.publish(str(tmp_path / "cat.png"))
        with pytest.raises(ValueError, match=r"float32 has values in \[0, 2\]: a float image must be in \[0, 1\]"):
            producer.publish(np.array([[0.0, 2.0]], dtype=np.float32))
        producer.publish(np.array([[0.0, 0.5]], dtype=np.float32))  # [0, 1] floats are an image: this one is sent
        with pytest.raises(ValueError, match="shape"):
            producer.publish(np.zeros((2, 2, 2), dtype=np.uint8))
        with pytest.raises(FileNotFoundError):
            producer.publish(tmp_path / "missing.png")
        with pytest.raises(TypeError):
            producer.publish(12345)  # type: ignore[arg-type]
        assert len(producer.flush()) == 1, "only the float image went out"


def test_full_local_queue_waits_instead_of_failing(settings: KafkaSettings) -> None:
    client = make_producer(settings, **{"queue.buffering.max.messages": 1})
    producer = SegmentationProducer(settings, producer=client)
    ids = [producer.publish(b"image %d" % i) for i in range(5)]
    assert [d.request_id for d in producer.flush()] == ids
    producer.close()
    records = read_records(settings.bootstrap_servers, settings.input_topic, 5)
    assert [decode_request(r.value()).request_id for r in records] == ids


def test_repeats_of_an_image_share_a_key_and_request_id_keys_stay_available(settings: KafkaSettings) -> None:
    """Default key: the image's hash, so repeats land on one partition (one worker's caches); key_by="request_id"
    keys by the id as before."""
    with SegmentationProducer(settings) as by_image:  # one after the other: the records' order is known
        ids = [by_image.publish(b"same image"), by_image.publish(b"same image", boxes=[[0, 0, 2, 2]])]
        ids.append(by_image.publish(b"other image"))
    with SegmentationProducer(settings, key_by="request_id") as by_id:
        ids.append(by_id.publish(b"same image"))
    keys = [r.key() for r in read_records(settings.bootstrap_servers, settings.input_topic, 4)]
    assert keys[0] == keys[1] == image_key(b"same image") != keys[2]
    assert keys[3] == ids[3].encode()


def test_unreachable_broker_raises_publish_error() -> None:
    settings = KafkaSettings(bootstrap_servers=f"127.0.0.1:{free_port()}", input_topic="nowhere")
    client = make_producer(settings, **{"message.timeout.ms": 2000, "log_level": 0})
    producer = SegmentationProducer(settings, producer=client)
    request_id = producer.publish(b"img")
    started = time.monotonic()
    with pytest.raises(PublishError) as caught:
        producer.flush(timeout=15)
    assert time.monotonic() - started < 10
    assert caught.value.request_ids == [request_id]
    assert "TIMED_OUT" in caught.value.failures[0].reason
    assert producer.failures == list(caught.value.failures) and producer.deliveries == []
    assert producer.flush() == []  # reported once; nothing left in flight
    producer.close()


def test_flush_timeout_reports_requests_still_queued() -> None:
    settings = KafkaSettings(bootstrap_servers=f"127.0.0.1:{free_port()}", input_topic="nowhere")
    producer = SegmentationProducer(settings)
    request_id = producer.publish(b"img")
    with pytest.raises(PublishError, match="still queued") as caught:
        producer.flush(timeout=0.2)
    assert caught.value.request_ids == [request_id]
    assert producer.in_flight == 1
    with pytest.raises(PublishError, match="PURGE"):
        producer.close(timeout=0.1)  # gives up on it: purged, reported, producer released


def test_context_manager_does_not_mask_the_original_error() -> None:
    settings = KafkaSettings(bootstrap_servers=f"127.0.0.1:{free_port()}", input_topic="nowhere")
    client = make_producer(settings, **{"message.timeout.ms": 300, "log_level": 0})
    with pytest.raises(KeyError), SegmentationProducer(settings, producer=client) as producer:
        producer.publish(b"img")
        raise KeyError("boom")
    assert [f.request_id for f in producer.failures] != []


def test_on_delivery_reports_each_request_and_history_can_be_off(settings: KafkaSettings) -> None:
    """What the gateway relies on: a per-request outcome callback, and no ever-growing history in a service."""
    producer = SegmentationProducer(settings, keep_history=False)
    outcomes: list[Delivery | Failure] = []
    request_id = producer.publish(b"img", on_delivery=outcomes.append)
    assert producer.flush() == []  # delivered, but not kept
    assert [(o.request_id, type(o)) for o in outcomes] == [(request_id, Delivery)]
    assert producer.deliveries == [] and producer.in_flight == 0
    producer.close()

    unreachable = KafkaSettings(bootstrap_servers=f"127.0.0.1:{free_port()}", input_topic="nowhere")
    client = make_producer(unreachable, **{"message.timeout.ms": 500, "log_level": 0})
    failing = SegmentationProducer(unreachable, producer=client)

    def raising(_outcome: Delivery | Failure) -> None:
        raise RuntimeError("a broken callback must not break delivery reporting")

    failed_id = failing.publish(b"img", on_delivery=outcomes.append)
    failing.publish(b"img", on_delivery=raising)
    with pytest.raises(PublishError):
        failing.flush(timeout=15)
    assert isinstance(outcomes[-1], Failure) and outcomes[-1].request_id == failed_id
    assert len(failing.failures) == 2, "history is kept by default"
    failing.close()
