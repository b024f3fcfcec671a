"""The hand-off from the stages' threads to the poll-loop thread: finished records in, publications and hand-backs out.

The decode threads and the inference thread put each record here exactly once (an outcome, or None when they give
it back unanswered); :meth:`Outbox.pump`, on the poll-loop thread, passes its outcome to the sink, or marks it
handed back (it stays uncommitted and is redelivered to the next owner).
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable

from consumers.lifecycle import Lifecycle
from consumers.offsets import OffsetTracker, TopicPartitionKey
from consumers.processor import Answered, InboundRecord, Outcome
from consumers.sink import ResultSink

log = logging.getLogger(__name__)

DRAIN_POLL_S = 0.02  # delivery-callback wait per drain turn


class Outbox:
    """Finished work waiting for the poll loop."""

    def __init__(
        self,
        tracker: OffsetTracker,
        sink: ResultSink,
        lifecycle: Lifecycle,
        answered: Callable[[InboundRecord], None] = lambda record: None,
    ) -> None:
        """``answered(record)``: a record this group delivered before is done here too, with nothing to publish."""
        self._tracker = tracker
        self._sink = sink
        self._lifecycle = lifecycle
        self._answered = answered
        self._finished: queue.SimpleQueue[tuple[InboundRecord, Outcome | Answered | None]] = queue.SimpleQueue()

    def put(self, record: InboundRecord, outcome: Outcome | Answered | None) -> None:
        """From any thread: ``record`` left its stage with ``outcome`` (None: given back unanswered)."""
        self._finished.put((record, outcome))

    def empty(self) -> bool:
        return self._finished.empty()

    def pump(self) -> None:
        """Publish what finished and serve delivery callbacks (poll-loop thread)."""
        while True:
            try:
                record, outcome = self._finished.get_nowait()
            except queue.Empty:
                break
            tp = (record.topic, record.partition)
            if outcome is None:
                self._tracker.hand_back(tp, record.offset)
            elif isinstance(outcome, Answered):
                self._answered(record)
            elif not self._tracker.is_pending(tp, record.offset):
                # Its partition was revoked or lost before the work finished and handed back uncommitted: the new
                # owner answers it (from the dedup cache when this worker stored the result), so publishing it here
                # too would only add a duplicate.
                log.info("not publishing %s: its partition was handed back", outcome.result.request_id)
            else:
                self._sink.publish(outcome)
        self._sink.poll(0)

    def drain(self, partitions: set[TopicPartitionKey] | None, deadline: float) -> bool:
        """Publish until no record of ``partitions`` (all when None) is owed by a stage, or ``deadline`` (monotonic)
        passes, or the shutdown deadline (a stop during a revocation's drain cuts it short); True when none is left."""
        while self._tracker.owed(partitions) > 0:
            left = min(deadline, self._lifecycle.deadline) - time.monotonic()
            if left <= 0:
                break
            self.pump()
            self._sink.poll(min(DRAIN_POLL_S, left))
        self.pump()
        return self._tracker.owed(partitions) == 0
