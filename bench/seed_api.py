"""The seed API: a **peer for comparison**, not the product. ``python -m bench.seed_api --port P``.

The synchronous HTTP service in the shape of the original design, written the way that design reads: Flask;
``POST /segment`` with a base64 ``image``; a thread pool of ``MAX_WORKERS = 2`` runs the models; FastSAM first
(``FastSAM(path)(image, retina_masks=True, imgsz=..., conf=..., iou=...)``, one model per pool thread as
ultralytics advises for threads) and SAM2's automatic mask generator when FastSAM raises or finds nothing; results
cached in Redis by the SHA-256 of the uploaded bytes (``SEED_CACHE_TTL_S``). Masks go back as COCO RLE with area,
bbox and score. Threads are ultralytics' own choice (nothing pinned), as a user's service would have them.

``bench.peers`` (p2) drives it with N concurrent clients over the same images as the other peers. Environment: the
bench's model variables (``FASTSAM_MODEL_PATH``, ``SAM_MODEL_PATH``, ``DEVICE``, ``DEFAULT_CONF``,
``FASTSAM_IMGSZ``) and ``REDIS_HOST``/``REDIS_PORT``. It prints ``SEED-API READY`` once both models are loaded and
warmed up.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np

MAX_WORKERS = 2


class SeedModels:
    """FastSAM per pool thread, one SAM2 automatic mask generator behind a lock (it is not thread-safe)."""

    def __init__(self) -> None:
        self.fastsam_path = os.environ["FASTSAM_MODEL_PATH"]
        self.sam_path = os.environ["SAM_MODEL_PATH"]
        self.device = os.environ.get("DEVICE", "cpu")
        self.conf = float(os.environ.get("DEFAULT_CONF", "0.4"))
        self.iou = float(os.environ.get("DEFAULT_IOU", "0.8"))
        self.imgsz = int(os.environ.get("FASTSAM_IMGSZ", "1024"))
        self._local = threading.local()
        self._sam2_lock = threading.Lock()
        self._generator: Any = None

    def fastsam(self) -> Any:
        model = getattr(self._local, "model", None)
        if model is None:
            from ultralytics import FastSAM

            model = self._local.model = FastSAM(self.fastsam_path)
        return model

    def generator(self) -> Any:
        if self._generator is None:
            from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator
            from sam2.build_sam import build_sam2

            from pipeline.models import infer_sam2_config

            model = build_sam2(infer_sam2_config(Path(self.sam_path)), self.sam_path, self.device)
            self._generator = SAM2AutomaticMaskGenerator(model, output_mode="binary_mask")
        return self._generator

    def segment(self, bgr: np.ndarray) -> tuple[str, list[dict[str, Any]]]:
        """FastSAM, then SAM2 when FastSAM fails or finds nothing (the original rule)."""
        try:
            (result,) = self.fastsam()(
                bgr,
                device=self.device,
                retina_masks=True,
                imgsz=self.imgsz,
                conf=self.conf,
                iou=self.iou,
                verbose=False,
            )
            if result.masks is None or len(result) == 0:
                raise ValueError("FastSAM found no mask")
            masks = result.masks.data.cpu().numpy().astype(bool)
            scores = result.boxes.conf.cpu().tolist()
            return "fastsam", [_mask_json(m, s) for m, s in zip(masks, scores, strict=True)]
        except Exception:  # noqa: BLE001 - the original fell back on any FastSAM error
            import torch

            with self._sam2_lock, torch.inference_mode():
                records = self.generator().generate(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            return "sam2", [_mask_json(r["segmentation"], r["predicted_iou"]) for r in records]


def _mask_json(mask: np.ndarray, score: float) -> dict[str, Any]:
    from pycocotools import mask as coco

    rle = coco.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    x, y, w, h = coco.toBbox(rle).tolist()
    return {"segmentation": rle, "area": int(coco.area(rle)), "bbox": [x, y, w, h], "predicted_iou": float(score)}


def create_app(models: SeedModels, cache: Any, ttl_s: int, executor: ThreadPoolExecutor) -> Any:
    from flask import Flask, jsonify, request

    app = Flask("seed_api")

    @app.post("/segment")
    def segment() -> Any:
        body = request.get_json(force=True, silent=True) or {}
        try:
            raw = base64.b64decode(body["image"], validate=True)
        except (KeyError, TypeError, ValueError):
            return jsonify(success=False, error="invalid_image"), 400
        key = "seed:" + hashlib.sha256(raw).hexdigest()
        cached = cache.get(key)
        if cached is not None:
            return app.response_class(cached, mimetype="application/json")
        bgr = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR)
        if bgr is None:
            return jsonify(success=False, error="invalid_image"), 400
        model, masks = executor.submit(models.segment, bgr).result()
        payload = json.dumps({"success": True, "model": model, "num_masks": len(masks), "masks": masks})
        cache.set(key, payload, ex=ttl_s)
        return app.response_class(payload, mimetype="application/json")

    @app.get("/health")
    def health() -> Any:
        return jsonify(status="ok")

    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.seed_api", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5001)
    args = parser.parse_args(argv)
    # ultralytics offline (no hub, no auto-install); torchvision's ops on this CPU-only torch. Threads left alone.
    for name, value in (("YOLO_OFFLINE", "1"), ("YOLO_VERBOSE", "False"), ("YOLO_AUTOINSTALL", "False")):
        os.environ.setdefault(name, value)
    from pipeline._torchvision_cpu import ensure_torchvision_ops

    ensure_torchvision_ops()
    import redis
    from werkzeug.serving import make_server

    models = SeedModels()
    cache = redis.Redis(host=os.environ.get("REDIS_HOST", "127.0.0.1"), port=int(os.environ.get("REDIS_PORT", "6379")))
    # load and warm both models on the pool's threads before serving, as the worker and the bench do
    warm = (np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8) // 64 * 64).astype(np.uint8)
    models.generator()
    executor = ThreadPoolExecutor(max_workers=MAX_WORKERS, thread_name_prefix="seed-model")
    barrier = threading.Barrier(MAX_WORKERS)  # one warm-up per pool thread: each loads its own FastSAM

    def warm_up(_: int) -> None:
        barrier.wait(timeout=120)
        models.fastsam()(warm, device=models.device, imgsz=models.imgsz, conf=models.conf, verbose=False)

    list(executor.map(warm_up, range(MAX_WORKERS)))
    ttl_s = int(os.environ.get("SEED_CACHE_TTL_S", "3600"))
    server = make_server(args.host, args.port, create_app(models, cache, ttl_s, executor))
    server.daemon_threads = True
    print("SEED-API READY", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
