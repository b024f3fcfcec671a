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

from bench.harness import decode_light, peek_request_id
from bench.run import default_window
from bench.scenarios import arrival_gaps
from bench.stats import clean_for_json, median_of, percentile
from schemas import ErrorInfo, SegmentResultMessage, encode_result

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


def test_reader_helpers_peek_the_request_id_and_find_stalls() -> None:
    """The reader files results by the request id read from the Avro bytes, without decoding them."""
    for request_id in ("r-1", "x" * 200, "é" * 70):  # one- and two-byte varint lengths, non-ASCII
        message = SegmentResultMessage.failure(request_id, ErrorInfo("internal", "boom"), worker_id="w")
        data = encode_result(message)
        assert peek_request_id(data) == request_id
        assert decode_light(data, 1.0).request_id == request_id
    with pytest.raises(ValueError):
        peek_request_id(b"\x50abc")  # claims 40 bytes
    gaps = arrival_gaps(10.0, [10.1, 10.2, 11.2, 11.21])
    assert round(gaps["first_result_ms"]) == 100 and round(gaps["max_ms"]) == 1000
    assert gaps["over_200ms_count"] == 1
    assert default_window({"MAX_IN_FLIGHT": "100"}, "") == 87  # 7/8, rounded down
    assert default_window({}, "poll_s=0.01;max_in_flight=9") == 7


def test_runner_scenarios_a_c_e_write_valid_json_and_chart(tmp_path: Path, demo_checkpoints: tuple[Path, Path]) -> None:
    """(a) bare loop, (c) dedup hits through a real broker, Redis and worker process (PNGs and small JPEGs, burst
    and closed loop), (e) the batch curve."""
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
        *("--width", "160", "--height", "120", "--imgsz", "512", "--batch-sizes", "1,2,4"),
        *("--png-hits", "6", "--hits", "40", "--small-images", "2", "--window", "4"),
        *("--out", str(out), "--checkpoints", str(demo_checkpoints[0].parent)),
    ]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, f"stdout:\n{done.stdout[-2000:]}\nstderr:\n{done.stderr[-4000:]}"

    report = json.loads((out / "latest.json").read_text())
    assert {"machine", "config", "summary", "runs", "command"} <= report.keys()
    assert {"cpu_count", "torch_version", "torch_threads", "device"} <= report["machine"].keys()
    summary = report["summary"]
    hits = {"c_png": 6, "c_png_closed": 6, "c_small": 40, "c_small_closed": 40}
    assert {"a", *hits, "e", "steps", "ratios"} <= summary.keys()
    for key in ("a", *hits):
        assert summary[key]["images_per_s"] > 0
        assert {"p50", "p99"} <= summary[key]["latency_ms"].keys()
        assert set(summary[key]["stages_ms"]) == STAGE_KEYS
    assert summary["a"]["models"] == {"fastsam": 3}
    for key, count in hits.items():
        row = summary[key]
        assert row["cached"] == row["images"] == count  # every request of (c) was a dedup hit
        assert row["hits_per_s"] > 0 and row["mb_in_per_s"] > 0 and row["mb_out_per_s"] > 0
        assert row["worker_cpu_ms_per_hit"] >= 0 and row["publish_stalls"] == 0
        kind = "160x120 PNG" if key.startswith("c_png") else "small JPEG (160x120)"
        mode = "closed loop (4 in flight)" if key.endswith("closed") else "burst"
        assert row["label"] == f"(c) hits, {kind}, {mode}"
        assert ("window_bound_per_s" in row) == key.endswith("closed")
    assert summary["c_small"]["request_bytes"] < 10_000  # a few KB, not a PNG
    assert report["config"]["small_size"] == [160, 120] and report["config"]["window"] == 4
    assert [p["batch_size"] for p in summary["e"]["curve"]] == [1, 2, 4]
    assert all(p["images_per_s"] > 0 for p in summary["e"]["curve"])
    assert {"decode_png", "sha256", "encode_result", "redis_put"} <= summary["steps"].keys()
    assert (out / "latest.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
