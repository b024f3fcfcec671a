"""Which records are in flight per partition, and how far each partition may be committed."""

from __future__ import annotations

import heapq
import threading
from collections import defaultdict

TopicPartitionKey = tuple[str, int]


class OffsetTracker:
    """Which offsets are in flight per partition, and how far each partition may be committed.

    A record is *uncommitted* from the moment it is consumed until a commit covering it is acknowledged: in flight,
    finished above a lower offset still in flight (not committable yet), or stored and waiting for the commit. Any
    uncommitted record is redelivered after a crash or a lost partition, so bounding :meth:`count` (backpressure)
    is what bounds the duplicates a kill -9 or an eviction can cause: to MAX_IN_FLIGHT per event.

    It also counts the bytes of the records some stage still holds (:meth:`held_bytes`): a record's payload is
    dropped once its result is delivered or it is handed back, while its offset may stay uncommitted a while longer.
    """

    def __init__(self) -> None:
        self._in_flight: dict[TopicPartitionKey, set[int]] = defaultdict(set)
        # Heaps, so each record costs O(log n) however many are in flight (a min() over thousands of offsets per
        # finished record was quadratic in MAX_IN_FLIGHT). _order holds the in-flight offsets and, until they reach
        # its top, finished ones (dropped lazily).
        self._order: dict[TopicPartitionKey, list[int]] = defaultdict(list)
        self._finished: dict[TopicPartitionKey, list[int]] = defaultdict(list)  # done, above the lowest in flight
        self._uncommitted: dict[TopicPartitionKey, list[int]] = defaultdict(list)  # done, stored, commit not acked
        self._highest_done: dict[TopicPartitionKey, int] = {}
        # In flight but given up by this worker (stopping, or its stage dropped it): never stored, so redelivered to
        # the next owner, yet no longer owed by any stage, so a drain does not wait for it.
        self._handed_back: dict[TopicPartitionKey, set[int]] = defaultdict(set)
        self._sizes: dict[TopicPartitionKey, dict[int, int]] = defaultdict(dict)  # owed records' payload bytes
        self._held = 0
        self._lock = threading.Lock()

    def add(self, tp: TopicPartitionKey, offset: int, size: int = 0) -> None:
        """A record was consumed; ``size``: the bytes it holds until it leaves the stages (its value's length)."""
        with self._lock:
            self._in_flight[tp].add(offset)
            heapq.heappush(self._order[tp], offset)
            if size:
                self._sizes[tp][offset] = size
                self._held += size

    def held_bytes(self) -> int:
        """Payload bytes of the records owed (in flight and not handed back): what a stage may still hold."""
        with self._lock:
            return self._held

    def _release(self, tp: TopicPartitionKey, offset: int) -> None:
        sizes = self._sizes.get(tp)
        if sizes:
            self._held -= sizes.pop(offset, 0)

    def is_pending(self, tp: TopicPartitionKey, offset: int) -> bool:
        """Whether this record is still ours to answer (False once its partition was revoked or lost)."""
        with self._lock:
            pending = self._in_flight.get(tp)
            return pending is not None and offset in pending

    def hand_back(self, tp: TopicPartitionKey, offset: int) -> None:
        """This worker will not answer the record: it stays uncommitted (it blocks its partition's offset) for the
        partition's next owner, and stops counting in :meth:`owed`."""
        with self._lock:
            pending = self._in_flight.get(tp)
            if pending is not None and offset in pending:
                self._handed_back[tp].add(offset)
                self._release(tp, offset)

    def owed(self, partitions: set[TopicPartitionKey] | None = None) -> int:
        """Records some stage still works on or publishes (in flight, not handed back): what a drain waits for."""
        with self._lock:
            return sum(
                len(pending) - len(self._handed_back.get(tp, ()))
                for tp, pending in self._in_flight.items()
                if partitions is None or tp in partitions
            )

    def done(self, tp: TopicPartitionKey, offset: int) -> int | None:
        """Mark an offset finished; return the offset to store (next to read) if the partition can advance."""
        with self._lock:
            pending = self._in_flight.get(tp)
            if pending is None or offset not in pending:
                return None  # the partition was revoked or lost meanwhile: its new owner will redo it
            pending.discard(offset)
            self._handed_back.get(tp, set()).discard(offset)
            self._release(tp, offset)
            self._highest_done[tp] = max(self._highest_done.get(tp, -1), offset)
            # Records of a partition arrive in offset order, so everything below the lowest one still in flight
            # is finished: that is the next offset to read after a restart.
            order = self._order[tp]
            while order and order[0] not in pending:
                heapq.heappop(order)
            watermark = order[0] if order else self._highest_done[tp] + 1
            finished, uncommitted = self._finished[tp], self._uncommitted[tp]
            heapq.heappush(finished, offset)
            while finished and finished[0] < watermark:
                heapq.heappush(uncommitted, heapq.heappop(finished))
            return watermark

    def committed(self, tp: TopicPartitionKey, next_offset: int) -> None:
        """A commit up to ``next_offset`` was acknowledged: records below it will not be redelivered."""
        with self._lock:
            waiting = self._uncommitted.get(tp)
            while waiting and waiting[0] < next_offset:
                heapq.heappop(waiting)

    def count(self, partitions: set[TopicPartitionKey] | None = None, *, unacknowledged: bool = True) -> int:
        """Uncommitted records (see the class); ``unacknowledged=False`` leaves out the stored ones that only wait
        for a commit acknowledgement, i.e. counts the records whose results are not all delivered yet."""
        with self._lock:
            return sum(
                len(pending)
                + len(self._finished.get(tp, ()))
                + (len(self._uncommitted.get(tp, ())) if unacknowledged else 0)
                for tp, pending in self._in_flight.items()
                if partitions is None or tp in partitions
            )

    def forget(self, partitions: set[TopicPartitionKey]) -> None:
        """Stop tracking partitions (revoked or lost): late completions for them are ignored."""
        with self._lock:
            for tp in partitions:
                self._in_flight.pop(tp, None)
                self._order.pop(tp, None)
                self._finished.pop(tp, None)
                self._uncommitted.pop(tp, None)
                self._highest_done.pop(tp, None)
                self._handed_back.pop(tp, None)
                self._held -= sum(self._sizes.pop(tp, {}).values())
