"""Gateway processes for end-to-end tests: the same ``python -m gateway.app`` a deployment runs.

Plain classes and functions (no fixtures), importable from any test folder like ``worker_harness``.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from worker_harness import REPO_ROOT

from devstack.services import free_port, stop_process


@dataclass
class GatewayProcess:
    """A ``python -m gateway.app`` subprocess and where it listens."""

    process: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_healthy(self, timeout: float = 60.0) -> None:
        """Until ``GET /health`` answers 200: the reply topic exists and both clients reach the broker."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"gateway exited with {self.process.returncode}:\n{self.log()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"gateway not healthy within {timeout} s:\n{self.log()[-3000:]}")

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM (uvicorn's graceful shutdown: the lifespan closes the gateway) and the exit status."""
        stop_process(self.process, timeout=timeout)
        return self.process.returncode

    def assert_stops_cleanly(self, timeout: float = 30.0) -> None:
        """After a graceful shutdown uvicorn re-raises the signal it caught, so the status is -SIGTERM, not 0."""
        code = self.stop(timeout)
        assert code in (0, -signal.SIGTERM), f"exit status {code}:\n{self.log()[-3000:]}"
        assert "Application shutdown complete" in self.log(), self.log()[-3000:]


def launch_gateway(env: dict[str, str], log_path: Path) -> GatewayProcess:
    port = free_port()
    env = {**env, "PORT": str(port), "GATEWAY_HOST": "127.0.0.1", "PYTHONPATH": str(REPO_ROOT)}
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway.app"], env=env, cwd=REPO_ROOT, stdout=log_file, stderr=log_file
        )
    return GatewayProcess(process, f"http://127.0.0.1:{port}", log_path)
