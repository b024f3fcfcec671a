"""Loading FastSAM must not silently drop torch to one CPU thread (ultralytics sets OMP_NUM_THREADS=1 on import)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def _run(code: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env["PYTHONPATH"] = str(REPO_ROOT)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def test_fastsam_load_keeps_torch_default_thread_count(demo_checkpoints: tuple[Path, Path]) -> None:
    default = _run("import torch; print(torch.get_num_threads())")
    loaded = _run(
        "from pipeline.models import FastSAMModel\n"
        f"FastSAMModel({str(demo_checkpoints[0])!r}, 'cpu').load()\n"
        "import os, torch; print(torch.get_num_threads(), os.environ['OMP_NUM_THREADS'])"
    )
    assert loaded == f"{default} {default}", "torch threads and the inherited OMP_NUM_THREADS stay at torch's default"
