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


# Starts a worker whose models "load" instantly and which is stopped right then: prints the frozen object count.
_FREEZE_PROBE = """
import gc, sys
from consumers.worker import Worker
from segpipe.config import AppSettings
settings = AppSettings(kafka={"bootstrap_servers": "127.0.0.1:9"}, redis={"enabled": False})
worker = Worker(settings, freeze_gc=sys.argv[1] == "1")
worker.segmenter.warm_up = worker.stop
worker.run()
print(gc.get_freeze_count())
"""


@pytest.mark.parametrize("freeze", [True, False])
def test_the_worker_process_freezes_what_it_loaded_once_started(freeze: bool) -> None:
    """``segpipe worker`` (``freeze_gc=True``) moves what start-up loaded out of the collector's reach; an in-process
    worker (tests, embedding) leaves the collector alone."""
    argv = [sys.executable, "-c", _FREEZE_PROBE, str(int(freeze))]
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=120).stdout
    frozen = int(out.split()[-1])
    assert (frozen > 10_000) if freeze else (frozen == 0), frozen


def test_main_runs_the_worker_with_a_frozen_collector(monkeypatch: pytest.MonkeyPatch) -> None:
    import consumers.worker as module

    seen: dict[str, object] = {}

    class Stop(Exception):
        pass

    def capture(settings: AppSettings, **options: object) -> None:
        seen.update(options)
        raise Stop

    monkeypatch.setattr(module, "Worker", capture)
    monkeypatch.setattr(module, "_preflight", lambda settings: None)
    monkeypatch.setenv("METRICS_PORT", "0")
    with pytest.raises(Stop):
        module.main([])
    assert seen.get("freeze_gc") is True
