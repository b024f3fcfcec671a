"""The SAM2 embedding LRU: a second prompt on a seen image skips the encoder, masks bit-equal, bounded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.models import SAM2Model, SAM2Options
from pipeline.sam2_cache import EmbeddingCache, pixel_key
from pipeline.types import Prompts


def _model(checkpoint: Path, cache: EmbeddingCache | None) -> SAM2Model:
    return SAM2Model(checkpoint, "cpu", None, SAM2Options(), embeddings=cache)


def _image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (120, 160, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def sam2_path(demo_checkpoints: tuple[Path, Path]) -> Path:
    return demo_checkpoints[1]


def test_second_prompt_reuses_the_embedding_and_matches_a_cold_run(sam2_path: Path) -> None:
    cache = EmbeddingCache(max_bytes=1 << 30, max_entries=4)
    cached = _model(sam2_path, cache)
    cold = _model(sam2_path, None)
    image = _image(0)
    first = Prompts(points=((40.0, 30.0),))
    second = Prompts(boxes=((10.0, 10.0, 100.0, 90.0),))
    cached.predict([image], [first])
    assert (cache.hits, cache.misses, len(cache)) == (0, 1, 1)
    (warm,) = cached.predict([image.copy()], [second])  # equal pixels, another array: found by the pixel hash
    assert (cache.hits, cache.misses) == (1, 1)
    (reference,) = cold.predict([image], [second])
    assert len(warm) == len(reference) == 1
    for a, b in zip(warm, reference, strict=True):
        assert np.array_equal(a.mask, b.mask)
        assert a.predicted_iou == b.predicted_iou and a.stability_score == b.stability_score


def test_cache_is_bounded_by_entries_and_bytes(sam2_path: Path) -> None:
    model = _model(sam2_path, EmbeddingCache(max_bytes=1 << 30, max_entries=2))
    cache = model.embeddings
    assert cache is not None
    for seed in range(3):
        model.predict([_image(seed)], [Prompts(points=((5.0, 5.0),))])
    assert len(cache) == 2 and cache.misses == 3
    one = cache.nbytes // 2
    assert one > 0
    # the oldest went first: image 0 is computed again, image 2 is found
    model.predict([_image(2)], [Prompts(points=((6.0, 6.0),))])
    assert cache.hits == 1
    by_bytes = _model(sam2_path, EmbeddingCache(max_bytes=one + one // 2, max_entries=100))
    for seed in range(3):
        by_bytes.predict([_image(seed)], [Prompts(points=((5.0, 5.0),))])
    assert by_bytes.embeddings is not None and len(by_bytes.embeddings) == 1
    assert by_bytes.embeddings.nbytes <= one + one // 2


def test_off_and_key() -> None:
    off = EmbeddingCache(max_bytes=0, max_entries=8)
    assert not off.enabled
    a = _image(1)
    assert pixel_key(a) == pixel_key(a.copy())
    assert pixel_key(a) != pixel_key(a.reshape(160, 120, 3))
