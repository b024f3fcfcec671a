"""SIGTERM in every state a worker can be in: it exits 0 within SHUTDOWN_TIMEOUT_S (+2 s for the process to wind
down), whatever it was waiting on, and whatever it had not finished is answered by a replacement worker.

States: idle; inside a long SAM2 run (a thread cannot be interrupted inside torch); a decode thread waiting on a live
peer's dedup claim; Redis hung (SIGSTOPped); the broker down. Each is the real ``python -m consumers.worker`` on the
real broker and Redis with the tiny checkpoints, SHUTDOWN_TIMEOUT_S=5.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
import uuid

import pytest
import redis
from reliability_harness import (
    Follow,
    Launcher,
    Publisher,
    Report,
    TopicFollower,
    TopicsFactory,
    avro_record,
    noise_image,
)
from worker_harness import PipelineTopics, WorkerProcess

from consumers.dedup import dedup_key, liveness_key, model_fingerprint
from devstack.services import LocalKafka, LocalRedis, create_topics, free_port
from pipeline.image_io import decode_image, image_sha256
from pipeline.segmenter import resolve_params
from pipeline.settings import ModelSettings
from pipeline.types import ModelChoice, Prompts, SegmentParams
from schemas import ResultStatus

pytestmark = pytest.mark.slow

SHUTDOWN_TIMEOUT_S = 5.0
EXIT_BOUND_S = SHUTDOWN_TIMEOUT_S + 2.0


def _sigterm(worker: WorkerProcess) -> tuple[int, float]:
    """SIGTERM the worker; (exit code, seconds until it exited). A worker still alive after 60 s is killed."""
    started = time.monotonic()
    worker.process.send_signal(signal.SIGTERM)
    try:
        code = worker.process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        worker.kill()
        raise AssertionError(f"still running 60 s after SIGTERM:\n{worker.log()[-3000:]}") from None
    return code, time.monotonic() - started


def _health(port: int) -> dict:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/live", timeout=2) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return json.loads(exc.read())


def _wait_in_flight(worker: WorkerProcess, port: int, count: int, timeout: float = 60.0) -> None:
    """Until the worker's own health endpoint shows ``count`` records consumed and not acknowledged."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if _health(port)["in_flight"] >= count:
                return
        except OSError:
            pass
        assert worker.process.poll() is None, worker.log()[-3000:]
        time.sleep(0.1)
    raise AssertionError(f"{count} records never in flight:\n{worker.log()[-3000:]}")


def _launch_with_health(launcher: Launcher, topics: PipelineTopics, **env: str) -> tuple[WorkerProcess, int]:
    port = free_port()
    worker = launcher(topics, SHUTDOWN_TIMEOUT_S=str(SHUTDOWN_TIMEOUT_S), METRICS_PORT=str(port), **env)
    worker.wait_assigned(120)
    return worker, port


def _check_exit(worker: WorkerProcess, code: int, seconds: float) -> None:
    log = worker.log()
    assert code == 0, f"exit code {code} after {seconds:.1f} s:\n{log[-3000:]}"
    assert seconds <= EXIT_BOUND_S, f"exited after {seconds:.1f} s, over {EXIT_BOUND_S} s:\n{log[-3000:]}"
    assert "terminate called" not in log and "Traceback" not in log, log[-3000:]


def _answered_by_replacement(
    launcher: Launcher, topics: PipelineTopics, results: TopicFollower, request_ids: list[str], **env: str
) -> WorkerProcess:
    """A replacement worker answers every request; it stops cleanly too (idle by then)."""
    replacement = launcher(topics, SHUTDOWN_TIMEOUT_S=str(SHUTDOWN_TIMEOUT_S), **env)
    found = results.wait_request_ids(request_ids, timeout=240)
    assert {r.request_id for r in found} >= set(request_ids)
    assert all(r.status == ResultStatus.OK for r in found), [r.error for r in found if r.error]
    code, seconds = _sigterm(replacement)
    _check_exit(replacement, code, seconds)
    return replacement


def test_sigterm_idle_exits_at_once(
    kafka: LocalKafka, make_topics: TopicsFactory, launcher: Launcher, follow: Follow, report: Report
) -> None:
    topics = make_topics(2)
    results = follow(kafka.bootstrap, topics.output)
    worker, _ = _launch_with_health(launcher, topics)
    Publisher(kafka.bootstrap, topics.input).send_all([avro_record("idle-0", noise_image(7000, 96, 128))])
    results.wait_request_ids(["idle-0"], timeout=120)
    code, seconds = _sigterm(worker)
    _check_exit(worker, code, seconds)
    assert "stopped" in worker.log()
    report(state="idle", exit_code=code, exit_s=round(seconds, 2), shutdown_timeout_s=SHUTDOWN_TIMEOUT_S)


