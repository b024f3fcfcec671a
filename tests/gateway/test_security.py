"""Who may send, and how much, against real ``python -m gateway.app`` processes, the real broker and a real worker.

One worker serves two gateways on the same topics: one with API keys (an environment key and a key file) and a
rate limit per key, one without keys and a rate limit per client address. Each test uses keys (or addresses) of
its own, so the token buckets of one test never decide another's answers.
"""

from __future__ import annotations

import base64
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import httpx
import numpy as np
import psutil
import pytest
from gateway_harness import GatewayProcess, launch_gateway
from worker_harness import PipelineTopics, WorkerProcess, launch_worker, worker_environment

from devstack.services import LocalKafka, LocalRedis, create_topics, delete_topics
from gateway.security import digest

pytestmark = pytest.mark.slow

AUTH_KEY, FILE_KEY, SLOW_KEY, FAST_KEY, BIG_KEY = (f"test-key-{name}-{uuid.uuid4().hex}" for name in "afsbg")
MAX_BODY = 16 * 1024 * 1024
RATE, BURST = 0.05, 2  # one token per 20 s: a test's burst is never refilled while it runs


def noise_png(seed: int, size: int = 48) -> str:
    pixels = (np.random.default_rng(seed).random((size, size, 3)) * 255).astype(np.uint8)
    ok, encoded = cv2.imencode(".png", pixels)
    assert ok
    return base64.b64encode(encoded.tobytes()).decode("ascii")


# One image for every served request: the first runs the model, the others are dedup hits (still answered by the
# worker), which keeps the module quick on a CPU.
IMAGE = noise_png(1)


@dataclass
class Guarded:
    keyed: GatewayProcess  # API keys on, rate limit per key
    open: GatewayProcess  # no keys, rate limit per client address
    worker: WorkerProcess


