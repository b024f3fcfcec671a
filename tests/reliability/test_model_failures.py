"""Real model failures: checkpoints that are corrupt on disk (a truncated download), not mocks.

FastSAM failing must fall back to SAM2 (fallback_reason=fastsam_error); both failing must give error results and
dead letters, never a crash.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hostile_payloads import bare, encode, noise_pixels
from reliability_harness import (
    Follow,
    Launcher,
    Publisher,
    Report,
    TopicsFactory,
    avro_record,
    noise_image,
)

from devstack.services import LocalKafka
from pipeline.types import ModelChoice, SegmentParams
from schemas import ResultStatus

pytestmark = pytest.mark.slow


def _truncated_copy(source: Path, target: Path) -> Path:
    """The first half of a real checkpoint: what an interrupted download leaves behind."""
    data = source.read_bytes()
    target.write_bytes(data[: len(data) // 2])
    return target


def test_corrupt_checkpoints_fall_back_or_fail_per_request(
    kafka: LocalKafka,
    demo_checkpoints: tuple[Path, Path],
    make_topics: TopicsFactory,
    launcher: Launcher,
    report: Report,
    follow: Follow,
    tmp_path: Path,
) -> None:
    fastsam, sam2 = demo_checkpoints
    broken_fastsam = _truncated_copy(fastsam, tmp_path / "FastSAM-truncated.pt")
    broken_sam2 = _truncated_copy(sam2, tmp_path / "sam2.1_hiera_tiny-truncated.pt")

    # Two workers side by side, each on its own topics: FastSAM broken; both broken.
    one_topics, both_topics = make_topics(1), make_topics(1)
    one_results, both_results = follow(kafka.bootstrap, one_topics.output), follow(kafka.bootstrap, both_topics.output)
    both_letters = follow(kafka.bootstrap, both_topics.dead_letter)
    one = launcher(one_topics, FASTSAM_MODEL_PATH=str(broken_fastsam))
    both = launcher(both_topics, FASTSAM_MODEL_PATH=str(broken_fastsam), SAM_MODEL_PATH=str(broken_sam2))
    one.wait_assigned(120)
    both.wait_assigned(120)

    image = noise_image(31, 96, 128)
    requests = [
        avro_record("auto", image),
        avro_record("fastsam-only", image, params=SegmentParams(model=ModelChoice.FASTSAM)),
        (b"bare-auto", encode(noise_pixels(32), ".jpg"), bare("bare-auto")),
    ]
    Publisher(kafka.bootstrap, one_topics.input).send_all(requests)
    both_requests = [*requests, avro_record("sam2-only", image, params=SegmentParams(model=ModelChoice.SAM2))]
    Publisher(kafka.bootstrap, both_topics.input).send_all(both_requests)

    answered = {r.request_id: r for r in one_results.wait_request_ids(["auto", "fastsam-only", "bare-auto"], 240)}
    for request_id in ("auto", "bare-auto"):
        result = answered[request_id]
        assert result.status == ResultStatus.OK, result.error
        assert str(result.model) == "sam2" and str(result.fallback_reason) == "fastsam_error", result
        assert result.fallback_detail, "the fallback says why"
    assert answered["fastsam-only"].error is not None and answered["fastsam-only"].error.code == "model_failed"

    ids = ["auto", "fastsam-only", "bare-auto", "sam2-only"]
    failed = {r.request_id: r for r in both_results.wait_request_ids(ids, 240)}
    codes = {request_id: failed[request_id].error.code for request_id in ids if failed[request_id].error}
    assert set(codes) == set(ids), f"every request is an error result: {failed}"
    assert set(codes.values()) <= {"model_failed", "model_unavailable"}, codes
    both_letters.wait_for(lambda: len(both_letters.snapshot()) >= len(ids), 60, "a dead letter per failed request")
    letters = {d.request_id: d for d in both_letters.dead_letters()}
    assert set(letters) == set(ids) and all(letters[i].original_value for i in ids)

    assert one.process.poll() is None and both.process.poll() is None, "no crash"
    assert "cannot load FastSAM checkpoint" in one.log()
    assert one.stop() == 0 and both.stop() == 0
    report(
        fastsam_broken={
            r: f"{answered[r].model}/{answered[r].fallback_reason or answered[r].error.code}" for r in answered
        },
        both_broken=codes,
        dead_letters=len(letters),
        lost=0,
        crashes=0,
    )
