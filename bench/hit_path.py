"""``python -m bench.hit_path``: the dedup hit fast path (``RequestProcessor.prepare_batch``) alone, profiled.

No broker: Avro request records are built in memory (a small JPEG, distinct request ids), against a real
redis-server. The cache is primed by computing the image once (FastSAM, not measured). Then batches of
``--batch`` records (the worker's bulk lookup size, 64) go through ``prepare_batch`` on one thread: hits/s and µs
per hit for what the processor does per hit (parse the Avro request, payload key, one Redis MGET per batch, splice
the stored result), and a cProfile of the same loop, top functions by own time. What the worker adds per hit
(librdkafka consume and produce, offset tracking, the poll loop) is outside this number: compare with (c)'s
``worker_cpu_ms_per_hit``. Writes ``bench/results/hit_path.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import os
import pstats
import tempfile
import time
import uuid
from pathlib import Path

from bench.harness import REPO_ROOT
from bench.images import encode_jpeg, synthetic_image
from consumers.dedup import DedupCache
from consumers.processor import InboundRecord, PendingSegmentation, RequestProcessor
from devstack.services import start_redis
from pipeline.checkpoints import ensure_demo_checkpoints
from pipeline.segmenter import Segmenter
from pipeline.settings import ModelSettings
from pipeline.types import Prompts, SegmentParams
from schemas import SegmentRequest, encode_request, now_ms, request_headers
from segpipe.config import RedisSettings


def _record(payload: bytes, offset: int) -> InboundRecord:
    request = SegmentRequest(
        request_id=uuid.uuid4().hex,
        image=payload,
        prompts=Prompts(),
        params=SegmentParams(),
        source="bench-hit-path",
        reply_to=None,
        submitted_at_ms=now_ms(),
    )
    return InboundRecord(
        value=encode_request(request),
        key=None,
        headers=tuple(request_headers(request)),
        topic="in",
        partition=0,
        offset=offset,
        timestamp_ms=None,
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.hit_path")
    parser.add_argument("--hits", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--conf", type=float, default=0.005, help="DEFAULT_CONF of the stored result (its mask count)")
    parser.add_argument(
        "--checkpoints", type=Path, default=Path(os.environ.get("SEGPIPE_CHECKPOINT_DIR", "checkpoints"))
    )
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    fastsam, sam2 = ensure_demo_checkpoints(args.checkpoints)
    settings = ModelSettings(fastsam_model_path=fastsam, sam_model_path=sam2, device="cpu", default_conf=args.conf)
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="segpipe-hit-path-")))
        server = start_redis(workdir=tmp)
        stack.callback(server.stop)
        cache = DedupCache(RedisSettings(host=server.host, port=server.port))
        stack.callback(cache.close)
        processor = RequestProcessor(Segmenter(settings), cache, worker_id="bench")
        payload = encode_jpeg(synthetic_image(20_000, 160, 120))
        pending = processor.prepare(_record(payload, 0))
        assert isinstance(pending, PendingSegmentation), "the priming request was answered without the model"
        (computed,) = processor.segment([pending])
        batches = [
            [_record(payload, 1 + b * args.batch + i) for i in range(args.batch)]
            for b in range(args.hits // args.batch)
        ]
        count = sum(len(b) for b in batches)

        def run() -> int:
            answered = 0
            for batch in batches:
                answered += sum(1 for item in processor.prepare_batch(batch) if not hasattr(item, "payload_key"))
            return answered

        run()  # warm: connection, first parses
        cpu0, wall0 = time.process_time(), time.perf_counter()
        answered = run()
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        profiler = cProfile.Profile()
        profiler.enable()
        run()
        profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(15)
    report = {
        "command": "python -m bench.hit_path",
        "hits": count,
        "answered_from_cache": answered,
        "batch": args.batch,
        "hits_per_s": count / wall,
        "us_per_hit_wall": wall / count * 1e6,
        "us_per_hit_cpu": cpu / count * 1e6,
        "payload_bytes": len(payload),
        "conf": args.conf,
        "result_masks": len(computed.result.masks),
        "result_bytes": len(computed.result_bytes),
        "profile_top": text.getvalue().splitlines()[:45],
        "load_average": list(os.getloadavg()),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "hit_path.json").write_text(json.dumps(report, indent=2))
    print(
        f"prepare_batch: {count} hits ({answered} from the cache) in batches of {args.batch}: "
        f"{report['hits_per_s']:.0f} hits/s, {report['us_per_hit_cpu']:.0f} µs CPU per hit; the stored result: "
        f"{report['result_masks']} masks, {report['result_bytes']:,} bytes (conf {args.conf})"
    )
    print("\n".join(report["profile_top"]))
    return report


if __name__ == "__main__":
    main()
