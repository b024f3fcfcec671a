"""One stop for the whole worker: an event every stage and every wait checks, and one deadline for all of shutdown.

A stop (SIGTERM, SIGINT, :meth:`Lifecycle.stop`) starts the SHUTDOWN_TIMEOUT_S clock once. Every phase after it —
draining in-flight work, a revocation during ``close()``, flushing, joining the stage threads — waits only for what
is left of that one deadline, so shutdown never takes a multiple of it.
"""

from __future__ import annotations

import math
import signal
import threading
import time


class Lifecycle:
    """The stop event and the shutdown deadline (``inf`` until stopped)."""

    def __init__(self, shutdown_timeout_s: float) -> None:
        self.shutdown_timeout_s = shutdown_timeout_s
        self.stopping = threading.Event()
        self._deadline = math.inf

    def stop(self) -> None:
        """Start stopping (idempotent; safe from any thread and from a signal handler: no lock taken)."""
        if self.stopping.is_set():
            return
        self._deadline = time.monotonic() + self.shutdown_timeout_s
        self.stopping.set()

    @property
    def is_stopping(self) -> bool:
        return self.stopping.is_set()

    @property
    def deadline(self) -> float:
        """``time.monotonic()`` by which shutdown ends; ``inf`` while running."""
        return self._deadline

    def remaining(self) -> float:
        """Seconds left before the deadline (``inf`` while running, never negative)."""
        return max(0.0, self._deadline - time.monotonic())

    @property
    def expired(self) -> bool:
        return time.monotonic() >= self._deadline

    def install_signal_handlers(self) -> bool:
        """SIGTERM and SIGINT stop instead of killing (only possible on the main thread); True when installed."""
        if threading.current_thread() is not threading.main_thread():
            return False
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: self.stop())
        return True
