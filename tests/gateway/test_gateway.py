"""The HTTP gateway over real HTTP: ``python -m gateway.app`` subprocesses, the real broker, a real worker.

One worker and one gateway serve the whole module (a worker loads its models and joins its group once, which
costs seconds); the timeout and broker-down tests start their own gateway, without a worker or with a broker of
their own that they stop.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from gateway_harness import GatewayProcess, launch_gateway
from worker_harness import PipelineTopics, WorkerProcess, launch_worker, worker_environment

from devstack.services import LocalKafka, LocalRedis, create_topics, delete_topics, start_kafka
from gateway.app import STATUS_BY_CODE, Gateway, GatewaySettings, result_to_api
from pipeline.masks import decode_rle
from pipeline.types import RLE, ModelName
from schemas import ErrorInfo, SegmentResultMessage
from segpipe.config import KafkaSettings
from segpipe.kafka import make_admin

pytestmark = pytest.mark.slow

WIDTH, HEIGHT = 160, 120


def noise_png(seed: int, height: int, width: int) -> bytes:
    """A PNG of seeded noise (distinct seeds, distinct images: no dedup hit between tests)."""
    pixels = (np.random.default_rng(seed).random((height, width, 3)) * 255).astype(np.uint8)
    ok, encoded = cv2.imencode(".png", pixels)
    assert ok
    return encoded.tobytes()


@dataclass
class Stack:
    gateway: GatewayProcess
    worker: WorkerProcess
    topics: PipelineTopics


@pytest.fixture(scope="module")
def stack(
    kafka: LocalKafka,
    redis_server: LocalRedis,
    demo_checkpoints: tuple[Path, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    """A worker and a gateway on fresh topics, shared by the tests of this module."""
    suffix = uuid.uuid4().hex[:8]
    topics = PipelineTopics(f"gw-requests-{suffix}", f"gw-results-{suffix}", f"gw-dead-{suffix}", f"gw-{suffix}")
    create_topics(kafka.bootstrap, {topics.input: 2, topics.output: 1, topics.dead_letter: 1})
    logs = tmp_path_factory.mktemp("gateway-stack")
    env = worker_environment(kafka, redis_server, demo_checkpoints, topics)
    worker = launch_worker({**env, "WORKER_ID": "gateway-worker"}, logs / "worker.log")
    gateway = launch_gateway({**env, "GATEWAY_INSTANCE_ID": f"test-{suffix}"}, logs / "gateway.log")
    try:
        worker.wait_assigned()
        gateway.wait_healthy()
        yield Stack(gateway, worker, topics)
    finally:
        gateway.stop()
        worker.kill()
        if kafka.process.poll() is None:
            delete_topics(kafka.bootstrap, [topics.input, topics.output, topics.dead_letter])


def post_json(stack: Stack, body: dict[str, object], timeout: float = 120.0) -> httpx.Response:
    return httpx.post(f"{stack.gateway.url}/segment", json=body, timeout=timeout)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def assert_original_shape(body: dict[str, object]) -> None:
    """The original API's keys and types, which old clients rely on."""
    assert body["success"] is True
    masks = body["masks"]
    assert isinstance(masks, list) and body["num_masks"] == len(masks)
    for mask in masks:
        assert {"segmentation", "area", "bbox", "predicted_iou", "stability_score"} <= set(mask)
        assert isinstance(mask["area"], int) and mask["area"] > 0
        assert len(mask["bbox"]) == 4 and all(isinstance(v, int | float) for v in mask["bbox"])
        assert isinstance(mask["predicted_iou"], float) and isinstance(mask["stability_score"], float)
        # The original API's documented form: one polygon as [x, y] points.
        assert len(mask["segmentation"]) >= 3, "a polygon"
        assert all(len(point) == 2 and all(isinstance(v, int | float) for v in point) for point in mask["segmentation"])
        assert mask["polygons"][0] == mask["segmentation"]


