"""The micro-batcher: one inference thread runs up to BATCH_SIZE requests (or what came in BATCH_TIMEOUT_MS) at once.

While the worker stops, prepared requests still run until the shutdown deadline (they may finish in time); past it,
what is left is given back unanswered, its dedup claims released. The thread is joined at shutdown, never left as a
daemon inside torch at interpreter exit (which aborts the process: ``terminate called without an active exception``).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

from consumers.decode import Finish
from consumers.lifecycle import Lifecycle
from consumers.processor import InboundRecord, InternalError, Outcome, PendingSegmentation, RequestProcessor

log = logging.getLogger(__name__)


class MicroBatcher:
    """A queue of prepared requests and the thread that runs them through the engine."""

    def __init__(
        self,
        processor: RequestProcessor,
        lifecycle: Lifecycle,
        *,
        size: int,
        window_s: float,
        finish: Finish,
        ours: Callable[[InboundRecord], bool],
    ) -> None:
        self.processor = processor
        self.size = size
        self.window_s = window_s
        self.batches = 0
        self._lifecycle = lifecycle
        self._finish = finish
        self._ours = ours
        self._queue: queue.Queue[PendingSegmentation | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="segpipe-inference")

    def start(self) -> None:
        self._thread.start()

    def put(self, pending: PendingSegmentation) -> None:
        self._queue.put(pending)

    def close(self) -> None:
        """End the thread once what is queued now ran (or, past the deadline, was given back)."""
        self._queue.put(None)

    def join(self, deadline: float) -> list[str]:
        """Wait for the thread until ``deadline`` (monotonic); its name if still busy (inside the model)."""
        if self._thread.ident is not None:  # started
            self._thread.join(max(0.0, deadline - time.monotonic()))
        return [self._thread.name] if self._thread.is_alive() else []

    def _run(self) -> None:
        while (batch := self._collect()) is not None:
            self.batches += 1
            self._run_batch(batch)

    def _collect(self) -> list[PendingSegmentation] | None:
        """Up to ``size`` requests, waiting at most ``window_s`` after the first; None once closed."""
        first = self._queue.get()
        if first is None:
            return None
        batch = [first]
        deadline = time.monotonic() + self.window_s
        while len(batch) < self.size:
            remaining = deadline - time.monotonic()
            try:
                item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                self._queue.put(None)  # seen again by the next _collect, after this batch
                break
            batch.append(item)
        return batch

    def _run_batch(self, batch: list[PendingSegmentation]) -> None:
        """One model call; outcomes go out as each becomes final. Never raises."""
        # Work of partitions handed back meanwhile is skipped (its new owner answers it: releasing the claim spares
        # that owner a wait), and so is everything once the shutdown deadline has passed.
        expired = self._lifecycle.expired
        for pending in [p for p in batch if expired or not self._ours(p.record)]:
            self.processor.abandon(pending)
            self._finish(pending.record, None)
        batch = [p for p in batch if not expired and self._ours(p.record)]
        if not batch:
            return
        emitted: set[int] = set()

        def emit(outcome: Outcome) -> None:
            emitted.add(id(outcome.record))
            self._finish(outcome.record, outcome)

        try:
            self.processor.segment(batch, emit=emit)
        except Exception as exc:  # never let the inference thread die
            log.exception("inference batch failed")
            for pending in batch:
                if id(pending.record) not in emitted:
                    self._finish(pending.record, self.processor.failure(pending.record, InternalError(str(exc))))
