"""Which of FastSAM's masks answers which prompt (the rule, also in the README under "Prompts").

FastSAM segments everything; prompts only *select* among its masks. ultralytics' own selection picks, per box, the
mask of best box IoU even when every IoU is 0 (a 3-pixel mask outside the box came back as the answer), merges
boxes that pick the same mask, and returns every mask containing a point. The rule here instead gives each prompt
at most one mask, in prompt order, and never a mask that does not touch its prompt:

* **boxes** (prompt ``i`` is ``boxes[i]``): the candidates are the masks with at least one pixel inside the box that
  contain no background point and every foreground point lying inside the box; the answer is the candidate of
  highest IoU between the mask and the box region (ties: higher predicted_iou). No candidate: no answer.
* **points without boxes** (one prompt, index 0): the candidates are the masks containing every foreground point and
  no background point (with only background points: the masks containing none of them); the answer is the candidate
  of highest predicted_iou (ties: smaller area). No candidate: no answer.

A point ``(x, y)`` falls in pixel ``(row=int(y), col=int(x))`` (clipped to the image); a box covers the pixels whose
centres' indices run from ``floor(x1)`` to ``ceil(x2) - 1`` and ``floor(y1)`` to ``ceil(y2) - 1``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from pipeline.models import RawMask
from pipeline.types import Prompts

__all__ = ["prompt_count", "select_for_prompts"]


def prompt_count(prompts: Prompts) -> int:
    """How many masks a prompted request gets: one per box, or one for a set of points; 0 in everything mode."""
    if prompts.boxes:
        return len(prompts.boxes)
    return 1 if prompts.points else 0


def _pixel(x: float, y: float, width: int, height: int) -> tuple[int, int]:
    return min(max(int(y), 0), height - 1), min(max(int(x), 0), width - 1)


def _point_hits(stack: np.ndarray, prompts: Prompts) -> tuple[np.ndarray, np.ndarray]:
    """Per mask: does it contain each foreground point / each background point? Two (N, P) bool arrays."""
    count, height, width = stack.shape
    labels = prompts.point_labels or (1,) * len(prompts.points)
    pixels = [_pixel(x, y, width, height) for x, y in prompts.points]
    hits = np.stack([stack[:, r, c] for r, c in pixels], axis=1) if pixels else np.zeros((count, 0), bool)
    fg = np.asarray([label == 1 for label in labels], dtype=bool)
    return hits[:, fg], hits[:, ~fg]


def select_for_prompts(masks: Sequence[RawMask], prompts: Prompts) -> list[RawMask | None]:
    """FastSAM's answer to each prompt, in prompt order (``None``: no mask qualifies); see the module's rule.

    ``masks`` are FastSAM's everything-mode masks at the size the prompts' coordinates refer to.
    """
    wanted = prompt_count(prompts)
    if not masks or wanted == 0:
        return [None] * wanted
    stack = np.stack([np.asarray(m.mask, dtype=bool) for m in masks])
    height, width = stack.shape[1:]
    scores = np.asarray([m.predicted_iou for m in masks], dtype=np.float64)
    areas = stack.reshape(len(masks), -1).sum(axis=1)
    fg_hits, bg_hits = _point_hits(stack, prompts)
    no_background = ~bg_hits.any(axis=1)
    if not prompts.boxes:
        ok = no_background & fg_hits.all(axis=1)
        if not ok.any():
            return [None]
        order = sorted(np.flatnonzero(ok), key=lambda i: (-scores[i], areas[i]))
        return [masks[order[0]]]
    labels = prompts.point_labels or (1,) * len(prompts.points)
    foreground = [point for point, label in zip(prompts.points, labels, strict=True) if label == 1]
    answers: list[RawMask | None] = []
    for x1, y1, x2, y2 in prompts.boxes:
        c1, r1 = max(math.floor(x1), 0), max(math.floor(y1), 0)
        c2, r2 = min(math.ceil(x2), width), min(math.ceil(y2), height)
        inside = stack[:, r1:r2, c1:c2].reshape(len(masks), -1).sum(axis=1)
        union = (r2 - r1) * (c2 - c1) + areas - inside
        iou = np.where(union > 0, inside / np.maximum(union, 1), 0.0)
        ok = (inside > 0) & no_background
        for column, (px, py) in enumerate(foreground):  # this box's foreground points must be in its mask
            if x1 <= px <= x2 and y1 <= py <= y2:
                ok &= fg_hits[:, column]
        if not ok.any():
            answers.append(None)
            continue
        best = max(np.flatnonzero(ok), key=lambda i: (iou[i], scores[i]))
        answers.append(masks[best])
    return answers
