"""Synthetic images of filled shapes with their exact masks: training data for the demo FastSAM and ground truth.

Shapes (circles, ellipses, rectangles, rotated rectangles, triangles, polygons) in solid colours are drawn one after
another on a flat, gradient or noisy background, like the images in ``samples/``. Each shape's ground truth is what
stays visible of it once the later shapes are drawn. Everything is drawn with OpenCV from a seeded generator, so the
same seed gives the same image and masks.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

SHAPE_KINDS = ("circle", "ellipse", "rectangle", "rotated_rectangle", "triangle", "polygon")


@dataclass(frozen=True, slots=True)
class Scene:
    """An RGB (or greyscale, 2-D) image and the visible mask of every shape drawn in it (drawing order)."""

    image: np.ndarray
    masks: list[np.ndarray]  # (H, W) bool each
    kinds: list[str]


def _colour(rng: np.random.Generator, grey: bool) -> np.ndarray:
    if grey:
        return np.full(3, rng.integers(0, 256), dtype=np.int32)
    return rng.integers(0, 256, size=3).astype(np.int32)


def _background(rng: np.random.Generator, height: int, width: int, grey: bool) -> np.ndarray:
    base = _colour(rng, grey).astype(np.float32)
    style = rng.choice(["flat", "flat", "gradient", "noise"])
    image = np.broadcast_to(base, (height, width, 3)).astype(np.float32)
    if style == "gradient":
        other = _colour(rng, grey).astype(np.float32)
        angle = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        t = xx * np.cos(angle) + yy * np.sin(angle)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
        image = base + (other - base) * 0.5 * t[..., None]  # a mild gradient: the shapes must stay the contrast
    elif style == "noise":
        sigma = rng.uniform(4, 18)
        noise = rng.normal(0, sigma, size=(height, width, 1 if grey else 3)).astype(np.float32)
        image = image + cv2.GaussianBlur(noise, (0, 0), rng.uniform(0.5, 2.0)).reshape(height, width, -1)
    return np.clip(image, 0, 255)


def _draw(kind: str, rng: np.random.Generator, height: int, width: int, size: float) -> np.ndarray:
    """One filled shape of about ``size`` pixels across, somewhere in the image, as a uint8 mask."""
    mask = np.zeros((height, width), np.uint8)
    cx, cy = rng.uniform(0, width), rng.uniform(0, height)
    half = size / 2
    if kind == "circle":
        cv2.circle(mask, (round(cx), round(cy)), max(2, round(half)), 1, -1, cv2.LINE_8)
    elif kind == "ellipse":
        axes = (max(2, round(half)), max(2, round(half * rng.uniform(0.3, 0.9))))
        cv2.ellipse(mask, (round(cx), round(cy)), axes, rng.uniform(0, 180), 0, 360, 1, -1, cv2.LINE_8)
    elif kind in ("rectangle", "rotated_rectangle"):
        w, h = size, size * rng.uniform(0.3, 1.6)
        angle = rng.uniform(0, 180) if kind == "rotated_rectangle" else 0.0
        corners = cv2.boxPoints(((cx, cy), (w, h), angle))
        cv2.fillPoly(mask, [np.round(corners).astype(np.int32)], 1, cv2.LINE_8)
    elif kind == "triangle":
        angles = np.sort(rng.uniform(0, 2 * np.pi, 3))
        angles[1:] = angles[0] + np.array([rng.uniform(1.6, 2.6), rng.uniform(3.6, 4.6)])  # no needle triangles
        pts = np.stack([cx + half * np.cos(angles), cy + half * np.sin(angles)], axis=1)
        cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1, cv2.LINE_8)
    else:  # a star-ish or convex polygon of 5-9 vertices
        count = int(rng.integers(5, 10))
        angles = np.sort(rng.uniform(0, 2 * np.pi, count))
        radii = half * rng.uniform(0.55, 1.0, count)
        pts = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1)
        cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1, cv2.LINE_8)
    return mask.astype(bool)


def make_scene(
    seed: int,
    *,
    size: tuple[int, int] | None = None,
    shapes: tuple[int, int] = (1, 9),
    rel_size: tuple[float, float] = (0.06, 0.45),
    grey: bool | None = None,
    min_visible: int = 64,
) -> Scene:
    """Draw one scene. ``size`` is (width, height), random 240-800 px a side when None; ``rel_size`` bounds a
    shape's size as a fraction of the image's shorter side; shapes hidden below ``min_visible`` pixels are dropped
    from the ground truth (and redrawn over by the background so no unlabeled shape remains)."""
    rng = np.random.default_rng(seed)
    width, height = size or (int(rng.integers(240, 801)), int(rng.integers(240, 801)))
    grey = bool(rng.random() < 0.15) if grey is None else grey
    background = _background(rng, height, width, grey)
    image = background.copy()
    drawn: list[np.ndarray] = []
    kinds: list[str] = []
    for _ in range(int(rng.integers(shapes[0], shapes[1] + 1))):
        for _attempt in range(20):  # a shape mostly on top of another gives no learnable boundary: place it again
            kind = str(rng.choice(SHAPE_KINDS))
            mask = _draw(kind, rng, height, width, rng.uniform(*rel_size) * min(width, height))
            area = int(mask.sum())
            if area < min_visible:
                continue
            if all((mask & other).sum() < 0.3 * min(area, other.sum()) for other in drawn):
                break
        else:
            continue
        while True:  # a colour that stands out from the background under it (like the samples' flat colours)
            colour = _colour(rng, grey).astype(np.float32)
            under = image[mask].mean(axis=0)
            if np.abs(colour - under).max() >= 40:
                break
        image[mask] = colour
        drawn.append(mask)
        kinds.append(kind)
    visible: list[np.ndarray] = []
    visible_kinds: list[str] = []
    covered = np.zeros((height, width), bool)
    for mask, kind in zip(reversed(drawn), reversed(kinds), strict=True):
        seen = mask & ~covered
        covered |= mask
        if seen.sum() >= min_visible:
            visible.append(seen)
            visible_kinds.append(kind)
        else:  # too little left to label: paint it back to the background so the image matches the labels
            image[seen] = background[seen]
    visible.reverse()
    visible_kinds.reverse()
    pixels = np.round(image).astype(np.uint8)
    if grey:
        pixels = np.ascontiguousarray(pixels[:, :, 0])
    return Scene(image=pixels, masks=visible, kinds=visible_kinds)
