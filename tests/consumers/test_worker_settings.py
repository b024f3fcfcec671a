"""How a worker reads its settings: batch size by device, the in-flight bound."""

from __future__ import annotations

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
