"""Hostile input through a running worker: every bad record gets an error result and a dead letter that keeps the
original bytes and the reason, its offset is committed, and the worker keeps serving good requests."""

from __future__ import annotations

import time
from collections import Counter

import numpy as np
import pytest
from hostile_payloads import Hostile, bare, encode, hostile_cases, noise_pixels
from reliability_harness import (
    Follow,
    Launcher,
    Publisher,
    Report,
    TopicsFactory,
    committed_offsets,
)

from devstack.services import LocalKafka
from schemas import ResultStatus

pytestmark = pytest.mark.slow

WORKER_MESSAGE_MAX_BYTES = 1_000_000  # the worker's KAFKA_MESSAGE_MAX_BYTES here; the broker takes up to 50 MB


def test_hostile_records_get_error_results_and_dead_letters(
    kafka: LocalKafka, make_topics: TopicsFactory, launcher: Launcher, report: Report, follow: Follow
) -> None:
    topics = make_topics(2)
    results = follow(kafka.bootstrap, topics.output)
    letters = follow(kafka.bootstrap, topics.dead_letter)
    worker = launcher(topics, KAFKA_MESSAGE_MAX_BYTES=str(WORKER_MESSAGE_MAX_BYTES))
    worker.wait_assigned(120)

    cases = hostile_cases()
    oversized = np.random.default_rng(3).bytes(WORKER_MESSAGE_MAX_BYTES + 500_000)
    cases.append(Hostile("oversized", oversized, bare("oversized"), "image_too_large"))
    good_png = encode(noise_pixels(2), ".png")
    # A reply topic nobody can create: the result still reaches the output topic and the worker is not wedged.
    cases.append(
        Hostile(
            "reply-to-invalid-topic",
            b"not an image",
            bare("reply-to-invalid-topic", reply_to="bad topic!"),
            "invalid_image",
        )
    )
    cases.append(  # the same again: librdkafka now refuses the produce call itself (unknown topic), synchronously
        Hostile(
            "reply-to-invalid-topic-again",
            b"not an image",
            bare("reply-to-invalid-topic-again", reply_to="bad topic!"),
            "invalid_image",
        )
    )
    publisher = Publisher(kafka.bootstrap, topics.input, max_message_bytes=20_000_000)
    publisher.send_all((case.key, case.value, case.headers) for case in cases)
    publisher.send_all([(b"good", good_png, bare("good"))])

    def expected_id(case: Hostile) -> str:
        """The request id a result carries: the header's, else the record's key (each case is keyed by its name)."""
        for key, value in case.headers:
            if key == "segpipe-request-id":
                return value.decode()
        return case.key.decode()

    ids = {case.name: expected_id(case) for case in cases}
    results.wait_request_ids([*ids.values(), "good"], timeout=180)
    letters.wait_for(lambda: len(letters.snapshot()) >= len(cases), 60, "one dead letter per hostile record")
    time.sleep(2)
    by_id = {r.request_id: r for r in results.results()}
    dead = {d.request_id: d for d in letters.dead_letters()}
    results.close()
    letters.close()

    assert by_id["good"].status == ResultStatus.OK, "the worker still segments after all that"
    answers = {c.name: by_id[ids[c.name]] for c in cases}
    wrong = {c.name: (answers[c.name].error.code if answers[c.name].error else "ok", c.code) for c in cases}
    wrong = {name: got for name, got in wrong.items() if got[0] != got[1]}
    assert not wrong, f"(got, expected) codes: {wrong}"
    for case in cases:
        letter = dead.get(ids[case.name])
        assert letter is not None, f"{case.name}: no dead letter"
        assert letter.error.code == case.code and letter.error.message, case.name
        assert letter.topic == topics.input and letter.offset == publisher.placed[case.name].offset, case.name
        if case.name == "oversized":
            # Too big to copy into a record the worker may produce: referenced by topic/partition/offset instead.
            assert letter.original_value is None and "not copied" in letter.error.message, letter.error.message
        else:
            assert letter.original_value == case.value, f"{case.name}: the original payload is kept byte for byte"
            assert [(h.key, h.value) for h in letter.original_headers] == case.headers, case.name
    assert len(letters_seen := list(dead)) == len(cases), letters_seen

    assert worker.process.poll() is None, "the worker is alive"
    assert worker.stop() == 0
    ends = publisher.ends()
    assert committed_offsets(kafka.bootstrap, topics.group, topics.input, 2) == {
        p: ends.get(p, -1001) for p in range(2)
    }, "every hostile record's offset is committed"
    report(
        inputs=len(cases),
        results=len(by_id),
        dead_letters=len(dead),
        lost=0,
        codes=dict(Counter(c.code for c in cases)),
        cases=[c.name for c in cases],
        crashes=0,
    )
