"""Running FastSAM must not drop torch below its CPU threads: ultralytics sets OMP_NUM_THREADS=1 on import and
torch.set_num_threads(cpu_count - 1) when it selects the CPU."""

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


def test_fastsam_keeps_torch_default_thread_count(demo_checkpoints: tuple[Path, Path]) -> None:
    default = _run("import torch; print(torch.get_num_threads())")
    loaded = _run(
        "import numpy as np\n"
        "from pipeline.models import FastSAMModel\n"
        "from pipeline.types import Prompts\n"
        f"model = FastSAMModel({str(demo_checkpoints[0])!r}, 'cpu')\n"
        "model.predict([np.zeros((64, 64, 3), np.uint8)], [Prompts()], conf=0.4, iou=0.8, imgsz=64, retina=True)\n"
        "import os, torch; print(torch.get_num_threads(), os.environ['OMP_NUM_THREADS'])"
    )
    assert loaded == f"{default} {default}", "torch threads and the inherited OMP_NUM_THREADS stay at torch's default"
