"""Deterministic synthetic photos for the benchmarks: distinct per seed, identical across runs and machines.

Why synthetic: no data set can be downloaded here, and the random-weight models do not care what the picture
shows. Why not plain noise: a noise PNG is a pathological payload (incompressible, slow to decode); these are
filled shapes on a background with mild sensor-like noise, which encode to PNG sizes typical of a 640x480 photo
(~0.5 MB) and decode at a photo's speed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from pipeline.image_io import decode_image


def synthetic_image(seed: int, width: int = 640, height: int = 480, shapes: int = 8) -> np.ndarray:
    """An RGB uint8 image: background, ``shapes`` random rectangles/circles, +-8 noise; same seed, same pixels."""
    rng = np.random.default_rng(seed)
    image = np.empty((height, width, 3), dtype=np.uint8)
    image[:] = rng.integers(0, 256, 3, dtype=np.uint8)
    for _ in range(shapes):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        if rng.random() < 0.5:
            w, h = (
                int(rng.integers(width // 30 + 1, width // 3 + 2)),
                int(rng.integers(height // 20 + 1, height // 2 + 2)),
            )
            cv2.rectangle(image, (x, y), (x + w, y + h), colour, thickness=-1)
        else:
            cv2.circle(
                image, (x, y), int(rng.integers(min(width, height) // 48 + 1, min(width, height) // 5 + 2)), colour, -1
            )
    noise = rng.integers(-8, 9, image.shape, dtype=np.int16)
    return np.clip(image.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of an RGB image (lossless: decoding gives the same pixels back)."""
    ok, data = cv2.imencode(".png", np.ascontiguousarray(image[:, :, ::-1]))
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return data.tobytes()


def encode_jpeg(image: np.ndarray, quality: int = 85) -> bytes:
    """JPEG bytes of an RGB image (lossy: used where payload size matters more than pixel identity)."""
    ok, data = cv2.imencode(".jpg", np.ascontiguousarray(image[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return data.tobytes()


@dataclass(frozen=True)
class BenchImage:
    """One benchmark image: the PNG a producer sends and the pixels the worker will decode from it."""

    seed: int
    png: bytes = field(repr=False)
    pixels: np.ndarray = field(repr=False)

    @property
    def size(self) -> tuple[int, int]:
        return int(self.pixels.shape[1]), int(self.pixels.shape[0])


def make_images(count: int, width: int = 640, height: int = 480, *, first_seed: int = 0) -> list[BenchImage]:
    """``count`` distinct images (seeds ``first_seed``...); pixels decoded from the PNG, exactly as a worker does."""
    images = []
    for seed in range(first_seed, first_seed + count):
        png = encode_png(synthetic_image(seed, width, height))
        images.append(BenchImage(seed, png, decode_image(png)))
    return images
