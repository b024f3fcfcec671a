"""Small checkpoints of the real architectures, for tests and the local demo.

No model hub is reachable where segpipe is developed and tested, so the official FastSAM / SAM2.1 weights cannot
be downloaded. These files have the official formats and load through exactly the code path real checkpoints
take (``ultralytics.FastSAM(path)``, ``sam2.build_sam.build_sam2(config, path)``).

- FastSAM: ultralytics' ``yolov8n-seg`` (FastSAM-s/-x are YOLOv8-seg with one class) with ``nc=1``, trained on
  synthetic filled shapes by ``scripts/train_demo_fastsam.py`` and committed in ``pipeline/weights/`` (6 MB): it
  finds drawn shapes at the product's defaults (conf 0.4, imgsz 1024). It is copied, never retrained, here.
  ``build_fastsam_checkpoint`` still makes the random-weight starting point the training uses.
- SAM2.1 hiera-tiny: the sam2 package's own ``configs/sam2.1/sam2.1_hiera_t.yaml`` with seeded random weights,
  saved as ``{"model": state_dict}`` like the official ``sam2.1_hiera_tiny.pt`` (156 MB, so built, not committed).
  Random mask logits stay within +-0.1, which leaves SAM2's stability score at 0 and its generator with one mask;
  the mask decoder's output (the hypernetworks' last layer) is scaled by ``SAM2_LOGIT_SCALE`` so logits vary
  enough for stability scores to vary and the automatic generator to keep several masks. The masks mean nothing.

Usage: ``python -m pipeline.checkpoints --out checkpoints`` (skips files that exist unless ``--force``).
"""

from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import tempfile
from pathlib import Path

from pipeline.models import _import_torch, configure_offline

FASTSAM_TRAINED_NAME = "FastSAM-shapes-yolov8n-seg.pt"
FASTSAM_DEMO_NAME = FASTSAM_TRAINED_NAME
#: Committed weights made by scripts/train_demo_fastsam.py (trained once, never at set-up).
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
SAM2_DEMO_NAME = "sam2.1_hiera_tiny-scaled.pt"
SAM2_LOGIT_SCALE = 40.0
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


def build_sam2_checkpoint(
    path: Path, *, config: str = SAM2_DEMO_CONFIG, seed: int = 0, logit_scale: float = SAM2_LOGIT_SCALE
) -> Path:
    """Save a randomly initialised SAM2 from the package's own hydra config, in the official ``{"model": ...}``,
    with its mask logits scaled by ``logit_scale`` (see the module docstring)."""
    torch = _import_torch()
    from sam2.build_sam import build_sam2

    torch.manual_seed(seed)
    model = build_sam2(config, ckpt_path=None, device="cpu")
    with torch.no_grad():  # mask logits = hypernetwork output . upscaled embedding: scale the output layer
        for mlp in model.sam_mask_decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(logit_scale)
            mlp.layers[-1].bias.mul_(logit_scale)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".partial")
    torch.save({"model": model.state_dict()}, tmp)
    os.replace(tmp, path)
    return path


def ensure_demo_checkpoints(directory: Path, *, force: bool = False, sam2: bool = True) -> tuple[Path, Path]:
    """Put both demo checkpoints (only FastSAM when ``sam2`` is false) in ``directory`` if absent; return
    (fastsam_path, sam2_path)."""
    fastsam = directory / FASTSAM_DEMO_NAME
    sam2_path = directory / SAM2_DEMO_NAME
    trained = WEIGHTS_DIR / FASTSAM_TRAINED_NAME
    # Compared by content: a cached directory (CI) must not keep an older training result under the same name.
    if force or not fastsam.is_file() or not filecmp.cmp(trained, fastsam, shallow=False):
        directory.mkdir(parents=True, exist_ok=True)
        tmp = fastsam.with_suffix(".partial")
        shutil.copyfile(trained, tmp)
        os.replace(tmp, fastsam)
    if sam2 and (force or not sam2_path.is_file()):
        build_sam2_checkpoint(sam2_path)
    return fastsam, sam2_path


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
