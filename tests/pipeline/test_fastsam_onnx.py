"""FASTSAM_RUNTIME=onnx: ultralytics' ONNX export, cached beside the checkpoint, gives torch's masks, offline."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.fastsam_onnx import onnx_export_path, onnx_file_name
from pipeline.models import FastSAMModel
from pipeline.types import Prompts

pytest.importorskip("onnxruntime")
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def fastsam_copy(tmp_path_factory: pytest.TempPathFactory, demo_checkpoints: tuple[Path, Path]) -> Path:
    """The demo FastSAM in a private folder, so the export is written (and found) there, not in a shared cache."""
    target = tmp_path_factory.mktemp("onnx") / demo_checkpoints[0].name
    shutil.copyfile(demo_checkpoints[0], target)
    return target


def _image(seed: int) -> np.ndarray:
    from bench.images import synthetic_image

    return synthetic_image(seed, 320, 240)


def test_export_is_cached_beside_the_checkpoint(fastsam_copy: Path) -> None:
    first = onnx_export_path(fastsam_copy)
    assert first.parent == fastsam_copy.parent and first.name == onnx_file_name(fastsam_copy)
    stamp = first.stat().st_mtime_ns
    assert onnx_export_path(fastsam_copy) == first and first.stat().st_mtime_ns == stamp  # not exported again
    assert [p.name for p in fastsam_copy.parent.iterdir() if p.name.startswith(".segpipe-onnx-")] == []


@pytest.mark.parametrize("imgsz", [512, 1024])
def test_onnx_masks_match_torch(fastsam_copy: Path, imgsz: int) -> None:
    """Per mask IoU >= 0.99 and the same number of masks, same order, on images the random FastSAM answers."""
    torch_model = FastSAMModel(fastsam_copy, "cpu")
    onnx_model = FastSAMModel(fastsam_copy, "cpu", runtime="onnx")
    compared = 0
    for seed in (1, 2):
        image = _image(seed)
        kwargs = {"conf": 0.005, "iou": 0.8, "imgsz": imgsz, "retina": True}
        (expected,) = torch_model.predict([image], [Prompts()], **kwargs)
        (got,) = onnx_model.predict([image], [Prompts()], **kwargs)
        assert len(got) == len(expected)
        for a, b in zip(expected, got, strict=True):
            union = np.logical_or(a.mask, b.mask).sum()
            iou = np.logical_and(a.mask, b.mask).sum() / union if union else 1.0
            assert iou >= 0.99
            assert abs(a.predicted_iou - b.predicted_iou) < 1e-3
            compared += 1
    assert compared > 0, "the random FastSAM found no mask: nothing was compared"


AUDIT = r"""
import json, shutil, sys
LOCAL = {"127.0.0.1", "::1", "localhost", "0.0.0.0", "::", ""}
seen = []
def audit(event, args):
    if event in ("socket.connect", "socket.sendto"):
        if not isinstance(args[1], tuple):
            return
        host = args[1][0]
    elif event in ("socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr"):
        host = args[0]
    elif event == "subprocess.Popen":  # ultralytics' auto-install runs pip in a subprocess (hardware probes are local)
        command = " ".join(map(str, args[1] if isinstance(args[1], (list, tuple)) else [args[1]]))
        if "pip" in command.split() or "install" in command:
            seen.append({"event": event, "host": command[:200]})
        return
    else:
        return
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    if host is None or str(host).lower() in LOCAL:
        return
    seen.append({"event": event, "host": str(host)})
sys.addaudithook(audit)
repo, checkpoint = sys.argv[1:3]
sys.path.insert(0, repo)
import numpy as np
from pipeline.models import FastSAMModel
from pipeline.types import Prompts
model = FastSAMModel(checkpoint, "cpu", runtime="onnx")
image = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)
(masks,) = model.predict([image], [Prompts()], conf=0.005, iou=0.8, imgsz=640, retina=True)
print("SEGPIPE-AUDIT " + json.dumps({"remote": seen, "masks": len(masks)}))
"""


def test_export_and_run_touch_no_network(tmp_path: Path, demo_checkpoints: tuple[Path, Path]) -> None:
    """A fresh interpreter, a fresh HOME, no YOLO_OFFLINE: export + ONNX Runtime inference open no remote socket
    and start no process (ultralytics' requirement check would run pip)."""
    checkpoint = tmp_path / demo_checkpoints[0].name
    shutil.copyfile(demo_checkpoints[0], checkpoint)
    home = tmp_path / "home"
    (home / "yolo").mkdir(parents=True)
    script = tmp_path / "audit.py"
    script.write_text(AUDIT)
    env = {k: v for k, v in os.environ.items() if k not in ("YOLO_OFFLINE", "YOLO_CONFIG_DIR", "PYTHONPATH")}
    env.update(HOME=str(home), YOLO_CONFIG_DIR=str(home / "yolo"))
    done = subprocess.run(
        [sys.executable, str(script), str(REPO_ROOT), str(checkpoint)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    (line,) = [x for x in done.stdout.splitlines() if x.startswith("SEGPIPE-AUDIT ")]
    report = json.loads(line.removeprefix("SEGPIPE-AUDIT "))
    assert (tmp_path / onnx_file_name(checkpoint)).is_file()
    assert report["remote"] == []
