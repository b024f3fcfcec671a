"""The decode + dedup stage: parse, answer from the cache, decode and claim, on MAX_WORKERS threads of its own.

Records arrive in chunks (:meth:`DecodeStage.submit`, the fast path: parse, answer repeats of stored payloads in
bulk). What the cache does not answer waits, undecoded, in a backlog; :meth:`DecodeStage.feed` starts it on the model
path while fewer than MAX_WORKERS records are there (decoding, queued for or in the model). Each record leaves the
stage one way: a final outcome or a hand-back to ``finish``, or work for the model to ``to_model``.

Once the worker stops, the stage starts nothing: unstarted records are handed back (their partitions' next owner
answers them), and a preparation that was waiting (a peer's claim, Redis) gives its record back too.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from collections.abc import Callable

from consumers.lifecycle import Lifecycle
from consumers.offsets import TopicPartitionKey
from consumers.processor import (
    Answered,
    InboundRecord,
    InternalError,
    Outcome,
    ParsedRequest,
    PendingSegmentation,
    RequestProcessor,
)

log = logging.getLogger(__name__)

FAST_PATH_CHUNK = 64  # records per fast-path task: several chunks run on the stage's threads at once

#: (record, its outcome, Answered when this group delivered it before, or None when handed back unanswered): each
#: record leaves the stages once, this way
Finish = Callable[[InboundRecord, Outcome | Answered | None], None]


class DecodeStage:
    """Thread pool, backlog and model-path slots (MAX_WORKERS records between the backlog and their outcome)."""

    def __init__(
        self,
        processor: RequestProcessor,
        lifecycle: Lifecycle,
        *,
        threads: int,
        finish: Finish,
        to_model: Callable[[PendingSegmentation], None],
        ours: Callable[[InboundRecord], bool],
    ) -> None:
        self.processor = processor
        self.slots = threads
        self.active = 0  # records on the model path: started here, not finished (here or by the micro-batcher)
        self._lifecycle = lifecycle
        self._finish = finish
        self._to_model = to_model
        self._ours = ours
        self._tasks: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._backlog: collections.deque[ParsedRequest] = collections.deque()
        self._lock = threading.Lock()
        # Not daemons: joined at shutdown, so none is cut off at interpreter exit in the middle of a decode.
        self._threads = [
            threading.Thread(target=self._serve, name=f"segpipe-decode-{i}") for i in range(max(1, threads))
        ]

    @property
    def backlog(self) -> int:
        return len(self._backlog)

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def close(self) -> None:
        """Let the threads finish the tasks already queued (each hands its records back when stopping), then end."""
        for _ in self._threads:
            self._tasks.put(None)

    def join(self, deadline: float) -> list[str]:
        """Wait for the threads until ``deadline`` (monotonic); the names of those still busy."""
        started = [thread for thread in self._threads if thread.ident is not None]
        for thread in started:
            thread.join(max(0.0, deadline - time.monotonic()))
        return [thread.name for thread in started if thread.is_alive()]

    def _serve(self) -> None:
        while (task := self._tasks.get()) is not None:
            task()

    # -- the fast path ---------------------------------------------------------------------------------------
    def submit(self, records: list[InboundRecord]) -> None:
        for start in range(0, len(records), FAST_PATH_CHUNK):
            chunk = records[start : start + FAST_PATH_CHUNK]
            self._tasks.put(lambda chunk=chunk: self._fast_path(chunk))

    def _fast_path(self, records: list[InboundRecord]) -> None:
        """Answer what the cache can; queue the rest in the backlog. Never raises."""
        if self._lifecycle.is_stopping:
            for record in records:
                self._finish(record, None)
            return
        try:
            items = self.processor.prepare_batch(records)
        except Exception as exc:  # a bug must cost these requests, not the worker
            log.exception("fast path failed for %d records", len(records))
            items = [self.processor.failure(r, InternalError(f"{type(exc).__name__}: {exc}")) for r in records]
        for item in items:
            if isinstance(item, Outcome | Answered):
                self._finish(item.record, item)
                continue
            with self._lock:  # checked under the lock that hand_back() empties the backlog with: none slips past it
                stopping = self._lifecycle.is_stopping
                if not stopping:
                    self._backlog.append(item)
            if stopping:
                self._finish(item.record, None)

    def hand_back(self, partitions: set[TopicPartitionKey] | None) -> int:
        """Give back unstarted (backlog) records of ``partitions`` (all when None); how many."""
        with self._lock:
            kept: collections.deque[ParsedRequest] = collections.deque()
            dropped = []
            for item in self._backlog:
                wanted = partitions is None or (item.record.topic, item.record.partition) in partitions
                (dropped if wanted else kept).append(item)
            self._backlog = kept
        for item in dropped:
            self._finish(item.record, None)
        return len(dropped)

    def run(self, task: Callable[[], None]) -> None:
        """Run ``task`` on one of the stage's threads (Redis calls the poll loop must not wait for)."""
        self._tasks.put(task)

    # -- the model path's preparation ------------------------------------------------------------------------
    def feed(self) -> None:
        """Start backlog records while fewer than MAX_WORKERS are on the model path (poll-loop thread)."""
        while not self._lifecycle.is_stopping:
            with self._lock:
                if not self._backlog or self.active >= self.slots:
                    return
                item = self._backlog.popleft()
                if not self._ours(item.record):  # its partition was handed back: the new owner answers it
                    continue
                self.active += 1
            self._tasks.put(lambda item=item: self._prepare(item))

    def leave_model_path(self, record: InboundRecord, outcome: Outcome | None) -> None:
        """A model-path record is finished (here, or by the micro-batcher): its slot is free (any thread)."""
        with self._lock:
            self.active -= 1
        self._finish(record, outcome)

    def _prepare(self, item: ParsedRequest) -> None:
        record = item.record
        if self._lifecycle.is_stopping or not self._ours(record):
            self.leave_model_path(record, None)
            return
        try:
            prepared = self.processor.prepare(item)
        except Exception as exc:  # a bug must cost one request, not the worker
            log.exception("prepare failed for %s", record.fallback_request_id)
            prepared = self.processor.failure(record, InternalError(f"{type(exc).__name__}: {exc}"))
        if isinstance(prepared, Outcome):
            self.leave_model_path(record, prepared)
        elif self._lifecycle.is_stopping:
            # Stopped while it waited (a peer's claim, a slow Redis): nothing new reaches the model now. Its claim,
            # if it got one, is released so the record's next owner computes it at once.
            self.processor.abandon(prepared)
            self.leave_model_path(record, None)
        else:
            self._to_model(prepared)
