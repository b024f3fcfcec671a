"""A worker's live state as one small snapshot: what metrics and health read, instead of the worker's insides."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class WorkerState:
    """Read at one moment (each field consistent enough for a gauge; not one atomic cut)."""

    worker_id: str
    running: bool  # the poll loop is turning (False before run() and after it returned)
    started: bool  # models loaded and subscribed
    stopping: bool
    since_last_poll_s: float
    stall_after_s: float  # a poll loop silent for this long is not alive (half of max.poll.interval.ms)
    assigned_partitions: int
    paused: bool
    in_flight: int  # consumed and not yet acknowledged by a commit
    held_bytes: int  # request payloads fetched and still held (result not delivered yet)
    backlog: int  # waiting for a model-path slot
    consumed: int
    published: int
    answered_again: int  # redelivered records not published again: this group had delivered their results
    redis_healthy: bool | None  # None: no cache configured

    @property
    def alive(self) -> bool:
        return self.running and self.since_last_poll_s < self.stall_after_s

    @property
    def ready(self) -> bool:
        return self.alive and self.started and not self.stopping


class StateSource(Protocol):
    """Anything that can report a :class:`WorkerState` (the worker)."""

    def snapshot(self) -> WorkerState: ...