def test_post_base64_json_answers_masks_in_the_original_shape(stack: Stack) -> None:
    image = noise_png(101, HEIGHT, WIDTH)
    response = post_json(stack, {"image": b64(image)})
    assert response.status_code == 200, response.text
    body = response.json()
    assert_original_shape(body)
    assert body["num_masks"] > 0, "FastSAM at conf 0.005 finds masks in noise"
    assert body["model"] in ("fastsam", "sam2")
    assert body["image_size"] == {"width": WIDTH, "height": HEIGHT}
    assert body["cached"] is False
    assert isinstance(body["request_id"], str) and body["request_id"]
    assert "fastsam" in body["timings_ms"]
    first = body["masks"][0]
    pixels = decode_rle(RLE(size=tuple(first["rle"]["size"]), counts=first["rle"]["counts"]))
    assert pixels.shape == (HEIGHT, WIDTH) and int(pixels.sum()) == first["area"], "the RLE is the same mask"

    # The same pixels as a data URI: served by the dedup cache, same masks.
    again = post_json(stack, {"image": f"data:image/png;base64,{b64(image)}"})
    assert again.status_code == 200, again.text
    assert again.json()["cached"] is True
    assert again.json()["masks"] == body["masks"]
    assert again.json()["request_id"] != body["request_id"]


def test_multipart_upload_with_form_fields(stack: Stack) -> None:
    image = noise_png(102, HEIGHT, WIDTH)
    response = httpx.post(
        f"{stack.gateway.url}/segment",
        files={"image": ("noise.png", image, "image/png")},
        data={"model": "fastsam", "conf": "0.005", "max_contours": "2"},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert_original_shape(body)
    assert body["model"] == "fastsam"
    assert all(len(mask["polygons"]) <= 2 for mask in body["masks"]), "max_contours reached the worker"


def test_box_and_point_prompts_are_passed_through(stack: Stack) -> None:
    image = b64(noise_png(103, HEIGHT, WIDTH))
    boxes = [[10, 10, 90, 70], [60, 40, 150, 110]]
    response = post_json(stack, {"image": image, "boxes": boxes, "model": "sam2"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "sam2"
    assert body["num_masks"] == len(boxes), "SAM2 answers one mask per box"
    assert [mask["prompt_index"] for mask in body["masks"]] == [0, 1], "in box order"

    points = post_json(stack, {"image": image, "points": [[30, 30], [100, 80]], "labels": [1, 0], "model": "sam2"})
    assert points.status_code == 200, points.text
    assert points.json()["num_masks"] == 1, "SAM2 answers one mask for a set of points"

    outside = post_json(stack, {"image": image, "boxes": [[0, 0, 500, 500]]})
    assert outside.status_code == 400, outside.text
    assert outside.json()["code"] == "invalid_prompt", "the worker judged the box against the image"
    assert "500" in outside.json()["error"]


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"image": b64(b"this is not an image at all")}, "invalid_image"),
        ({"image": "!!! not base64 !!!"}, "invalid_image"),
        ({}, "invalid_image"),
        ({"image": "aGVsbG8=", "points": [[1, 2, 3]]}, "invalid_prompt"),
        ({"image": "aGVsbG8=", "conf": "high"}, "invalid_parameters"),
        ({"image": "aGVsbG8=", "model": "sam3"}, "invalid_parameters"),
        ([1, 2, 3], "malformed_request"),
    ],
    ids=["corrupt-image", "not-base64", "no-image", "bad-point", "bad-conf", "unknown-model", "not-an-object"],
)
def test_bad_input_is_a_400_with_a_code(stack: Stack, body: object, code: str) -> None:
    response = httpx.post(f"{stack.gateway.url}/segment", json=body, timeout=120)
    assert response.status_code == 400, response.text
    answer = response.json()
    assert answer["success"] is False and answer["code"] == code and answer["error"]