@pytest.fixture(scope="module")
def guarded(
    kafka: LocalKafka,
    redis_server: LocalRedis,
    demo_checkpoints: tuple[Path, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Guarded]:
    suffix = uuid.uuid4().hex[:8]
    topics = PipelineTopics(f"sec-requests-{suffix}", f"sec-results-{suffix}", f"sec-dead-{suffix}", f"sec-{suffix}")
    create_topics(kafka.bootstrap, {topics.input: 1, topics.output: 1, topics.dead_letter: 1})
    logs = tmp_path_factory.mktemp("gateway-security")
    env = worker_environment(kafka, redis_server, demo_checkpoints, topics)
    keys_file = logs / "gateway-keys"
    keys_file.write_text(f"# name per key: logs and rate limits show the name\n{digest(FILE_KEY)} file-client\n")
    limits = {
        "GATEWAY_RATE_LIMIT_PER_S": str(RATE),
        "GATEWAY_RATE_LIMIT_BURST": str(BURST),
        "GATEWAY_MAX_BODY_BYTES": str(MAX_BODY),
    }
    worker = launch_worker({**env, "WORKER_ID": "security-worker"}, logs / "worker.log")
    keyed = launch_gateway(
        {
            **env,
            **limits,
            "GATEWAY_INSTANCE_ID": f"keyed-{suffix}",
            "GATEWAY_API_KEYS": ",".join((AUTH_KEY, SLOW_KEY, FAST_KEY, BIG_KEY)),
            "GATEWAY_API_KEYS_FILE": str(keys_file),
        },
        logs / "keyed.log",
    )
    open_gateway = launch_gateway({**env, **limits, "GATEWAY_INSTANCE_ID": f"open-{suffix}"}, logs / "open.log")
    try:
        worker.wait_assigned()
        keyed.wait_healthy()
        open_gateway.wait_healthy()
        yield Guarded(keyed, open_gateway, worker)
    finally:
        keyed.stop()
        open_gateway.stop()
        worker.kill()
        if kafka.process.poll() is None:
            delete_topics(kafka.bootstrap, [topics.input, topics.output, topics.dead_letter])


def test_keys_are_required_health_stays_open_and_keys_are_never_logged(guarded: Guarded) -> None:
    url = f"{guarded.keyed.url}/segment"
    body = {"image": IMAGE}
    for headers in ({}, {"X-API-Key": "guess"}, {"Authorization": "Bearer " + AUTH_KEY[:-1]}):
        refused = httpx.post(url, json=body, headers=headers, timeout=30)
        assert refused.status_code == 401, refused.text
        assert refused.json() == {
            "success": False,
            "code": "unauthorized",
            "error": refused.json()["error"],
        }
    assert httpx.get(f"{guarded.keyed.url}/health", timeout=10).status_code == 200, "probes carry no key"

    served = httpx.post(url, json=body, headers={"Authorization": f"Bearer {AUTH_KEY}"}, timeout=120)
    assert served.status_code == 200, served.text
    assert served.json()["success"] is True and served.json()["num_masks"] > 0
    from_file = httpx.post(url, json={"image": IMAGE}, headers={"X-API-Key": FILE_KEY}, timeout=120)
    assert from_file.status_code == 200, from_file.text

    log = guarded.keyed.log()
    assert "API keys required: 5 accepted" in log
    assert "unknown API key" in log and "no API key" in log
    for key in (AUTH_KEY, FILE_KEY, AUTH_KEY[:-1], SLOW_KEY, FAST_KEY, BIG_KEY):
        assert key not in log


def test_a_key_over_its_rate_gets_429_while_another_key_is_served(guarded: Guarded) -> None:
    url = f"{guarded.keyed.url}/segment"
    slow = {"X-API-Key": SLOW_KEY}
    # Requests the gateway answers itself (no image: 400) still spend the key's tokens.
    assert [httpx.post(url, json={}, headers=slow, timeout=30).status_code for _ in range(BURST)] == [400] * BURST
    over = httpx.post(url, json={"image": IMAGE}, headers=slow, timeout=30)
    assert over.status_code == 429, over.text
    assert over.json()["code"] == "rate_limited" and int(over.headers["retry-after"]) >= 1

    other = httpx.post(url, json={"image": IMAGE}, headers={"X-API-Key": FAST_KEY}, timeout=120)
    assert other.status_code == 200, other.text
    assert other.json()["num_masks"] > 0, "the other client's image went through the worker"
    assert httpx.post(url, json={}, headers=slow, timeout=30).status_code == 429, "still over its rate"


def test_without_keys_the_rate_is_per_client_address(guarded: Guarded) -> None:
    url = f"{guarded.open.url}/segment"
    # Two source addresses on loopback: 127.0.0.2 and 127.0.0.3 connect to the gateway on 127.0.0.1.
    with (
        httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2"), timeout=120) as first,
        httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.3"), timeout=120) as second,
    ):
        assert [first.post(url, json={}).status_code for _ in range(BURST)] == [400] * BURST
        assert first.post(url, json={"image": IMAGE}).status_code == 429
        served = second.post(url, json={"image": IMAGE})
        assert served.status_code == 200, served.text
        assert served.json()["num_masks"] > 0
    assert "no API keys" not in guarded.open.log(), "listening on loopback only: no warning"


class PeakRss:
    """The highest RSS of a process, sampled every 5 ms in a thread while the block runs."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.before = self.process.memory_info().rss
        self.peak = self.before
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)

    @property
    def growth_mb(self) -> float:
        return (self.peak - self.before) / 1e6


TOTAL = 200 * 1024 * 1024
CHUNK = 64 * 1024


def _json_body() -> Iterator[bytes]:
    """200 MiB of a JSON body, yielded chunk by chunk: httpx sends it chunked (no Content-Length)."""
    yield b'{"image": "'
    chunk = b"A" * CHUNK
    for _ in range(TOTAL // CHUNK):
        yield chunk
    yield b'"}'


def _multipart_body(boundary: str) -> Iterator[bytes]:
    yield (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="big.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()
    chunk = b"\x89" * CHUNK
    for _ in range(TOTAL // CHUNK):
        yield chunk
    yield f"\r\n--{boundary}--\r\n".encode()


@pytest.mark.parametrize("kind", ["json", "multipart"])
def test_a_chunked_200_mib_body_is_refused_at_the_limit_without_buffering_it(guarded: Guarded, kind: str) -> None:
    gateway = guarded.open if kind == "json" else guarded.keyed
    headers = {} if kind == "json" else {"X-API-Key": BIG_KEY}
    boundary = uuid.uuid4().hex
    if kind == "json":
        headers["Content-Type"] = "application/json"
        body = _json_body()
    else:
        headers["Content-Type"] = f"multipart/form-data; boundary={boundary}"
        body = _multipart_body(boundary)
    # A warm-up request, so memory the first request allocates anyway is not counted as the body's.
    with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.9"), timeout=60) as warm:
        warm.post(f"{gateway.url}/segment", json={"image": "aGVsbG8="}, headers=headers | {"Content-Type": "x"})
    with (
        PeakRss(gateway.process.pid) as rss,
        httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.10"), timeout=120) as client,
    ):
        started = time.monotonic()
        response = client.post(f"{gateway.url}/segment", content=body, headers=headers)
        elapsed = time.monotonic() - started
    assert "content-length" not in {name.lower() for name in response.request.headers}
    assert response.request.headers["transfer-encoding"] == "chunked"
    assert response.status_code == 413, response.text
    assert response.json()["code"] == "image_too_large"
    assert rss.growth_mb < 50, f"gateway RSS grew {rss.growth_mb:.1f} MB for a 200 MiB body (limit {MAX_BODY})"
    print(f"{kind}: 413 after {elapsed:.2f} s, gateway RSS +{rss.growth_mb:.1f} MB (peak {rss.peak / 1e6:.0f} MB)")
    assert httpx.get(f"{gateway.url}/health", timeout=10).status_code == 200, "the gateway is still up"