def test_sigterm_inside_a_long_sam2_run_exits_0_at_the_deadline(
    kafka: LocalKafka, make_topics: TopicsFactory, launcher: Launcher, follow: Follow, report: Report
) -> None:
    """model=sam2 without prompts: the automatic mask generator, ~10-30 s on one core, well past the deadline."""
    topics = make_topics(2)
    results = follow(kafka.bootstrap, topics.output)
    worker, port = _launch_with_health(launcher, topics, BATCH_SIZE="1")
    request = avro_record("busy-0", noise_image(7100, 240, 320), params=SegmentParams(model=ModelChoice.SAM2))
    Publisher(kafka.bootstrap, topics.input).send_all([request])
    _wait_in_flight(worker, port, 1)
    time.sleep(1.0)  # decoded (96 ms at most here) and inside SAM2
    code, seconds = _sigterm(worker)
    _check_exit(worker, code, seconds)
    busy = re.search(r"exiting with (.*) still busy past the shutdown deadline", worker.log())
    assert busy and "segpipe-inference" in busy.group(1), "the test needs the deadline to come while inside SAM2"
    assert seconds >= SHUTDOWN_TIMEOUT_S - 0.5, "it waited for the request up to the deadline"
    assert not results.results(), "nothing published for the request it gave back"
    _answered_by_replacement(launcher, topics, results, ["busy-0"], BATCH_SIZE="1")
    report(state="sam2", exit_code=code, exit_s=round(seconds, 2), shutdown_timeout_s=SHUTDOWN_TIMEOUT_S)


def test_sigterm_while_waiting_on_a_peers_claim(
    kafka: LocalKafka,
    redis_client: redis.Redis,
    make_topics: TopicsFactory,
    launcher: Launcher,
    follow: Follow,
    report: Report,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A live peer holds the image's dedup claim (REDIS_MAX_WAIT 600 s): the decode thread waiting on it ends at
    the stop; once the peer is gone a replacement computes the request."""
    topics = make_topics(2)
    results = follow(kafka.bootstrap, topics.output)
    worker, port = _launch_with_health(launcher, topics)
    image = noise_image(7200, 96, 128)
    for name, value in worker.env.items():  # the model settings exactly as the worker reads them
        monkeypatch.setenv(name, value)
    models = ModelSettings()
    params = resolve_params(SegmentParams(), models)
    key = dedup_key(image_sha256(decode_image(image)), Prompts(), params, model_fingerprint(models))
    peer = uuid.uuid4().hex
    redis_client.set(f"{key}:claim", f"peer@{peer}", ex=600)
    redis_client.set(liveness_key(peer), "1", ex=600)  # the peer proves itself alive

    Publisher(kafka.bootstrap, topics.input).send_all([avro_record("claimed-0", image)])
    _wait_in_flight(worker, port, 1)
    time.sleep(1.0)
    code, seconds = _sigterm(worker)
    _check_exit(worker, code, seconds)
    assert not results.results(), "it was waiting on the claim, not computing"
    redis_client.delete(liveness_key(peer))  # the peer dies: its claim is taken over at once
    _answered_by_replacement(launcher, topics, results, ["claimed-0"])
    report(state="peer_claim_wait", exit_code=code, exit_s=round(seconds, 2), shutdown_timeout_s=SHUTDOWN_TIMEOUT_S)


def test_sigterm_while_redis_hangs(
    kafka: LocalKafka,
    redis_server: LocalRedis,
    make_topics: TopicsFactory,
    launcher: Launcher,
    follow: Follow,
    report: Report,
) -> None:
    """redis-server SIGSTOPped (connections accepted, nothing answered) while a request is being handled."""
    topics = make_topics(2)
    results = follow(kafka.bootstrap, topics.output)
    worker, port = _launch_with_health(launcher, topics)
    os.kill(redis_server.process.pid, signal.SIGSTOP)
    try:
        Publisher(kafka.bootstrap, topics.input).send_all([avro_record("hung-0", noise_image(7300, 96, 128))])
        _wait_in_flight(worker, port, 1)
        time.sleep(0.5)  # inside a Redis call that will time out
        code, seconds = _sigterm(worker)
    finally:
        os.kill(redis_server.process.pid, signal.SIGCONT)
    _check_exit(worker, code, seconds)
    _answered_by_replacement(launcher, topics, results, ["hung-0"])
    report(state="redis_hung", exit_code=code, exit_s=round(seconds, 2), shutdown_timeout_s=SHUTDOWN_TIMEOUT_S)


def test_sigterm_while_the_broker_is_down(
    s3_kafka: LocalKafka, launcher: Launcher, follow: Follow, report: Report
) -> None:
    """The broker stops while a result waits for delivery: flush and close are bounded by the same deadline, and
    the undelivered result's record stays uncommitted for the replacement (the broker's S3 storage keeps it)."""
    broker = s3_kafka
    suffix = uuid.uuid4().hex[:8]
    topics = PipelineTopics(f"requests-{suffix}", f"results-{suffix}", f"dead-letter-{suffix}", f"workers-{suffix}")
    create_topics(broker.bootstrap, {topics.input: 2, topics.output: 1, topics.dead_letter: 1})
    worker, port = _launch_with_health(launcher, topics, KAFKA_BOOTSTRAP_SERVERS=broker.bootstrap)
    Publisher(broker.bootstrap, topics.input).send_all([avro_record("down-0", noise_image(7400, 96, 128))])
    _wait_in_flight(worker, port, 1)
    broker.stop()
    try:
        time.sleep(1.0)  # answered by FastSAM meanwhile, its result undeliverable
        code, seconds = _sigterm(worker)
    finally:
        broker.restart()
    _check_exit(worker, code, seconds)
    results = follow(broker.bootstrap, topics.output)
    _answered_by_replacement(launcher, topics, results, ["down-0"], KAFKA_BOOTSTRAP_SERVERS=broker.bootstrap)
    report(state="broker_down", exit_code=code, exit_s=round(seconds, 2), shutdown_timeout_s=SHUTDOWN_TIMEOUT_S)
