"""A bounded LRU of SAM2 image embeddings, so a new prompt on an image already seen costs only the decoder.

SAM2's image encoder is nearly all of a prompted request's cost on a CPU; the prompt encoder and mask decoder that
follow read only what ``SAM2ImagePredictor.set_image`` leaves on the predictor (``_features``: the image embedding
and the high-resolution feature maps; ``_orig_hw``; ``_is_image_set``; ``_is_batch``). This cache keeps that state
per image, keyed by a SHA-256 of the pixels (with shape and dtype), and puts it back instead of running the encoder
again: the same tensors, so the masks are bit-equal to a cold run.

Bounded two ways, whichever binds first: ``max_entries`` images and ``max_bytes`` of tensors (an entry's bytes are
counted from its tensors: ~16 MiB for SAM2 at 1024x1024, whatever the image size, see docs/CAPACITY.md). Stored
tensors are never modified: ``set_image`` assigns fresh ones, so keeping references is safe.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np


def pixel_key(image: np.ndarray) -> str:
    """SHA-256 of the pixels, their shape and dtype (two images that differ only in shape must not collide)."""
    digest = hashlib.sha256(f"{image.shape}|{image.dtype}|".encode())
    digest.update(np.ascontiguousarray(image).data)
    return digest.hexdigest()


def _tensor_bytes(value: Any) -> int:
    if isinstance(value, dict):
        return sum(_tensor_bytes(v) for v in value.values())
    if isinstance(value, list | tuple):
        return sum(_tensor_bytes(v) for v in value)
    nbytes = getattr(value, "nbytes", None)
    if nbytes is None and hasattr(value, "element_size"):
        nbytes = value.element_size() * value.nelement()
    return int(nbytes or 0)


@dataclass(frozen=True, slots=True)
class _Entry:
    features: dict[str, Any]
    orig_hw: list[tuple[int, int]]
    nbytes: int


class EmbeddingCache:
    """LRU of predictor states by pixel hash; ``max_bytes`` or ``max_entries`` of 0 turns it off."""

    def __init__(self, *, max_bytes: int, max_entries: int) -> None:
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0 and self.max_entries > 0

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def set_image(self, predictor: Any, image: np.ndarray) -> bool:
        """``predictor.set_image(image)``, from the cache when this image was seen; True on a hit."""
        if not self.enabled:
            predictor.set_image(image)
            return False
        key = pixel_key(image)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                self.hits += 1
        if entry is not None:
            predictor.reset_predictor()
            predictor._features = entry.features
            predictor._orig_hw = list(entry.orig_hw)
            predictor._is_image_set = True
            predictor._is_batch = False
            return True
        predictor.set_image(image)
        features = predictor._features
        new = _Entry(features=features, orig_hw=list(predictor._orig_hw), nbytes=_tensor_bytes(features))
        with self._lock:
            self.misses += 1
            if new.nbytes > self.max_bytes:
                return False  # larger than the whole budget: never kept
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old.nbytes
            self._entries[key] = new
            self._bytes += new.nbytes
            while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= evicted.nbytes
        return False

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0
