"""The one elapsed-time helper of the engine and the worker: every ``timings_ms`` value is milliseconds."""

from __future__ import annotations

import time


def ms_since(started: float) -> float:
    """Milliseconds since ``started``, a :func:`time.perf_counter` reading."""
    return (time.perf_counter() - started) * 1000.0