def test_an_old_client_reads_points_and_a_new_one_can_ask_for_coco(stack: Stack) -> None:
    """Posted as the original API's clients do (base64 JSON, nothing new), read as they read it: ``for x, y in
    segmentation``. The points lie on the mask the RLE holds; ``segmentation_format=coco`` gives the same polygons
    as flat COCO lists."""
    image = b64(noise_png(104, HEIGHT, WIDTH))
    old = post_json(stack, {"image": image, "conf": 0.005})
    assert old.status_code == 200, old.text
    masks = old.json()["masks"]
    assert masks
    for mask in masks:
        pixels = decode_rle(RLE(size=tuple(mask["rle"]["size"]), counts=mask["rle"]["counts"]))
        # Outlines run along pixel edges, so every vertex is a corner of at least one pixel of the mask.
        for x, y in mask["segmentation"]:
            corner = pixels[max(round(y) - 1, 0) : round(y) + 1, max(round(x) - 1, 0) : round(x) + 1]
            assert corner.any(), (x, y)

    coco = post_json(stack, {"image": image, "conf": 0.005, "segmentation_format": "coco"})
    assert coco.status_code == 200, coco.text
    assert coco.json()["cached"] is True
    for flat, points in zip(coco.json()["masks"], masks, strict=True):
        assert flat["segmentation"] == [[v for point in polygon for v in point] for polygon in points["polygons"]]

    bad = post_json(stack, {"image": image, "segmentation_format": "svg"})
    assert bad.status_code == 400 and bad.json()["code"] == "invalid_parameters"
    assert "segmentation_format must be one of points, coco" in bad.json()["error"]


def test_corrupt_image_error_comes_from_the_worker(stack: Stack) -> None:
    """The gateway cannot tell a corrupt PNG from a real one: the worker's error result becomes the 400."""
    response = post_json(stack, {"image": b64(b"\x89PNG\r\n\x1a\n truncated")})
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "invalid_image"
    assert response.json()["request_id"], "an error the worker answered names its request"


def test_non_json_body_is_malformed_request_and_a_huge_one_is_refused_unread(stack: Stack) -> None:
    response = httpx.post(f"{stack.gateway.url}/segment", content=b"{not json", timeout=30)
    assert response.status_code == 400
    assert response.json()["code"] == "malformed_request"
    # Only the headers of a body too big to accept are sent (httpx refuses to lie about Content-Length): the
    # gateway must answer without waiting for the body.
    limit = 2 * KafkaSettings().message_max_bytes
    host, port = stack.gateway.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as conn:
        conn.sendall(
            b"POST /segment HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {limit + 1}\r\nConnection: close\r\n\r\n".encode()
        )
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = conn.recv(65536)
            if not chunk:
                break
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.split()[1] == b"413", answer
    assert json.loads(rest.partition(b"\r\n\r\n")[2])["code"] == "image_too_large"


def test_health_is_ok_with_details(stack: Stack) -> None:
    response = httpx.get(f"{stack.gateway.url}/health", timeout=10)
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["producer"] == "ok" and body["reply_consumer"] == "ok"
    assert body["reply_topic"].startswith("segpipe.replies.test-")
    assert body["input_topic"] == stack.topics.input


def test_timeout_is_a_504_and_shutdown_deletes_the_reply_topic(
    kafka: LocalKafka, topic_factory: Callable[..., str], tmp_path: Path
) -> None:
    """No worker reads the input topic: the request times out after GATEWAY_TIMEOUT_S (2 s) with a 504."""
    input_topic = topic_factory("gw-nobody", partitions=1)
    instance = f"timeout-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap,
        "KAFKA_INPUT_TOPIC": input_topic,
        "GATEWAY_TIMEOUT_S": "2",
        "GATEWAY_INSTANCE_ID": instance,
    }
    gateway = launch_gateway(env, tmp_path / "gateway.log")
    try:
        gateway.wait_healthy()
        started = time.monotonic()
        response = httpx.post(f"{gateway.url}/segment", json={"image": b64(noise_png(1, 32, 32))}, timeout=30)
        elapsed = time.monotonic() - started
        assert response.status_code == 504, response.text
        assert response.json()["code"] == "timeout" and response.json()["success"] is False
        assert 2.0 <= elapsed < 10.0
    finally:
        gateway.assert_stops_cleanly()
    topics = make_admin(KafkaSettings(bootstrap_servers=kafka.bootstrap)).list_topics(timeout=10).topics
    assert f"segpipe.replies.{instance}" not in topics, "the reply topic is deleted at shutdown"


