"""``python -m bench.prompt_cache``: a second, different prompt on an image already seen (SAM2 embedding LRU).

For each image: a point prompt on a cold cache (encoder + decoder), then a box prompt on the same pixels (decoder
only, the embedding from the LRU), then the same box on a model without the cache (the cold reference: masks must
be bit-equal). Reports ms of each (median), the speed-up, and the bytes of one cache entry.
Writes ``bench/results/prompt_cache.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np

from bench.harness import REPO_ROOT
from bench.images import make_images
from pipeline.checkpoints import ensure_demo_checkpoints
from pipeline.models import SAM2Model, SAM2Options
from pipeline.sam2_cache import EmbeddingCache
from pipeline.types import Prompts


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.prompt_cache")
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--checkpoints", type=Path, default=Path(os.environ.get("SEGPIPE_CHECKPOINT_DIR", "checkpoints"))
    )
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    _, sam2 = ensure_demo_checkpoints(args.checkpoints)
    cache = EmbeddingCache(max_bytes=1 << 30, max_entries=64)
    cached = SAM2Model(sam2, args.device, None, SAM2Options(), embeddings=cache)
    cold = SAM2Model(sam2, args.device, None, SAM2Options())
    warm = make_images(1, first_seed=10_000)[0].pixels
    for model in (cached, cold):
        model.predict([warm], [Prompts(points=((10.0, 10.0),))])
    cache.clear()  # the warm-up image is not measured
    cache.hits = cache.misses = 0
    first, second, reference, equal = [], [], [], []
    for image in make_images(args.images):
        box = Prompts(boxes=((100.0, 80.0, 400.0, 360.0),))
        for model, prompts, into in ((cached, Prompts(points=((320.0, 240.0),)), first), (cached, box, second)):
            t0 = time.perf_counter()
            (masks,) = model.predict([image.pixels], [prompts])
            into.append((time.perf_counter() - t0) * 1000.0)
        t0 = time.perf_counter()
        (ref,) = cold.predict([image.pixels], [box])
        reference.append((time.perf_counter() - t0) * 1000.0)
        equal.append(all(np.array_equal(a.mask, b.mask) for a, b in zip(masks, ref, strict=True)))
    report = {
        "command": "python -m bench.prompt_cache",
        "images": args.images,
        "first_prompt_ms": statistics.median(first),
        "second_prompt_ms": statistics.median(second),
        "cold_same_prompt_ms": statistics.median(reference),
        "speedup": statistics.median(first) / statistics.median(second),
        "bit_equal": all(equal),
        "entry_bytes": cache.nbytes // max(1, len(cache)),
        "cache": {"hits": cache.hits, "misses": cache.misses, "entries": len(cache)},
        "load_average": list(os.getloadavg()),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "prompt_cache.json").write_text(json.dumps(report, indent=2))
    first_ms, second_ms = report["first_prompt_ms"], report["second_prompt_ms"]
    print(
        f"SAM2 prompt on a new image {first_ms:.0f} ms, another prompt on it {second_ms:.1f} ms "
        f"(x{report['speedup']:.0f}); cold reference {report['cold_same_prompt_ms']:.0f} ms; "
        f"bit-equal {report['bit_equal']}; one entry {report['entry_bytes'] / 2**20:.1f} MiB"
    )
    return report


if __name__ == "__main__":
    main()
