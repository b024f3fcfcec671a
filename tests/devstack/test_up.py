"""``segpipe up``: the README's "Your own images" commands, run as written, and the group scaled 1 -> 3 -> 1.

One stack for the module, started by the real command (``python -m segpipe.cli up``) on free ports: the ports come
from KAFKA_BOOTSTRAP_SERVERS, REDIS_PORT and METRICS_PORT, which the clients read too, so the README's commands run
unchanged. The workers get the test thresholds through the environment (FastSAM answers the random-weight
checkpoints at conf 0.005), which is how a user sets them.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from devstack.services import free_port, stop_process
from pipeline.types import ModelChoice, SegmentParams
from producers.publisher import SegmentationProducer
from producers.results import follow_results
from segpipe.config import KafkaSettings
from segpipe.preflight import connect_error

REPO_ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@dataclass
class Stack:
    process: subprocess.Popen[bytes]
    env: dict[str, str]
    output: Path
    bootstrap: str
    redis_port: int

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    def status(self) -> dict | None:
        """``segpipe up --status --json``; None until the stack has written its control file."""
        answer = _segpipe(["up", "--status", "--json"], self.env, timeout=30)
        if answer.returncode != 0 and "no running `segpipe up` found" in answer.stderr:
            return None
        assert answer.returncode == 0, answer.stderr
        return json.loads(answer.stdout)

    def wait(self, what: str, condition, timeout: float = 240.0) -> dict:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while True:
            assert self.process.poll() is None, f"segpipe up exited:\n{self.text()[-3000:]}"
            status = self.status()
            if status is not None and condition(status):
                return status
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not within {timeout} s; last status {status}\n{self.text()[-3000:]}")
            time.sleep(0.5)


def _segpipe(
    args: list[str], env: dict[str, str], timeout: float, cwd: Path = REPO_ROOT
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "segpipe.cli", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, demo_checkpoints: tuple[Path, Path]) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("up")
    kafka_port, redis_port = free_port(), free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "XDG_CACHE_HOME": str(home / "cache"),  # state dir, logs and control file of this stack
        "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{kafka_port}",
        "REDIS_PORT": str(redis_port),
        "METRICS_PORT": str(free_port()),
        "SEGPIPE_CHECKPOINT_DIR": str(demo_checkpoints[0].parent),  # discovered, not passed as paths
        "DEVICE": "cpu",
        "DEFAULT_CONF": "0.005",
        "FASTSAM_IMGSZ": "640",
        "SAM2_POINTS_PER_SIDE": "4",
        "SAM2_PRED_IOU_THRESH": "0",
        "SAM2_STABILITY_SCORE_THRESH": "0",
        "MAX_IN_FLIGHT": "8",  # small: records stay in flight across the rebalances below
        "OMP_NUM_THREADS": "1",  # up to three workers share two cores
        "LOG_LEVEL": "INFO",
    }
    for name in ("FASTSAM_MODEL_PATH", "SAM_MODEL_PATH"):
        env.pop(name, None)
    output = home / "up.out"
    with open(output, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "segpipe.cli", "up", "--partitions", "3"],
            env=env,
            cwd=REPO_ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    stack = Stack(process, env, output, f"127.0.0.1:{kafka_port}", redis_port)
    try:
        stack.wait("one worker ready with all partitions", lambda s: s["ready"] == 1 and s["assigned"] == 3)
        yield stack
    finally:
        started = time.monotonic()
        stop_process(process, signal.SIGINT, timeout=120)  # Ctrl-C
        stopped_in = time.monotonic() - started
    text = stack.text()
    assert process.returncode == 0, text[-3000:]
    assert "segpipe up: stopped" in text, text[-3000:]
    assert connect_error("127.0.0.1", kafka_port, 0.5) is not None, "the broker is gone"
    assert connect_error("127.0.0.1", redis_port, 0.5) is not None, "Redis is gone"
    assert not (home / "cache" / "segpipe" / f"up-{kafka_port}" / "up.json").exists()
    print(f"segpipe up stopped in {stopped_in:.1f} s")


def _readme_commands() -> list[str]:
    """The commands of the README's "Your own images" section, in order (lines of its code blocks)."""
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split("\n## Your own images\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


def test_your_own_images_as_the_readme_says(stack: Stack, tmp_path: Path) -> None:
    commands = _readme_commands()
    assert commands == ["segpipe up", "segpipe publish my.jpg", "segpipe results"], commands
    assert "checkpoints: FastSAM" in stack.text() and "demo weights" in stack.text(), "up says what it loads"
    image = cv2.imread(str(REPO_ROOT / "samples" / "shapes-1.png"))
    assert cv2.imwrite(str(tmp_path / "my.jpg"), image)

    published = _segpipe(commands[1].split()[1:], stack.env, timeout=60, cwd=tmp_path)
    assert published.returncode == 0, published.stderr
    request_id, source = published.stdout.strip().split("\t")
    assert source == "my.jpg"

    errors = tmp_path / "results.err"
    results = subprocess.Popen(
        [sys.executable, "-m", "segpipe.cli", *commands[2].split()[1:]],
        env={**stack.env, "LOG_LEVEL": "DEBUG"},
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=errors.open("wb"),
        text=True,
        # A pytest started as a background job inherits SIGINT ignored, and Python keeps an inherited SIG_IGN: the
        # follower would never see the Ctrl-C below. A terminal user's follower has the default, as here.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(text) for text in results.stdout], daemon=True).start()  # type: ignore[union-attr]
    line = ""
    try:
        deadline = time.monotonic() + 180
        while not line.startswith(request_id) and time.monotonic() < deadline:  # it follows until Ctrl-C
            with contextlib.suppress(queue.Empty):
                line = lines.get(timeout=1)
    finally:
        results.send_signal(signal.SIGINT)
        # Ctrl-C ends the follow (its log is kept for when it does not).
        try:
            code = results.wait(60)
        except subprocess.TimeoutExpired:
            results.kill()
            raise AssertionError(f"Ctrl-C did not end it; line {line!r}; log:\n{errors.read_text()[-3000:]}") from None
        assert code == 130, errors.read_text()[-3000:]
    fields = line.split()
    assert fields[:2] == [request_id, "ok"], line
    masks = int(dict(field.split("=", 1) for field in fields[2:])["masks"])
    assert masks >= 1, line


def test_a_second_up_on_the_same_ports_says_so_and_leaves_the_first_alone(stack: Stack) -> None:
    answer = _segpipe(["up"], stack.env, timeout=60)
    assert answer.returncode == 1
    (line,) = answer.stderr.splitlines()
    assert line.startswith(f"segpipe up: error: port {stack.bootstrap.rsplit(':', 1)[1]} (broker) is already in use")
    status = stack.status()
    assert status is not None and status["ready"] == 1, "the running stack still answers"


def _tiny_png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    ok, data = cv2.imencode(".png", pixels)
    assert ok
    return data.tobytes()


def test_scaling_1_to_3_to_1_while_requests_flow_loses_none(stack: Stack) -> None:
    settings = KafkaSettings(bootstrap_servers=stack.bootstrap)
    params = SegmentParams(model=ModelChoice.FASTSAM, imgsz=320)  # every request computed (distinct images), quickly
    run = uuid.uuid4().hex[:6]
    ids: list[str] = []
    with SegmentationProducer(settings) as producer:

        def publish(count: int) -> None:
            for _ in range(count):
                ids.append(producer.publish(_tiny_png(len(ids)), params=params, source=f"scale-{run}-{len(ids)}"))
                producer.flush()
                time.sleep(0.05)

        publish(30)
        assert _segpipe(["up", "--scale", "3"], stack.env, timeout=30).returncode == 0
        publish(20)
        stack.wait("three workers, a partition each", lambda s: s["ready"] == 3 and s["worker_partitions"] == [1, 1, 1])
        publish(20)
        answer = _segpipe(["up", "--scale", "1"], stack.env, timeout=30)
        assert answer.returncode == 0 and "scaling from 3 to 1 workers" in answer.stdout, answer
        publish(30)
    assert len(set(ids)) == 100
    results = {r.request_id: r for r in follow_results(settings, request_ids=set(ids), timeout_s=240)}
    missing = set(ids) - set(results)
    assert not missing, f"{len(missing)} of 100 requests got no result"
    assert all(r.error is None for r in results.values()), [r.error for r in results.values() if r.error]
    workers = {r.worker_id for r in results.values()}
    assert len(workers) >= 2, f"the group never shared the work: {workers}"

    status = stack.wait("back to one worker", lambda s: s["workers"] == 1 and s["stopping"] == 0)
    assert status["ready"] == 1
    stack.wait("one worker holding all partitions", lambda s: s["assigned"] == 3)
    (port,) = status["worker_ports"]
    deadline = time.monotonic() + 20
    while True:  # the gauge follows librdkafka's statistics, every 2 s
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            families = {f.name: f for f in text_string_to_metric_families(response.read().decode())}
        lag = {s.labels["partition"]: s.value for s in families["segpipe_consumer_lag"].samples}
        if lag == {"0": 0, "1": 0, "2": 0} or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert lag == {"0": 0, "1": 0, "2": 0}, "every request answered and committed: no lag left on any partition"


def test_plus_and_minus_keys_resize_the_group(tmp_path: Path, demo_checkpoints: tuple[Path, Path]) -> None:
    """In a terminal, ``+`` adds a worker and ``-`` removes one (the foreground view's keys)."""
    import pty

    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",
        "REDIS_PORT": str(free_port()),
        "METRICS_PORT": str(free_port()),
        "SEGPIPE_CHECKPOINT_DIR": str(demo_checkpoints[0].parent),
        "OMP_NUM_THREADS": "1",
    }
    master, terminal = pty.openpty()
    output = tmp_path / "up.out"
    process = subprocess.Popen(
        [sys.executable, "-m", "segpipe.cli", "up", "--workers", "0"],
        env=env,
        cwd=REPO_ROOT,
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
    )
    os.close(terminal)

    def drain() -> None:  # a terminal nobody reads fills up and blocks the writer
        with open(output, "ab") as out, contextlib.suppress(OSError):
            while chunk := os.read(master, 4096):
                out.write(chunk)
                out.flush()

    threading.Thread(target=drain, daemon=True).start()
    stack = Stack(process, env, output, env["KAFKA_BOOTSTRAP_SERVERS"], int(env["REDIS_PORT"]))
    try:
        stack.wait("the stack answering", lambda s: s["desired"] == 0, timeout=120)
        assert "(+/- add or remove a worker)" in stack.text()
        os.write(master, b"+")
        stack.wait("a worker added by +", lambda s: s["desired"] == 1 and s["workers"] == 1, timeout=30)
        os.write(master, b"-")
        stack.wait("the worker removed by -", lambda s: s["desired"] == 0 and s["workers"] == 0, timeout=30)
    finally:
        stop_process(process, signal.SIGINT, timeout=120)
        os.close(master)
    assert process.returncode == 0, stack.text()[-3000:]
    assert "worker up-worker-0 started" in stack.text() and "stopping worker up-worker-0" in stack.text()
