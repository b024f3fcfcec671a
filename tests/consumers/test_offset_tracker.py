"""The commit watermark: a partition advances only past records whose results were delivered."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from consumers.offsets import OffsetTracker

TP = ("in", 0)


def test_out_of_order_completion_never_commits_past_an_unfinished_record() -> None:
    tracker = OffsetTracker()
    for offset in (10, 11, 12):
        tracker.add(TP, offset)
    assert tracker.done(TP, 12) == 10, "10 is still in flight: the next offset to read stays 10"
    assert tracker.done(TP, 10) == 11
    assert tracker.done(TP, 11) == 13, "all done: continue after the highest"
    assert tracker.count(unacknowledged=False) == 0, "every result is delivered"
    assert tracker.count() == 3, "but until a commit is acknowledged a crash would redeliver them"
    tracker.committed(TP, 13)
    assert tracker.count() == 0


def test_revoked_partition_ignores_late_completions() -> None:
    tracker = OffsetTracker()
    tracker.add(TP, 5)
    tracker.add(("in", 1), 7)
    tracker.forget({TP})
    assert tracker.done(TP, 5) is None, "the new owner redoes it; we must not store an offset for it"
    assert tracker.count({("in", 1)}) == 1 and tracker.count() == 1


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=1, max_value=40), st.randoms(use_true_random=False))
def test_stored_offset_is_always_a_safe_restart_point(count: int, rng: random.Random) -> None:
    """Whatever the completion order, every record below the stored offset is finished."""
    tracker = OffsetTracker()
    offsets = list(range(100, 100 + count))
    for offset in offsets:
        tracker.add(TP, offset)
    finished: set[int] = set()
    order = offsets[:]
    rng.shuffle(order)
    for offset in order:
        finished.add(offset)
        stored = tracker.done(TP, offset)
        assert stored is not None
        assert all(o in finished for o in offsets if o < stored)
    assert stored == 100 + count


def test_count_includes_finished_records_not_yet_committed() -> None:
    """Backpressure bounds redelivery after a crash: a record finished above an unfinished one, or stored but not yet
    acknowledged by a commit, is redelivered too, so it counts until a commit covering it is acknowledged."""
    tracker = OffsetTracker()
    for offset in (20, 21, 22):
        tracker.add(TP, offset)
    assert tracker.done(TP, 22) == 20
    assert tracker.done(TP, 21) == 20
    assert tracker.count() == 3, "20 in flight, 21 and 22 finished behind it"
    assert tracker.is_pending(TP, 20) and not tracker.is_pending(TP, 21)
    assert tracker.done(TP, 20) == 23
    assert tracker.count(unacknowledged=False) == 0 and tracker.count() == 3
    tracker.committed(TP, 22)
    assert tracker.count() == 1, "the commit acknowledged covers 20 and 21 only"
    tracker.committed(TP, 23)
    assert tracker.count() == 0
    tracker.add(TP, 23)
    tracker.forget({TP})
    assert not tracker.is_pending(TP, 23), "a revoked partition's records are no longer ours to answer"
    assert tracker.count() == 0


def test_a_handed_back_record_is_owed_by_no_stage_yet_blocks_its_partition() -> None:
    tracker = OffsetTracker()
    for offset in (20, 21):
        tracker.add(TP, offset)
    tracker.hand_back(TP, 20)  # stopping: nobody will answer it here
    assert tracker.owed() == 1, "a drain waits only for 21"
    assert tracker.done(TP, 21) == 20, "20 is not answered: the partition's next owner reads from 20"
    assert tracker.owed() == 0 and tracker.count() == 2, "both stay uncommitted"
    tracker.hand_back(("in", 9), 1)  # not ours: ignored
    tracker.forget({TP})
    assert tracker.owed() == 0 and tracker.count() == 0


def test_held_bytes_follow_the_payloads_until_each_record_leaves_the_stages() -> None:
    """A payload is held from consume until its result is delivered, it is handed back or its partition is lost;
    an offset may stay uncommitted after that, but its bytes are gone."""
    tracker = OffsetTracker()
    other = ("in", 1)
    tracker.add(TP, 0, 1000)
    tracker.add(TP, 1, 200)
    tracker.add(TP, 2, 30)
    tracker.add(other, 0, 4)
    assert tracker.held_bytes() == 1234
    tracker.done(TP, 1)
    assert tracker.held_bytes() == 1034, "delivered: dropped, although offset 1 waits behind 0"
    tracker.hand_back(TP, 0)
    tracker.hand_back(TP, 0)  # twice: released once
    assert tracker.held_bytes() == 34
    tracker.done(TP, 7)  # never consumed: nothing to release
    tracker.forget({TP})
    assert tracker.held_bytes() == 4, "a lost partition's records are its next owner's"
    tracker.done(other, 0)
    assert tracker.held_bytes() == 0 and tracker.count(unacknowledged=False) == 0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 5000)), min_size=1, max_size=40), st.randoms())
def test_held_bytes_are_the_sizes_of_the_records_still_owed(records: list, rng: random.Random) -> None:
    tracker = OffsetTracker()
    owed: dict[tuple[tuple[str, int], int], int] = {}
    for offset, (partition, size) in enumerate(records):
        tracker.add(("in", partition), offset, size)
        owed[(("in", partition), offset)] = size
    for tp, offset in rng.sample(list(owed), len(owed)):
        action = rng.choice(("done", "hand_back", "forget"))
        if action == "forget":
            tracker.forget({tp})
            owed = {key: size for key, size in owed.items() if key[0] != tp}
        else:
            getattr(tracker, action)(tp, offset)
            owed.pop((tp, offset), None)
        assert tracker.held_bytes() == sum(owed.values())
