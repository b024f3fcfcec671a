"""The demo's picture folder holds this run's overlays only, and the count it prints is what is there."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from devstack.demo import save_pictures
from pipeline.types import ModelName, SegmentationResult
from schemas import SegmentResultMessage

_NO_MASKS = SegmentationResult(
    masks=(),
    model=ModelName.FASTSAM,
    fallback_reason=None,
    fallback_detail=None,
    width=32,
    height=24,
    inference_width=32,
    inference_height=24,
)


def _result(request_id: str) -> SegmentResultMessage:
    return SegmentResultMessage.ok(request_id, _NO_MASKS, image_sha256=None, worker_id="w")


def _pictures(ids: list[str]) -> list[tuple[np.ndarray, SegmentResultMessage]]:
    return [(np.zeros((24, 32, 3), dtype=np.uint8), _result(i)) for i in ids]


def test_each_run_replaces_the_previous_runs_pictures(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    first = save_pictures(_pictures(["a1", "a2", "a3", "a4", "a5", "a6"]), out)
    assert first == f"overlay pictures: 6 in {out}/ plus contact_sheet.png"
    (out / "notes.txt").write_text("kept")  # not ours: left alone

    second = save_pictures(_pictures(["b1", "b2"]), out)
    count = int(re.search(r"overlay pictures: (\d+)", second).group(1))  # type: ignore[union-attr]
    overlays = sorted(p.name for p in out.glob("*.png") if p.name != "contact_sheet.png")
    assert count == len(overlays) == 2 and overlays == ["00-b1.png", "01-b2.png"]
    assert (out / "contact_sheet.png").is_file() and (out / "notes.txt").read_text() == "kept"

    assert save_pictures([], out) == f"overlay pictures: none (no computed result to draw); {out}/ cleared"
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
