"""FastSAM on ONNX Runtime (``FASTSAM_RUNTIME=onnx``): ultralytics' own ONNX export, made once and cached.

The export is ultralytics' ``YOLO(checkpoint).export(format="onnx", dynamic=True)``; ultralytics then runs the file
through its AutoBackend with ONNX Runtime, so pre- and post-processing (letterbox, NMS, mask assembly) and
segpipe's stability-score predictor are the same code as with torch. ``dynamic=True`` keeps the input shape free:
the predictor letterboxes to the same rectangle as with torch (a static export would pad to a square and give
slightly different masks), and one file serves every ``imgsz``.

The file lies beside the checkpoint, named by the checkpoint's SHA-256 (a changed checkpoint gets a new export);
when that folder is not writable it goes to ``$SEGPIPE_ONNX_CACHE`` or ``~/.cache/segpipe/onnx``. The export
writes to a temporary file renamed into place, so concurrent workers never read a half-written model. Offline:
ultralytics' requirement check would try ``pip install`` for a missing onnx/onnxslim/onnxruntime; segpipe
sets ``YOLO_AUTOINSTALL=False`` and ``YOLO_OFFLINE=1`` first (:func:`pipeline.models.configure_offline`) and checks
the three are importable, failing with a clear error instead (install the ``onnx`` extra).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path

from pipeline.errors import ModelUnavailableError

log = logging.getLogger(__name__)

#: The ONNX opset of the export; fixed so a newer ultralytics does not silently change the cached file's meaning.
OPSET = 17
_export_lock = threading.Lock()


def checkpoint_digest(checkpoint: Path) -> str:
    digest = hashlib.sha256()
    with open(checkpoint, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _cache_dirs(checkpoint: Path) -> list[Path]:
    dirs = [checkpoint.parent]
    if os.environ.get("SEGPIPE_ONNX_CACHE"):
        dirs.append(Path(os.environ["SEGPIPE_ONNX_CACHE"]))
    dirs.append(Path.home() / ".cache" / "segpipe" / "onnx")
    return dirs


def onnx_file_name(checkpoint: Path) -> str:
    return f"{checkpoint.stem}.{checkpoint_digest(checkpoint)[:16]}.opset{OPSET}.dynamic.onnx"


def onnx_export_path(checkpoint: Path) -> Path:
    """The cached ONNX export of ``checkpoint``, exported now if absent (seconds, once per checkpoint)."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise ModelUnavailableError(f"FastSAM checkpoint not found: {checkpoint} (FASTSAM_MODEL_PATH)")
    _require("onnx", "onnxruntime")  # to run it (ultralytics checks for onnx too)
    name = onnx_file_name(checkpoint)
    for folder in _cache_dirs(checkpoint):
        if (folder / name).is_file():
            return folder / name
    _require("onnxslim")  # to export it
    with _export_lock:
        errors = []
        for folder in _cache_dirs(checkpoint):
            target = folder / name
            if target.is_file():
                return target
            try:
                folder.mkdir(parents=True, exist_ok=True)
                _export(checkpoint, target)
                return target
            except OSError as exc:  # a read-only checkpoint folder: try the next one
                errors.append(f"{folder}: {exc}")
        raise ModelUnavailableError(f"cannot write the ONNX export of {checkpoint}: {'; '.join(errors)}")


def _require(*modules: str) -> None:
    """Fail clearly rather than let ultralytics' requirement check try to pip install them (it would, online)."""
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        raise ModelUnavailableError(
            f"FASTSAM_RUNTIME=onnx needs {', '.join(missing)} installed (pip install 'segpipe[onnx]')"
        )


def _export(checkpoint: Path, target: Path) -> None:
    from pipeline.models import _import_torch, configure_offline

    configure_offline()
    _import_torch()
    from ultralytics import YOLO

    # ultralytics writes the export beside its input: export a copy in a private folder, then rename into place.
    with tempfile.TemporaryDirectory(prefix=".segpipe-onnx-", dir=target.parent) as tmp:
        source = Path(tmp) / f"{checkpoint.stem}.pt"
        shutil.copyfile(checkpoint, source)
        try:
            exported = YOLO(str(source)).export(
                format="onnx", dynamic=True, simplify=True, opset=OPSET, device="cpu", verbose=False
            )
        except Exception as exc:  # ultralytics wraps export failures in several types
            raise ModelUnavailableError(f"ONNX export of {checkpoint} failed: {exc}") from exc
        os.replace(exported, target)
    log.info("exported FastSAM %s to ONNX %s", checkpoint, target)
