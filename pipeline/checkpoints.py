"""Build small checkpoints with random weights from the real architectures, for tests and the local demo.

No model hub is reachable where segpipe is developed and tested, so the official FastSAM / SAM2.1 weights cannot
be downloaded. These files have the official formats and load through exactly the code path real checkpoints
take (``ultralytics.FastSAM(path)``, ``sam2.build_sam.build_sam2(config, path)``). Their masks are meaningless.

- FastSAM: ultralytics' ``yolov8n-seg.yaml`` (FastSAM-s/-x are YOLOv8-seg with one class) with ``nc=1``, saved
  with ``YOLO.save``.
- SAM2.1 hiera-tiny: the sam2 package's own ``configs/sam2.1/sam2.1_hiera_t.yaml``, saved as
  ``{"model": state_dict}`` like the official ``sam2.1_hiera_tiny.pt``.

Usage: ``python -m pipeline.checkpoints --out checkpoints`` (skips files that exist unless ``--force``).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from pipeline.models import _import_torch, configure_offline

FASTSAM_DEMO_NAME = "FastSAM-random-yolov8n-seg.pt"
SAM2_DEMO_NAME = "sam2.1_hiera_tiny-random.pt"
SAM2_DEMO_CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"


def build_fastsam_checkpoint(path: Path, *, arch: str = "yolov8n-seg.yaml", seed: int = 0) -> Path:
    """Save a randomly initialised single-class YOLOv8-seg (FastSAM's architecture) where FastSAM(path) loads it."""
    configure_offline()
    torch = _import_torch()
    import yaml
    from ultralytics import YOLO
    from ultralytics.nn.tasks import yaml_model_load

    torch.manual_seed(seed)
    config = yaml_model_load(arch)
    config["nc"] = 1  # FastSAM is class-agnostic: one "object" class
    with tempfile.TemporaryDirectory() as tmp:
        config_path = Path(tmp) / Path(config.get("yaml_file", arch)).name  # the name carries the scale (n/s/x)
        config_path.write_text(yaml.safe_dump(config))
        model = YOLO(str(config_path))
        model.model.names = {0: "object"}
        path.parent.mkdir(parents=True, exist_ok=True)
        model.save(str(path))
    return path


def build_sam2_checkpoint(path: Path, *, config: str = SAM2_DEMO_CONFIG, seed: int = 0) -> Path:
    """Save a randomly initialised SAM2 from the package's own hydra config, in the official ``{"model": ...}``."""
    torch = _import_torch()
    from sam2.build_sam import build_sam2

    torch.manual_seed(seed)
    model = build_sam2(config, ckpt_path=None, device="cpu")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".partial")
    torch.save({"model": model.state_dict()}, tmp)
    os.replace(tmp, path)
    return path


def ensure_demo_checkpoints(directory: Path, *, force: bool = False) -> tuple[Path, Path]:
    """Build both demo checkpoints in ``directory`` if absent; return (fastsam_path, sam2_path)."""
    fastsam = directory / FASTSAM_DEMO_NAME
    sam2 = directory / SAM2_DEMO_NAME
    if force or not fastsam.is_file():
        build_fastsam_checkpoint(fastsam)
    if force or not sam2.is_file():
        build_sam2_checkpoint(sam2)
    return fastsam, sam2


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("SEGPIPE_CHECKPOINT_DIR", "checkpoints")))
    parser.add_argument("--force", action="store_true", help="rebuild even if the files exist")
    args = parser.parse_args(argv)
    fastsam, sam2 = ensure_demo_checkpoints(args.out, force=args.force)
    print(f"FASTSAM_MODEL_PATH={fastsam}")
    print(f"SAM_MODEL_PATH={sam2}  (SAM2_CONFIG inferred: {SAM2_DEMO_CONFIG})")


if __name__ == "__main__":
    main()