def test_broker_down_is_a_503(tmp_path: Path) -> None:
    """A broker of this test's own, stopped under a running gateway: requests and /health answer 503."""
    broker = start_kafka(log_dir=tmp_path / "kafka")
    try:
        create_topics(broker.bootstrap, {"requests": 1})
        env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
            "KAFKA_INPUT_TOPIC": "requests",
            "GATEWAY_PUBLISH_TIMEOUT_S": "2",
            "GATEWAY_SHUTDOWN_TIMEOUT_S": "2",
        }
        gateway = launch_gateway(env, tmp_path / "gateway.log")
        try:
            gateway.wait_healthy()
            broker.stop()
            response = httpx.post(f"{gateway.url}/segment", json={"image": b64(noise_png(2, 32, 32))}, timeout=30)
            assert response.status_code == 503, response.text
            assert response.json()["code"] == "kafka_unavailable"
            health = httpx.get(f"{gateway.url}/health", timeout=30)
            assert health.status_code == 503 and health.json()["status"] == "unavailable"
            assert health.json()["producer"] != "ok"
        finally:
            gateway.assert_stops_cleanly(timeout=60)
    finally:
        broker.stop()


# --- in-process pieces ---------------------------------------------------------------------------------------------


def test_settings_read_port_and_make_the_instance_id_topic_safe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "6123")
    monkeypatch.setenv("GATEWAY_INSTANCE_ID", "pod/7 of: web")
    settings = GatewaySettings()
    assert settings.port == 6123
    assert settings.host == "0.0.0.0" and settings.timeout_s == 60.0
    assert settings.reply_topic == "segpipe.replies.pod-7-of--web"


def test_unknown_and_late_replies_are_dropped_and_counted() -> None:
    gateway = Gateway(GatewaySettings(instance_id="unit"), KafkaSettings())
    result = SegmentResultMessage.failure("nobody-waits", ErrorInfo("internal_error", "x"), worker_id="w")
    gateway._dispatch(result)
    gateway._recent["finished-before"] = None
    gateway._dispatch(SegmentResultMessage.failure("finished-before", ErrorInfo("internal_error", "x"), worker_id="w"))
    assert gateway.counters == {"replies_unknown": 1, "replies_late": 1}


def test_result_to_api_keeps_the_original_keys_and_json_safe_numbers() -> None:
    from pipeline.masks import build_mask_record

    mask = np.zeros((8, 10), dtype=bool)
    mask[2:6, 3:7] = True
    record = build_mask_record(
        mask, predicted_iou=0.9, stability_score=float("nan"), max_contours=3, post_process=False, min_region_area=0
    )
    assert record is not None
    result = SegmentResultMessage(
        request_id="r",
        status="ok",  # type: ignore[arg-type]
        image_sha256=None,
        width=10,
        height=8,
        inference_width=10,
        inference_height=8,
        model=ModelName.FASTSAM,
        fallback_reason=None,
        fallback_detail=None,
        cached=False,
        masks=(record,),
        timings_ms={"fastsam": 1.5},
        error=None,
        worker_id="w",
        source=None,
        created_at_ms=0,
    )
    body = result_to_api(result)
    assert body["masks"][0]["bbox"] == [3, 2, 3, 3] and body["masks"][0]["area"] == 16
    assert body["masks"][0]["stability_score"] is None, "NaN is not JSON"
    assert STATUS_BY_CODE["image_too_large"] == 413 and STATUS_BY_CODE["timeout"] == 504
