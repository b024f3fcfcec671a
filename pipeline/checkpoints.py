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
from pipeline.settings import ModelSettings

FASTSAM_TRAINED_NAME = "FastSAM-shapes-yolov8n-seg.pt"
FASTSAM_DEMO_NAME = FASTSAM_TRAINED_NAME
#: Committed weights made by scripts/train_demo_fastsam.py (trained once, never at set-up).
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
SAM2_DEMO_NAME = "sam2.1_hiera_tiny-scaled.pt"
SAM2_LOGIT_SCALE = 40.0
SAM2_DEMO_CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"
#: Official release names, preferred over the demo files when both are in the checkpoint folder (largest first).
FASTSAM_RELEASE_NAMES = ("FastSAM-x.pt", "FastSAM-s.pt")
SAM2_RELEASE_NAMES = tuple(f"sam2.1_hiera_{size}.pt" for size in ("large", "base_plus", "small", "tiny"))


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


def checkpoint_dir() -> Path:
    """Where set-up puts checkpoints: ``SEGPIPE_CHECKPOINT_DIR``, else ``checkpoints/`` in the working directory."""
    return Path(os.environ.get("SEGPIPE_CHECKPOINT_DIR") or "checkpoints")


def discover_checkpoints(settings: ModelSettings, directory: Path | None = None) -> ModelSettings:
    """``settings`` with each checkpoint path that was not set (FASTSAM_MODEL_PATH, SAM_MODEL_PATH) taken from the
    checkpoint folder: an official release file if there is one, else the demo file set-up built. A path that was
    set is kept as it is, and so is the default when the folder holds neither (the load then names what is missing).
    """
    folder = checkpoint_dir() if directory is None else directory
    found: dict[str, object] = {}
    for field_name, names in (
        ("fastsam_model_path", (*FASTSAM_RELEASE_NAMES, FASTSAM_DEMO_NAME)),
        ("sam_model_path", (*SAM2_RELEASE_NAMES, SAM2_DEMO_NAME)),
    ):
        if field_name in settings.model_fields_set:
            continue
        path = next((folder / name for name in names if (folder / name).is_file()), None)
        if path is not None:
            found[field_name] = path
    sam2 = found.get("sam_model_path")
    if isinstance(sam2, Path) and sam2.name == SAM2_DEMO_NAME and "sam2_config" not in settings.model_fields_set:
        found["sam2_config"] = SAM2_DEMO_CONFIG  # the config it was built from, whatever its file name says
    return settings.model_copy(update=found) if found else settings


def is_demo_checkpoint(path: Path) -> bool:
    """Whether ``path`` is one of the demo files this module builds (by name: set-up writes them under these)."""
    return Path(path).name in (FASTSAM_DEMO_NAME, SAM2_DEMO_NAME)


def describe_checkpoints(settings: ModelSettings) -> str:
    """One line for the logs: which files the models load and whether they are demo weights."""

    def one(label: str, variable: str, field_name: str, path: Path) -> str:
        if os.environ.get(variable):
            origin = variable
        elif field_name in settings.model_fields_set:
            origin = "found in the checkpoint folder" if path.parent == checkpoint_dir() else "set in code"
        else:
            origin = "default"
        if not path.is_file():
            kind = "MISSING"
        elif is_demo_checkpoint(path):
            kind = "demo weights, masks not meaningful"
        else:
            kind = "not a demo file"
        return f"{label} {path} ({origin}; {kind})"

    return "checkpoints: " + ", ".join(
        (
            one("FastSAM", "FASTSAM_MODEL_PATH", "fastsam_model_path", settings.fastsam_model_path),
            one("SAM2", "SAM_MODEL_PATH", "sam_model_path", settings.sam_model_path),
        )
    )


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
