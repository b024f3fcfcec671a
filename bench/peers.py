"""Peers: what a user would run instead of the pipeline, on the same images and machine (``--scenarios peers``).

(p1) ``naive_loop``: ultralytics' FastSAM called image by image, in its own process (:mod:`bench.naive_loop`);
(p2) ``seed_api``: the original design's Flask API (:mod:`bench.seed_api`), N concurrent HTTP clients;
(p3) ``gateway``: our HTTP gateway (``python -m gateway``) over Kafka to one worker, the same N clients;
(p4) one and two workers fed from Kafka directly: scenarios (b) and (d).

Each HTTP client posts JSON (``image``: base64 PNG) and waits for the answer before taking the next image; the N
clients share one queue of the images, so every image is sent once per run (Redis is flushed before each run:
every request is computed). Throughput is first request sent -> last answer received; CPU seconds are those of
every process that serves (the loop's process; the seed API and Redis; the gateway, the worker, the broker and
Redis), not the clients'.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench.harness import REPO_ROOT, ProcessCpu
from bench.stats import latency_summary
from devstack.services import free_port, stop_process


@dataclass
class ServerProcess:
    """An HTTP peer (seed API or gateway) in a subprocess, with its log and psutil handle."""

    name: str
    process: subprocess.Popen[bytes]
    url: str
    log_path: Path
    ps: psutil.Process = field(init=False)

    def __post_init__(self) -> None:
        self.ps = psutil.Process(self.process.pid)

    def log_tail(self, chars: int = 3000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-chars:]
        return "<no log>"

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}")

    def stop(self) -> None:
        stop_process(self.process, timeout=20.0)


def _start_server(name: str, module: str, env: dict[str, str], log_dir: Path, timeout_s: float) -> ServerProcess:
    port = free_port()
    log_path = log_dir / f"{name}.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", module, "--host", "127.0.0.1", "--port", str(port)],
            env={**env, "PYTHONPATH": str(REPO_ROOT)},
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    server = ServerProcess(name, process, f"http://127.0.0.1:{port}", log_path)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        server.check_alive()
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{server.url}/health", timeout=2.0).status_code == 200:
                return server
        time.sleep(0.2)
    server.stop()
    raise TimeoutError(f"{name} not healthy after {timeout_s:.0f}s:\n{server.log_tail()}")


def start_seed_api(model_env: dict[str, str], redis_host: str, redis_port: int, log_dir: Path) -> ServerProcess:
    """p2, loaded and warmed up (it answers /health only then)."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # ultralytics' own thread choice
    env.update(model_env, REDIS_HOST=redis_host, REDIS_PORT=str(redis_port))
    return _start_server("seed-api", "bench.seed_api", env, log_dir, timeout_s=300.0)


def start_gateway(bootstrap: str, input_topic: str, run_id: str, log_dir: Path) -> ServerProcess:
    """p3: ``python -m gateway`` publishing to ``input_topic`` (the (b) worker's), its own reply topic."""
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "KAFKA_INPUT_TOPIC": input_topic,
        "GATEWAY_INSTANCE_ID": f"bench-{run_id}",
        "GATEWAY_TIMEOUT_S": "900",
        "LOG_LEVEL": "WARNING",
    }
    return _start_server("gateway", "gateway", env, log_dir, timeout_s=120.0)


def http_run(
    url: str,
    payloads: Sequence[bytes],
    clients: int,
    processes: dict[str, psutil.Process],
    *,
    alive: Callable[[], None] | None = None,
    timeout_s: float = 900.0,
) -> dict[str, Any]:
    """``clients`` threads post every payload once (shared queue), each waiting for its answer; wall time, latency
    per request, masks per answer, and the CPU of ``processes`` (the serving side) over the run."""
    bodies = [json.dumps({"image": base64.b64encode(p).decode("ascii")}).encode() for p in payloads]
    next_index = iter(range(len(bodies)))
    lock = threading.Lock()
    latencies: list[float] = []
    answers: list[dict[str, Any]] = []
    errors: list[str] = []

    def client() -> None:
        with httpx.Client(timeout=timeout_s) as session:
            while True:
                with lock:
                    index = next(next_index, None)
                if index is None:
                    return
                started = time.perf_counter()
                try:
                    response = session.post(
                        f"{url}/segment", content=bodies[index], headers={"content-type": "application/json"}
                    )
                except httpx.HTTPError as exc:
                    with lock:
                        errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                elapsed = (time.perf_counter() - started) * 1000.0
                body = (
                    response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
                )
                with lock:
                    if response.status_code != 200 or not body.get("success", False):
                        errors.append(f"{response.status_code}: {str(body)[:300]}")
                    else:
                        latencies.append(elapsed)
                        answers.append({"model": body.get("model"), "masks": body.get("num_masks")})

    cpu = ProcessCpu(processes)
    started = time.perf_counter()
    threads = [threading.Thread(target=client, name=f"client-{i}", daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        while thread.is_alive():
            thread.join(0.5)
            if alive is not None:
                alive()
    wall = time.perf_counter() - started
    cpu_s = cpu.delta()
    if errors:
        raise RuntimeError(f"{len(errors)} of {len(bodies)} requests to {url} failed, first: {errors[0]}")
    total_cpu = sum(v for v in cpu_s.values() if v == v)
    models: dict[str, int] = {}
    for answer in answers:
        models[str(answer["model"])] = models.get(str(answer["model"]), 0) + 1
    return {
        "images": len(bodies),
        "clients": clients,
        "wall_s": wall,
        "images_per_s": len(bodies) / wall,
        "latency_ms": latency_summary(latencies),
        "cpu_s": cpu_s,
        "cpu_s_per_image": total_cpu / len(bodies),
        "models": models,
        "masks_per_image": sum(a["masks"] or 0 for a in answers) / max(1, len(answers)),
    }


def naive_loop(
    model_env: dict[str, str], image_paths: Sequence[Path], warm_path: Path, log_dir: Path, timeout_s: float
) -> dict[str, Any]:
    """p1 in a fresh process (ultralytics' thread choice stays there); its own clock and CPU counter."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env["PYTHONPATH"] = str(REPO_ROOT)
    command = [
        sys.executable,
        "-m",
        "bench.naive_loop",
        "--model",
        model_env["FASTSAM_MODEL_PATH"],
        "--warm",
        str(warm_path),
        "--imgsz",
        model_env.get("FASTSAM_IMGSZ", "1024"),
        "--conf",
        model_env.get("DEFAULT_CONF", "0.4"),
        "--device",
        model_env.get("DEVICE", "cpu"),
        *map(str, image_paths),
    ]
    done = subprocess.run(
        command, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout_s, check=False
    )
    (log_dir / "naive-loop.log").write_text(done.stdout + done.stderr)
    lines = [x for x in done.stdout.splitlines() if x.startswith("NAIVE-LOOP ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"naive loop failed ({done.returncode}):\n{done.stderr[-3000:]}")
    report = json.loads(lines[-1].removeprefix("NAIVE-LOOP "))
    count = len(report["latencies_ms"])
    return {
        "images": count,
        "clients": 1,
        "wall_s": report["wall_s"],
        "images_per_s": count / report["wall_s"],
        "latency_ms": latency_summary(report["latencies_ms"]),
        "cpu_s": {"naive_loop": report["cpu_s"]},
        "cpu_s_per_image": report["cpu_s"] / count,
        "masks_per_image": sum(report["masks"]) / count,
        "torch_threads": report["torch_threads"],
        "omp_num_threads": report["omp_num_threads"],
    }
