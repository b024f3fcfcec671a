"""``python -m bench.wire``: which Kafka compression for results, chosen by measurement.

Encodes real results (``schemas.encode_result``) of the tiny models on 640x480 images at the product's settings
(DEFAULT_CONF=0.005 so random FastSAM answers), and compares none/gzip/snappy/lz4/zstd as librdkafka applies them:
each codec is a real confluent-kafka producer sending the results to a local broker, and the bytes it put on the
wire are read from librdkafka's own statistics (``brokers.*.txbytes``), so no codec library needs to be installed
in Python and the codec code measured is the one production uses. Compression CPU is the producer process's CPU
time for the same sends, minus the ``none`` run's.

Two sets of results, because the random-weight models are a poor sample: their masks are near-identical specks
(they compress unrealistically well), so the same number of masks is also built from random polygons through the
same mask-record code (RLE + polygons + bbox), as a stand-in for real objects. Each set is sent two ways: one
result per produce request (a worker at low rate) and all results in linger-batched requests (a worker under load).
The result sizes are also compared with what raw mask arrays would cost.

Writes ``bench/results/wire.json`` (``--out``) and prints a table and the recommendation.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import tempfile
import time
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from confluent_kafka import Producer

from bench.harness import REPO_ROOT
from bench.images import make_images
from devstack.services import create_topics, local_kafka
from pipeline.checkpoints import ensure_demo_checkpoints
from pipeline.masks import build_mask_record
from pipeline.segmenter import Segmenter
from pipeline.settings import ModelSettings
from pipeline.types import ModelName, SegmentationResult
from schemas import SegmentRequest, SegmentResultMessage, encode_request, encode_result

CODECS = ("none", "gzip", "snappy", "lz4", "zstd")


def polygon_masks(seed: int, width: int, height: int, count: int) -> list[np.ndarray]:
    """``count`` masks of random star-shaped polygons from 0.1 % to ~20 % of the image: object-like outlines."""
    rng = np.random.default_rng(seed)
    masks = []
    for _ in range(count):
        mask = np.zeros((height, width), dtype=np.uint8)
        radius = float(np.sqrt(rng.uniform(0.001, 0.2) * width * height / np.pi))
        cx, cy = rng.uniform(radius, width - radius), rng.uniform(radius, height - radius)
        vertices = int(rng.integers(6, 24))
        angles = np.sort(rng.uniform(0, 2 * np.pi, vertices))
        radii = radius * rng.uniform(0.5, 1.3, vertices)
        points = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1).astype(np.int32)
        cv2.fillPoly(mask, [points], 1)
        masks.append(mask.astype(bool))
    return masks


def model_results(settings: ModelSettings, count: int, width: int, height: int) -> list[SegmentationResult]:
    """Real results of the tiny models (FastSAM answers at conf 0.005)."""
    segmenter = Segmenter(settings)
    return [segmenter.segment(image.pixels) for image in make_images(count, width, height, first_seed=500)]


def polygon_results(template: Sequence[SegmentationResult], settings: ModelSettings) -> list[SegmentationResult]:
    """The same number of masks per result as ``template``, from random polygons, through the same record code."""
    out = []
    for index, result in enumerate(template):
        records = []
        for mask in polygon_masks(900 + index, result.width, result.height, len(result.masks)):
            record = build_mask_record(
                mask,
                predicted_iou=0.9,
                stability_score=0.95,
                max_contours=settings.max_contours,
                post_process=settings.mask_post_processing,
                min_region_area=settings.min_region_area,
            )
            if record is not None:
                records.append(record)
        out.append(
            SegmentationResult(
                masks=tuple(records),
                model=ModelName.FASTSAM,
                fallback_reason=None,
                fallback_detail=None,
                width=result.width,
                height=result.height,
                inference_width=result.inference_width,
                inference_height=result.inference_height,
                timings_ms=dict(result.timings_ms),
            )
        )
    return out


def encoded(results: Sequence[SegmentationResult]) -> tuple[list[bytes], float]:
    """Avro bytes of each result as a worker publishes it, and the mean encode time in ms."""
    values, times = [], []
    for index, result in enumerate(results):
        message = SegmentResultMessage.ok(f"wire-{index}", result, image_sha256="0" * 64, worker_id="bench-wire")
        started = time.perf_counter()
        values.append(encode_result(message))
        times.append((time.perf_counter() - started) * 1000.0)
    return values, statistics.fmean(times)


class _Stats:
    """Latest librdkafka statistics of one producer."""

    def __init__(self) -> None:
        self.latest: dict[str, Any] = {}

    def __call__(self, text: str) -> None:
        self.latest = json.loads(text)

    def txbytes(self) -> int:
        return sum(b["txbytes"] for b in self.latest.get("brokers", {}).values() if b.get("nodeid", -1) >= 0)


def wire_bytes(
    bootstrap: str, topic: str, values: Sequence[bytes], codec: str, *, one_per_request: bool, rounds: int
) -> dict[str, float]:
    """Bytes on the wire per result and producer CPU ms per result for ``codec`` (median over ``rounds``)."""
    per_result, cpu_ms = [], []
    for _ in range(rounds):
        stats = _Stats()
        producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "compression.type": codec,
                "linger.ms": 5,
                "enable.idempotence": True,
                "acks": "all",
                "message.max.bytes": 32 * 1024 * 1024,
                "statistics.interval.ms": 50,
                "stats_cb": stats,
            }
        )
        producer.produce(topic, b"warm-up")
        producer.flush(10)
        time.sleep(0.12)
        producer.poll(0.05)
        before = stats.txbytes()
        cpu_start = time.process_time()
        for value in values:
            producer.produce(topic, value)
            if one_per_request:
                producer.flush(10)
        producer.flush(10)
        cpu = time.process_time() - cpu_start
        time.sleep(0.12)
        producer.poll(0.05)
        per_result.append((stats.txbytes() - before) / len(values))
        cpu_ms.append(cpu * 1000.0 / len(values))
        del producer
    return {"bytes_per_result": statistics.median(per_result), "producer_cpu_ms_per_result": statistics.median(cpu_ms)}


def compare(bootstrap: str, topic: str, values: Sequence[bytes], rounds: int) -> dict[str, Any]:
    """Every codec, both sending modes; ratios and CPU relative to ``none``."""
    table: dict[str, Any] = {}
    for mode, one in (("one_result_per_request", True), ("batched", False)):
        rows = {
            codec: wire_bytes(bootstrap, topic, values, codec, one_per_request=one, rounds=rounds) for codec in CODECS
        }
        base = rows["none"]
        for row in rows.values():
            row["ratio_vs_none"] = row["bytes_per_result"] / base["bytes_per_result"]
            row["extra_cpu_ms_per_result"] = row["producer_cpu_ms_per_result"] - base["producer_cpu_ms_per_result"]
        table[mode] = rows
    return table


def sizes(results: Sequence[SegmentationResult], values: Sequence[bytes]) -> dict[str, float]:
    """Avro result size against raw mask arrays, and stdlib zlib as a cross-check of the gzip figure."""
    masks = [len(r.masks) for r in results]
    pixels = [r.width * r.height for r in results]
    zlib_sizes, zlib_ms = [], []
    for value in values:
        started = time.perf_counter()
        zlib_sizes.append(len(zlib.compress(value, 6)))
        zlib_ms.append((time.perf_counter() - started) * 1000.0)
    return {
        "masks_per_result": statistics.fmean(masks),
        "avro_bytes": statistics.fmean(len(v) for v in values),
        "raw_uint8_masks_bytes": statistics.fmean(m * p for m, p in zip(masks, pixels, strict=True)),
        "raw_bitpacked_masks_bytes": statistics.fmean(m * p / 8 for m, p in zip(masks, pixels, strict=True)),
        "python_zlib6_bytes": statistics.fmean(zlib_sizes),
        "python_zlib6_ms": statistics.fmean(zlib_ms),
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.wire", description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=int, default=8, help="results per set (default 8)")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--rounds", type=int, default=3, help="sends per codec to take the median of")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results")
    parser.add_argument(
        "--checkpoints", type=Path, default=Path(os.environ.get("SEGPIPE_CHECKPOINT_DIR", REPO_ROOT / "checkpoints"))
    )
    args = parser.parse_args(argv)
    fastsam, sam2 = ensure_demo_checkpoints(args.checkpoints)
    settings = ModelSettings(fastsam_model_path=fastsam, sam_model_path=sam2, device="cpu", default_conf=0.005)
    tiny = model_results(settings, args.results, args.width, args.height)
    sets = {"tiny_model_masks": tiny, "polygon_masks": polygon_results(tiny, settings)}
    report: dict[str, Any] = {
        "config": {
            "results": args.results,
            "size": [args.width, args.height],
            "imgsz": settings.fastsam_imgsz,
            "conf": settings.default_conf,
        },
        "sets": {},
    }
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="segpipe-wire-")))
        kafka = stack.enter_context(local_kafka(log_dir=tmp))
        create_topics(kafka.bootstrap, {"wire": 1})
        for name, results in sets.items():
            values, encode_ms = encoded(results)
            report["sets"][name] = {
                "sizes": sizes(results, values) | {"avro_encode_ms": encode_ms},
                "codecs": compare(kafka.bootstrap, "wire", values, args.rounds),
            }
        # The request side shares the producer setting: PNG payloads are already deflate-compressed.
        requests = [
            encode_request(SegmentRequest(f"wire-{i.seed}", i.png))
            for i in make_images(args.results, args.width, args.height, first_seed=500)
        ]
        report["sets"]["requests_png"] = {
            "sizes": {"avro_bytes": statistics.fmean(len(v) for v in requests)},
            "codecs": compare(kafka.bootstrap, "wire", requests, args.rounds),
        }
    report["recommendation"] = recommend(report)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "wire.json").write_text(json.dumps(report, indent=2))
    print_table(report)
    return report


def recommend(report: dict[str, Any]) -> str:
    """Smallest wire size on the realistic set under load; a codec within 5 % of it that costs less CPU wins."""
    rows = report["sets"]["polygon_masks"]["codecs"]["batched"]
    smallest = min(rows.values(), key=lambda r: r["bytes_per_result"])["bytes_per_result"]
    close = [c for c in CODECS if c != "none" and rows[c]["bytes_per_result"] <= smallest * 1.05]
    best = min(close, key=lambda c: rows[c]["producer_cpu_ms_per_result"])
    return best


def print_table(report: dict[str, Any]) -> None:
    for name, data in report["sets"].items():
        s = data["sizes"]
        if "masks_per_result" in s:
            print(
                f"\n{name}: {s['masks_per_result']:.0f} masks/result, Avro {s['avro_bytes']:.0f} B "
                f"(encode {s['avro_encode_ms']:.2f} ms); raw masks {s['raw_uint8_masks_bytes'] / 1e6:.1f} MB as "
                f"uint8, {s['raw_bitpacked_masks_bytes'] / 1e6:.2f} MB bit-packed; python zlib-6 "
                f"{s['python_zlib6_bytes']:.0f} B"
            )
        else:
            print(f"\n{name}: Avro {s['avro_bytes']:.0f} B per request")
        for mode, rows in data["codecs"].items():
            print(f"  {mode}:")
            for codec, row in rows.items():
                print(
                    f"    {codec:<7} {row['bytes_per_result']:9.0f} B/result  x{row['ratio_vs_none']:.3f}  "
                    f"producer CPU {row['producer_cpu_ms_per_result']:.3f} ms/result "
                    f"({row['extra_cpu_ms_per_result']:+.3f})"
                )
    print(f"\nrecommended KAFKA_COMPRESSION_TYPE: {report['recommendation']}")


if __name__ == "__main__":
    main()
