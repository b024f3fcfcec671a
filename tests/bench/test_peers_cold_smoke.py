"""Smoke test of the peers and cold-start scenarios: every peer answers every image and the report carries the
headline numbers. No timing assertions (speed targets live in bench/README.md)."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_runner_peers_and_cold_write_the_headline_numbers(tmp_path: Path, demo_checkpoints: tuple[Path, Path]) -> None:
    if shutil.which("redis-server") is None:
        if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
            pytest.fail("redis-server is required under CI")
        pytest.skip("redis-server not installed")
    pytest.importorskip("flask")
    out = tmp_path / "results"
    command = [
        sys.executable,
        "-m",
        "bench.run",
        *("--images", "2", "--repeat", "1", "--scenarios", "b,peers,cold", "--cold-trials", "1", "--clients", "2"),
        # imgsz 512 on 160x120: the random-weight FastSAM still answers (see bench/README.md), and quickly
        *("--width", "160", "--height", "120", "--imgsz", "512"),
        *("--out", str(out), "--checkpoints", str(demo_checkpoints[0].parent)),
    ]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"stdout:\n{done.stdout[-2000:]}\nstderr:\n{done.stderr[-4000:]}"
    report = json.loads((out / "latest.json").read_text())
    for key in ("worker_over_naive_loop", "gateway_over_seed_api", "cold_start_s"):
        assert isinstance(report[key], float) and report[key] > 0 and math.isfinite(report[key]), key
    summary = report["summary"]
    for peer in ("p1", "p2", "p3"):
        row = summary[peer]
        assert row["images"] == 2 and row["images_per_s"] > 0 and row["cpu_s_per_image"] > 0, peer
        assert row["masks_per_image"] > 0, peer
    assert summary["p2"]["models"] == {"fastsam": 2} and summary["p3"]["models"] == {"fastsam": 2}
    cold = summary["cold"]["median"]
    for variant in ("default", "sam2_foreground"):
        timeline = cold[variant]
        assert 0 < timeline["fastsam_loaded_s"] <= timeline["assigned_s"] <= timeline["first_result_s"], variant
        assert timeline["sam2_loaded_s"] > 0
    # foreground: SAM2 is loaded before the worker subscribes
    assert cold["sam2_foreground"]["sam2_loaded_s"] <= cold["sam2_foreground"]["assigned_s"]
    assert "peers (same images" in done.stdout and "cold start (default" in done.stdout
