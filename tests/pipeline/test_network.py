"""The offline promise: building a Segmenter and running both models never resolves or connects to a remote host.

The check runs in a fresh interpreter (the test process has long since imported ultralytics and set YOLO_OFFLINE),
with HOME and YOLO_CONFIG_DIR in an empty directory so ultralytics writes its settings file anew, and with
YOLO_OFFLINE removed from the environment: segpipe itself must switch ultralytics offline. A ``sys.addaudithook``
installed before anything is imported records every name lookup and connect to a non-local host.

What this cannot see: sockets opened by native code that bypasses Python's socket module (none is known in these
libraries). The guard itself is proven by a second run that deliberately opens http://example.com.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

HARNESS = r"""
import json
import sys

LOCAL = {"127.0.0.1", "::1", "localhost", "0.0.0.0", "::", ""}
seen = []


def audit(event, args):
    if event == "socket.connect" or event == "socket.sendto":
        address = args[1]
        if not isinstance(address, tuple):  # AF_UNIX paths are local
            return
        host = address[0]
    elif event in ("socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr"):
        host = args[0]
    else:
        return
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    if host is None or str(host).lower() in LOCAL:
        return
    seen.append({"event": event, "host": str(host)})


sys.addaudithook(audit)

repo, fastsam_path, sam2_path, probe = sys.argv[1:5]
sys.path.insert(0, repo)

import numpy as np

from pipeline.segmenter import Segmenter
from pipeline.settings import ModelSettings
from pipeline.types import ModelChoice, Prompts, SegmentParams

settings = ModelSettings(
    fastsam_model_path=fastsam_path,
    sam_model_path=sam2_path,
    device="cpu",
    fastsam_imgsz=640,
    sam2_points_per_side=4,
    sam2_pred_iou_thresh=0.0,
    sam2_stability_score_thresh=0.0,
)
segmenter = Segmenter(settings)
segmenter.warm_up()
image = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)
fastsam = SegmentParams(model=ModelChoice.FASTSAM, conf=0.005)
everything = segmenter.segment(image, params=fastsam)
boxed = segmenter.segment(image, Prompts(boxes=((20.0, 20.0, 200.0, 160.0),)), fastsam)
ran = {"fastsam_everything": len(everything.masks), "fastsam_box": len(boxed.masks)}
if probe == "none":
    prompted = segmenter.segment(image, Prompts(points=((100.0, 80.0),)), SegmentParams(model=ModelChoice.SAM2))
    ran["sam2_point"] = len(prompted.masks)
else:
    import urllib.request

    try:
        urllib.request.urlopen(probe, timeout=1)
    except Exception as exc:
        ran["probe_error"] = type(exc).__name__
    else:
        ran["probe_error"] = None
print("SEGPIPE-AUDIT " + json.dumps({"remote": seen, "ran": ran}))
"""


def run_harness(tmp_path: Path, checkpoints: tuple[Path, Path], probe: str = "none") -> dict:
    """Run the harness in a fresh interpreter with a fresh HOME and no YOLO_OFFLINE; return its JSON report."""
    home = tmp_path / "home"
    (home / "yolo").mkdir(parents=True)
    script = tmp_path / "harness.py"
    script.write_text(HARNESS)
    env = {k: v for k, v in os.environ.items() if k not in ("YOLO_OFFLINE", "YOLO_CONFIG_DIR", "PYTHONPATH")}
    env.update(HOME=str(home), YOLO_CONFIG_DIR=str(home / "yolo"), XDG_CONFIG_HOME=str(home / ".config"))
    completed = subprocess.run(
        [sys.executable, str(script), str(REPO_ROOT), str(checkpoints[0]), str(checkpoints[1]), probe],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    (line,) = [x for x in completed.stdout.splitlines() if x.startswith("SEGPIPE-AUDIT ")]
    report = json.loads(line.removeprefix("SEGPIPE-AUDIT "))
    assert any((home / "yolo").iterdir()), "ultralytics did not write its settings into the fresh config dir"
    return report


def test_models_never_touch_the_network(tmp_path: Path, demo_checkpoints: tuple[Path, Path]) -> None:
    """FastSAM (everything and a box) and SAM2 (a point) from a cold start: no remote lookup or connect at all."""
    report = run_harness(tmp_path, demo_checkpoints)
    assert set(report["ran"]) == {"fastsam_everything", "fastsam_box", "sam2_point"}
    assert report["ran"]["sam2_point"] == 1
    assert report["remote"] == []


def test_network_guard_sees_a_real_attempt(tmp_path: Path, demo_checkpoints: tuple[Path, Path]) -> None:
    """The same harness, plus a deliberate urlopen: the audit hook must record it, so the test above can fail."""
    report = run_harness(tmp_path, demo_checkpoints, probe="http://example.com")
    assert "probe_error" in report["ran"]
    assert {"event": "socket.getaddrinfo", "host": "example.com"} in report["remote"]
    assert all(entry["host"] == "example.com" for entry in report["remote"]), report["remote"]
