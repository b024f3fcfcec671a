"""How a worker reads its settings: batch size by device, the in-flight bound."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from consumers.worker import GPU_BATCH_SIZE, Worker
from segpipe.config import AppSettings


def _worker(device: str, **worker: int) -> Worker:
    # Nothing is loaded or connected: models load lazily, and Redis is off.
    return Worker(AppSettings(worker=worker, models={"device": device}, redis={"enabled": False}))


@pytest.mark.parametrize(("device", "expected"), [("cpu", 1), ("cuda", GPU_BATCH_SIZE), ("cuda:1", GPU_BATCH_SIZE)])
def test_batch_size_when_unset_depends_on_the_device(device: str, expected: int) -> None:
    assert _worker(device).batch_size == expected


def test_batch_size_set_wins() -> None:
    assert _worker("cpu", batch_size=6).batch_size == 6
    assert _worker("cuda", batch_size=1).batch_size == 1


def test_in_flight_bound_is_max_in_flight_not_max_workers() -> None:
    worker = _worker("cpu", max_workers=3, max_in_flight=500)
    assert worker.max_in_flight == 500


# Prints OMP_WAIT_POLICY as it is when torch starts loading (OpenMP reads it then, once).
_PROBE = """
import os, sys
class Watch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            print(os.environ.get("OMP_WAIT_POLICY"))
            sys.meta_path.remove(self)
sys.meta_path.insert(0, Watch())
import consumers.worker
"""


@pytest.mark.parametrize(("inherited", "expected"), [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_openmp_waits_passively_in_a_worker_unless_told_otherwise(inherited: str | None, expected: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if inherited is not None:
        env["OMP_WAIT_POLICY"] = inherited
    out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == [expected]  # torch loaded once, with the policy already set
