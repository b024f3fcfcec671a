"""Back-pressure and poll pacing as pure functions of counts and limits (no client, no clock, no state)."""

from __future__ import annotations

from dataclasses import dataclass

SHORT_POLL_S = 0.005  # an answer or a commit acknowledgement is due any moment
LONG_POLL_S = 0.05  # everything uncommitted is on the model path (seconds per image on a CPU)


@dataclass(frozen=True, slots=True)
class Limits:
    """MAX_IN_FLIGHT bounds the uncommitted records; MAX_IN_FLIGHT_MB the bytes of the records still held (fetched,
    result not delivered); MAX_WORKERS the records waiting for a model-path slot."""

    max_in_flight: int
    max_backlog: int
    max_held_bytes: int | None = None


def should_pause(paused: bool, in_flight: int, backlog: int, limits: Limits, held_bytes: int = 0) -> bool:
    """Whether fetching should be paused: at any limit; once paused, until all are down to half (each resume costs a
    fetch round trip, so the hysteresis keeps it from flapping)."""
    most_bytes = limits.max_held_bytes
    if paused:
        return (
            in_flight > limits.max_in_flight // 2
            or backlog > limits.max_backlog // 2
            or (most_bytes is not None and held_bytes > most_bytes // 2)
        )
    return (
        in_flight >= limits.max_in_flight
        or backlog >= limits.max_backlog
        or (most_bytes is not None and held_bytes >= most_bytes)
    )


def fetch_size(in_flight: int, limits: Limits, most: int, held_bytes: int = 0, record_bytes: int = 0) -> int:
    """How many records one poll may take: never more than MAX_IN_FLIGHT allows, nor, at ``record_bytes`` per record
    (the largest lately seen), more than the byte bound has room for; at least one, so polling goes on serving the
    group and the callbacks."""
    size = min(most, limits.max_in_flight - in_flight)
    if limits.max_held_bytes is not None and record_bytes > 0:
        size = min(size, (limits.max_held_bytes - held_bytes) // record_bytes)
    return max(1, size)


def poll_timeout(uncommitted: int, on_model_path: int, answer_due: bool) -> float:
    """Short while an answer or a commit is due (published and released without waiting out a poll); long while
    everything uncommitted is on the model path: there, 200 wake-ups a second would only take the GIL and a core
    from the model."""
    if uncommitted > on_model_path or answer_due:
        return SHORT_POLL_S
    return LONG_POLL_S
