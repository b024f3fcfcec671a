"""Back-pressure and the shutdown clock: pure decisions, tested without a broker."""

from __future__ import annotations

import time

from consumers.backpressure import LONG_POLL_S, SHORT_POLL_S, Limits, fetch_size, poll_timeout, should_pause
from consumers.lifecycle import Lifecycle

LIMITS = Limits(max_in_flight=8, max_backlog=4)


def test_pauses_at_either_limit_and_resumes_at_half_of_both() -> None:
    assert not should_pause(False, 7, 3, LIMITS)
    assert should_pause(False, 8, 0, LIMITS), "MAX_IN_FLIGHT reached"
    assert should_pause(False, 0, 4, LIMITS), "MAX_WORKERS records wait for the model path"
    assert should_pause(True, 5, 0, LIMITS), "paused: stays so above half of MAX_IN_FLIGHT"
    assert should_pause(True, 4, 3, LIMITS), "...or above half of the backlog limit"
    assert not should_pause(True, 4, 2, LIMITS), "resumes at half of both"


def test_pauses_at_the_byte_bound_too_and_resumes_at_half_of_it() -> None:
    limits = Limits(max_in_flight=8, max_backlog=4, max_held_bytes=1000)
    assert not should_pause(False, 1, 0, limits, held_bytes=999)
    assert should_pause(False, 1, 0, limits, held_bytes=1000), "MAX_IN_FLIGHT_MB reached with few records"
    assert should_pause(True, 1, 0, limits, held_bytes=501), "paused: stays so above half of it"
    assert not should_pause(True, 1, 0, limits, held_bytes=500)
    assert not should_pause(False, 1, 0, LIMITS, held_bytes=10**12), "no byte bound: bytes never pause"


def test_a_poll_never_takes_more_than_max_in_flight_allows() -> None:
    assert fetch_size(0, LIMITS, most=256) == 8
    assert fetch_size(6, LIMITS, most=256) == 2
    assert fetch_size(8, LIMITS, most=256) == 1, "at least one: polling serves the group and the callbacks"
    assert fetch_size(0, Limits(1000, 4), most=256) == 256


def test_a_poll_takes_what_the_byte_bound_has_room_for_at_the_expected_record_size() -> None:
    limits = Limits(max_in_flight=1000, max_backlog=4, max_held_bytes=1000)
    assert fetch_size(0, limits, most=256, held_bytes=0, record_bytes=100) == 10
    assert fetch_size(0, limits, most=256, held_bytes=650, record_bytes=100) == 3
    assert fetch_size(0, limits, most=256, held_bytes=0, record_bytes=5000) == 1, "a record larger than the bound"
    assert fetch_size(0, limits, most=256, held_bytes=1200, record_bytes=100) == 1
    assert fetch_size(0, limits, most=256, held_bytes=0, record_bytes=1) == 256, "small records: MAX_IN_FLIGHT"


def test_polls_long_only_while_everything_uncommitted_is_in_the_model() -> None:
    assert poll_timeout(uncommitted=3, on_model_path=3, answer_due=False) == LONG_POLL_S
    assert poll_timeout(uncommitted=4, on_model_path=3, answer_due=False) == SHORT_POLL_S
    assert poll_timeout(uncommitted=3, on_model_path=3, answer_due=True) == SHORT_POLL_S


def test_one_deadline_from_the_first_stop() -> None:
    lifecycle = Lifecycle(shutdown_timeout_s=5.0)
    assert lifecycle.remaining() == float("inf") and not lifecycle.expired
    before = time.monotonic()
    lifecycle.stop()
    deadline = lifecycle.deadline
    assert before + 5.0 <= deadline <= time.monotonic() + 5.0
    lifecycle.stop()  # a second SIGTERM does not move it
    assert lifecycle.deadline == deadline and lifecycle.is_stopping and 4.0 < lifecycle.remaining() <= 5.0
