"""Smoke tests of the side-by-side scripts: they run on tiny inputs and what they report holds (no timing asserts)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from bench import hit_path, prompt_cache, thread_vs_main


def test_prompt_cache_reports_a_hit_bit_equal_and_the_entry_size(
    tmp_path: Path, demo_checkpoints: tuple[Path, Path]
) -> None:
    report = prompt_cache.main(
        ["--images", "1", "--out", str(tmp_path), "--checkpoints", str(demo_checkpoints[0].parent)]
    )
    assert report["bit_equal"] is True
    assert report["cache"] == {"hits": 1, "misses": 1, "entries": 1}
    assert report["entry_bytes"] > 1_000_000  # image embedding + high-res features at 1024: megabytes
    assert (tmp_path / "prompt_cache.json").is_file()


def test_hit_path_answers_every_repeat_from_redis(tmp_path: Path, demo_checkpoints: tuple[Path, Path]) -> None:
    if shutil.which("redis-server") is None:
        if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
            pytest.fail("redis-server is required under CI")
        pytest.skip("redis-server not installed")
    report = hit_path.main(["--hits", "128", "--out", str(tmp_path), "--checkpoints", str(demo_checkpoints[0].parent)])
    assert report["hits"] == report["answered_from_cache"] == 128
    assert report["us_per_hit_cpu"] > 0


def test_thread_vs_main_reports_time_and_page_faults_of_each_thread(demo_checkpoints: tuple[Path, Path]) -> None:
    report = thread_vs_main.main(["--images", "1", "--repeat", "1", "--checkpoints", str(demo_checkpoints[0].parent)])
    assert len(report["main"]["ms_per_image"]) == 2 and len(report["thread"]["ms_per_image"]) == 1
    for side in ("main", "thread"):
        assert report[side]["median_ms_per_image"] > 0
        assert report[side]["median_minor_faults_per_image"] >= 0
        assert report[side]["median_system_ms_per_image"] >= 0
