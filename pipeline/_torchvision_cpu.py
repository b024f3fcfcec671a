"""CPU fallback for ``torchvision::nms`` when torchvision's compiled ops cannot load.

Why: on machines where a CPU-only torch sits beside a CUDA build of torchvision, torchvision's ``_C``
extension fails to load (missing CUDA symbols) and even ``import torchvision`` fails, because its meta
registrations need the ``torchvision::nms`` operator to exist. ultralytics and SAM2 only need ``nms``
(and ``qnms`` is registered alongside it by torchvision). A real deployment installs a matching
torch/torchvision pair; there this module does nothing.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import torch

log = logging.getLogger(__name__)

_installed = False


def _torchvision_ops_load() -> bool:
    """Try torchvision's own compiled ops the way torchvision does, without importing torchvision."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        return True  # no torchvision: nothing to fix here
    package_dir = Path(spec.origin).parent
    for candidate in sorted(package_dir.glob("_C*.so")) + sorted(package_dir.glob("_C*.pyd")):
        try:
            torch.ops.load_library(str(candidate))
            return True
        except (OSError, ImportError, RuntimeError):
            continue
    return False


def nms_reference(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression with torchvision's semantics (indices sorted by score)."""
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    boxes = boxes.float()
    order = torch.argsort(scores, descending=True, stable=True)
    x1, y1, x2, y2 = boxes.unbind(1)
    areas = (x2 - x1).clamp(min=0) * (y2 - y1).clamp(min=0)
    suppressed = torch.zeros(boxes.shape[0], dtype=torch.bool, device=boxes.device)
    keep: list[int] = []
    order_list = order.tolist()
    for position, index in enumerate(order_list):
        if suppressed[index]:
            continue
        keep.append(index)
        rest = order[position + 1 :]
        if rest.numel() == 0:
            break
        xx1 = torch.maximum(x1[index], x1[rest])
        yy1 = torch.maximum(y1[index], y1[rest])
        xx2 = torch.minimum(x2[index], x2[rest])
        yy2 = torch.minimum(y2[index], y2[rest])
        intersection = (xx2 - xx1).clamp(min=0) * (yy2 - yy1).clamp(min=0)
        iou = intersection / (areas[index] + areas[rest] - intersection)
        suppressed[rest[iou > iou_threshold]] = True
    return torch.tensor(keep, dtype=torch.int64, device=boxes.device)


def ensure_torchvision_ops() -> bool:
    """Register a CPU ``torchvision::nms`` if torchvision's own ops cannot load. Returns True if it did."""
    global _installed
    if _installed:
        return True
    if _torchvision_ops_load():
        return False
    library = torch.library.Library("torchvision", "DEF")
    library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    library.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    library.impl("nms", nms_reference, "CPU")
    library.impl("nms", nms_reference, "CompositeExplicitAutograd")
    globals()["_library"] = library
    import torchvision.extension

    # torchvision.ops.nms asserts that the compiled ops loaded; nms now exists, so let it through.
    torchvision.extension._has_ops = lambda: True
    _installed = True
    log.warning("torchvision's compiled ops did not load; using segpipe's CPU nms kernel")
    return True
