"""Prometheus metrics and health endpoints of a running worker (real broker, Redis and tiny models)."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable

import numpy as np
import pytest
import redis
from kafka_harness import noise_png
from prometheus_client.parser import text_string_to_metric_families
from worker_harness import PipelineTopics

from consumers import health as health_cli
from consumers.metrics import MetricsServer, WorkerMetrics
from consumers.worker import Worker
from devstack.services import free_port
from pipeline.types import SegmentParams
from producers.publisher import SegmentationProducer
from producers.results import follow_results
from segpipe.config import AppSettings


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_and_health_follow_what_the_worker_does(
    worker_settings: Callable[..., AppSettings],
    redis_client: redis.Redis,
    topic_factory,  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    topics = PipelineTopics(
        input=topic_factory("requests", partitions=2),
        output=topic_factory("results"),
        dead_letter=topic_factory("dead"),
        group=f"g-{uuid.uuid4().hex[:8]}",
    )
    settings = worker_settings(
        topics,
        models={"sam2_points_per_side": 4, "sam2_pred_iou_thresh": 0.0, "sam2_stability_score_thresh": 0.0},
    )
    worker = Worker(settings)
    metrics = WorkerMetrics()
    metrics.attach(worker)
    server = MetricsServer(worker, metrics, host="127.0.0.1", port=free_port()).start()
    base = f"http://127.0.0.1:{server.port}"
    assert _get(f"{base}/health/ready")[0] == 503, "not ready before the worker runs"

    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while _get(f"{base}/health/ready")[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        status, body = _get(f"{base}/health/ready")
        assert status == 200, body
        assert json.loads(body)["redis"] is True

        image = noise_png(11, 96, 128)
        with SegmentationProducer(settings.kafka) as producer:
            ids = {producer.publish(image)}
            producer.flush()
            list(follow_results(settings.kafka, request_ids=set(ids), timeout_s=60))  # computed first...
            ids.add(producer.publish(image))  # ...so this one is a cache hit
            ids.add(producer.publish(b"garbage"))
            # A flat image has nothing for the trained FastSAM to find at conf 0.4: it falls back to SAM2.
            ids.add(producer.publish(np.full((96, 128, 3), 128, np.uint8), params=SegmentParams(conf=0.4)))
        assert len(list(follow_results(settings.kafka, request_ids=ids, timeout_s=120))) == 4

        monkeypatch.setenv("METRICS_PORT", str(server.port))
        assert health_cli.main(["ready"]) == 0, "the docker-compose healthcheck command agrees"

        # A reader can see a result before the worker has served its delivery report: wait for the counters.
        deadline = time.monotonic() + 10
        while True:
            status, body = _get(f"{base}/metrics")
            samples = _samples(body.decode())
            published = sum(v for (name, _), v in samples.items() if name == "segpipe_results_total")
            if published == 4 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert status == 200
        assert samples[("segpipe_results_total", (("model", "fastsam"), ("status", "ok")))] == 2
        assert samples[("segpipe_results_total", (("model", "sam2"), ("status", "ok")))] == 1
        assert samples[("segpipe_results_total", (("model", "none"), ("status", "error")))] == 1
        assert samples[("segpipe_fallbacks_total", (("reason", "no_masks"),))] == 1
        assert samples[("segpipe_cache_hits_total", ())] == 1
        assert samples[("segpipe_errors_total", (("code", "invalid_image"),))] == 1
        assert samples[("segpipe_dead_letters_total", ())] == 1
        assert samples[("segpipe_stage_seconds_count", (("stage", "fastsam"),))] == 2
        assert samples[("segpipe_stage_seconds_count", (("stage", "sam2"),))] == 1
        assert samples[("segpipe_batch_size_count", ())] == 2, "computed results record their batch size"
        assert samples[("segpipe_request_seconds_count", ())] == 4
        assert samples[("segpipe_consumed", ())] == 4
        assert samples[("segpipe_in_flight", ())] == 0
        assert samples[("segpipe_in_flight_bytes", ())] == 0, "every answered record's payload is released"
        assert samples[("segpipe_redelivered_answered_total", ())] == 0, "nothing was redelivered"
        assert samples[("segpipe_backlog", ())] == 0
        assert samples[("segpipe_assigned_partitions", ())] == 2
        assert samples[("segpipe_ready", ())] == 1
    finally:
        worker.stop()
        thread.join(60)
    assert _get(f"{base}/health/live")[0] == 503, "a stopped worker is not alive"
    server.stop()
    assert health_cli.main(["ready"]) == 1, "nothing answers: unhealthy"
