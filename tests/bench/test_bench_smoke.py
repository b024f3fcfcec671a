"""Smoke tests of the benchmark: the runner works end to end on tiny inputs and writes a complete report.

No timing assertions: speed targets live in the benchmark (bench/README.md), not in tests.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.stats import clean_for_json, median_of, percentile

REPO_ROOT = Path(__file__).resolve().parents[2]
STAGE_KEYS = {"decode", "dedup", "queue", "preprocess", "fastsam", "sam2", "postprocess", "batch_wait", "kafka"}


def test_percentile_and_median_of_nested_runs() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([5.0], 99) == 5.0
    assert math.isnan(percentile([], 50))
    runs = [
        {"x": 1.0, "d": {"y": 10}, "name": "a"},
        {"x": 3.0, "d": {"y": 30}, "name": "b"},
        {"x": 2.0, "d": {"y": 20}},
    ]
    assert median_of(runs) == {"x": 2.0, "d": {"y": 20}, "name": "b"}
    assert clean_for_json({"v": [math.nan, 1.0]}) == {"v": [None, 1.0]}


def test_runner_scenarios_a_c_e_write_valid_json_and_chart(tmp_path: Path, demo_checkpoints: tuple[Path, Path]) -> None:
    """(a) bare loop, (c) dedup hits through a real broker, Redis and worker process, (e) the batch curve."""
    if shutil.which("redis-server") is None:
        if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
            pytest.fail("redis-server is required under CI")
        pytest.skip("redis-server not installed")
    out = tmp_path / "results"
    command = [
        sys.executable,
        "-m",
        "bench.run",
        *("--images", "3", "--repeat", "1", "--scenarios", "a,c,e"),
        # imgsz 512: the smallest size at which the random-weight FastSAM still answers (see bench/README.md)
        *("--width", "160", "--height", "120", "--imgsz", "512", "--hits", "12", "--batch-sizes", "1,2,4"),
        *("--out", str(out), "--checkpoints", str(demo_checkpoints[0].parent)),
    ]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, f"stdout:\n{done.stdout[-2000:]}\nstderr:\n{done.stderr[-4000:]}"

    report = json.loads((out / "latest.json").read_text())
    assert {"machine", "config", "summary", "runs", "command"} <= report.keys()
    assert {"cpu_count", "torch_version", "torch_threads", "device"} <= report["machine"].keys()
    summary = report["summary"]
    assert {"a", "c", "c_closed", "e", "steps", "ratios"} <= summary.keys()
    for key in ("a", "c", "c_closed"):
        assert summary[key]["images_per_s"] > 0
        assert {"p50", "p99"} <= summary[key]["latency_ms"].keys()
        assert set(summary[key]["stages_ms"]) == STAGE_KEYS
    assert summary["a"]["models"] == {"fastsam": 3}
    assert summary["c"]["cached"] == 12  # every request of (c) was a dedup hit
    assert [p["batch_size"] for p in summary["e"]["curve"]] == [1, 2, 4]
    assert all(p["images_per_s"] > 0 for p in summary["e"]["curve"])
    assert {"decode_png", "sha256", "encode_result", "redis_put"} <= summary["steps"].keys()
    assert (out / "latest.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
