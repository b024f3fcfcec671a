"""FastSAM and SAM2 behind one small interface: load once, lazily, thread-safely; run; return raw masks.

Both wrappers load checkpoints from paths exactly as real deployments do (ultralytics' ``FastSAM(path)``,
sam2's ``build_sam2(config, path)``); the demo and test checkpoints built by :mod:`pipeline.checkpoints` take the
same path. Nothing here reaches the network: ultralytics is switched to offline mode before it is imported.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.errors import ModelUnavailableError
from pipeline.types import Prompts

if TYPE_CHECKING:
    import torch

    from pipeline.sam2_cache import EmbeddingCache

log = logging.getLogger(__name__)

#: SAM2 hydra configs shipped inside the sam2 package, by the size word in official checkpoint names.
_SAM2_SIZES = {"tiny": "t", "t": "t", "small": "s", "s": "s", "base_plus": "b+", "b+": "b+", "large": "l", "l": "l"}
#: Hiera trunk (patch-embedding width, block count) of each size, as in the package's configs.
_SAM2_TRUNKS = {(96, 12): "t", (96, 16): "s", (112, 24): "b+", (144, 48): "l"}
_SAM2_EMBED_KEY = "image_encoder.trunk.patch_embed.proj.weight"
#: Sizes of an image's input to SAM2 warm-up and FastSAM warm-up: small, a real forward pass all the same.
_WARM_UP_SIDE = 64


@dataclass(frozen=True, slots=True)
class RawMask:
    """A model's mask at inference resolution, before cleanup and encoding."""

    mask: np.ndarray  # (H, W) bool
    predicted_iou: float
    stability_score: float


def configure_offline() -> None:
    """Keep ultralytics from any network access: no weight, font, update-check or telemetry downloads."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_VERBOSE", "False")
    os.environ.setdefault("YOLO_AUTOINSTALL", "False")
    # ultralytics sets OMP_NUM_THREADS=1 on import when it is unset ("for training"), which halves CPU inference on
    # two cores and leaks into child processes. Pin it to torch's own default first (an explicit setting wins).
    if not os.environ.get("OMP_NUM_THREADS"):
        os.environ["OMP_NUM_THREADS"] = str(_import_torch().get_num_threads())


def _import_torch() -> Any:
    """Import torch (and make torchvision importable on a CPU-only torch)."""
    from pipeline._torchvision_cpu import ensure_torchvision_ops

    ensure_torchvision_ops()
    import torch

    return torch


def resolve_device(requested: str) -> str:
    """``auto`` picks CUDA when present, else CPU; anything else is passed to torch as is."""
    if requested != "auto":
        return requested
    torch = _import_torch()
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_sam2_state_dict(checkpoint: Path) -> dict[str, Any]:
    """The model weights in a SAM2 checkpoint: the official ``{"model": state_dict}`` or a raw state dict."""
    torch = _import_torch()
    try:
        loaded = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:
        raise ModelUnavailableError(f"cannot read SAM2 checkpoint {checkpoint}: {exc}") from exc
    if isinstance(loaded, dict) and isinstance(loaded.get("model"), dict):
        loaded = loaded["model"]
    if not isinstance(loaded, dict) or _SAM2_EMBED_KEY not in loaded:
        keys = sorted(loaded)[:5] if isinstance(loaded, dict) else type(loaded).__name__
        raise ModelUnavailableError(
            f"{checkpoint} is not a SAM2 checkpoint: expected {{'model': state_dict}} or a state dict with "
            f"{_SAM2_EMBED_KEY!r} (found {keys})"
        )
    return loaded


def infer_sam2_config(checkpoint: Path, state_dict: dict[str, Any] | None = None) -> str:
    """The package config that matches a checkpoint's tensors: the Hiera trunk's width and block count give the
    size (tiny/small/base+/large), SAM2.1-only parameters the version. The file name is only a hint, used where
    the contents match no known trunk; a name that contradicts the contents is overruled, with a warning."""
    state_dict = load_sam2_state_dict(checkpoint) if state_dict is None else state_dict
    width = int(state_dict[_SAM2_EMBED_KEY].shape[0])
    blocks = len({key.split(".")[3] for key in state_dict if key.startswith("image_encoder.trunk.blocks.")})
    size = _SAM2_TRUNKS.get((width, blocks))
    family = "sam2.1" if "no_obj_embed_spatial" in state_dict else "sam2"
    hinted = re.search(r"hiera_(tiny|small|base_plus|large|b\+|t|s|l)(?![a-z0-9+])", checkpoint.stem.lower())
    if size is None and hinted is not None:  # an unknown trunk: the name may still say which config to try
        size = _SAM2_SIZES[hinted.group(1)]
        log.warning(
            "%s: unknown Hiera trunk (%d wide, %d blocks); trying hiera_%s from the name",
            checkpoint.name,
            width,
            blocks,
            size,
        )
    elif hinted is not None and _SAM2_SIZES[hinted.group(1)] != size:
        log.warning(
            "%s: the name says hiera_%s, the weights are hiera_%s; using the weights",
            checkpoint.name,
            hinted.group(1),
            size,
        )
    if size is None:
        raise ModelUnavailableError(
            f"{checkpoint.name}: a Hiera trunk {width} wide with {blocks} blocks matches no SAM2 config in the "
            "sam2 package; set SAM2_CONFIG"
        )
    return f"configs/{family}/{family}_hiera_{size}.yaml"


def _fastsam_predictor_class() -> type:
    """A FastSAM predictor that also computes SAM's stability score from the mask logits.

    ultralytics thresholds mask logits (prototypes x coefficients) at 0 and drops them; this subclass computes,
    per detection and at prototype resolution inside the detection box, the IoU of the logits thresholded at
    +1 and -1 — SAM's stability score — before ultralytics discards the logits. To follow each detection through
    ultralytics' own NMS-free filtering and prompt selection it tags the class column with the row index (FastSAM
    is single-class) and restores the class afterwards.
    """
    from sam2.utils.amg import calculate_stability_score
    from ultralytics.models.fastsam import FastSAMPredictor
    from ultralytics.utils import nms

    class StabilityFastSAMPredictor(FastSAMPredictor):
        def construct_result(self, pred, img, orig_img, img_path, proto):  # type: ignore[no-untyped-def]
            stability = pred.new_zeros((pred.shape[0],))
            classes = pred[:, 5].clone()
            if pred.shape[0]:
                channels, proto_h, proto_w = proto.shape
                logits = (pred[:, 6:] @ proto.float().view(channels, -1)).view(-1, proto_h, proto_w)
                scale = pred.new_tensor([proto_w / img.shape[3], proto_h / img.shape[2]] * 2)
                boxes = pred[:, :4] * scale
                cols = torch_arange(proto_w, logits)
                rows = torch_arange(proto_h, logits)
                inside = (
                    (cols[None, None, :] >= boxes[:, 0, None, None])
                    & (cols[None, None, :] < boxes[:, 2, None, None])
                    & (rows[None, :, None] >= boxes[:, 1, None, None])
                    & (rows[None, :, None] < boxes[:, 3, None, None])
                )
                logits = logits.masked_fill(~inside, float("-inf"))
                stability = calculate_stability_score(logits, 0.0, 1.0).nan_to_num(0.0)
                pred[:, 5] = torch_arange(pred.shape[0], pred)
            self._segpipe_stability.append((stability, classes))
            return super().construct_result(pred, img, orig_img, img_path, proto)

        def postprocess(self, preds, img, orig_imgs):  # type: ignore[no-untyped-def]
            self._segpipe_stability = []
            # ultralytics' NMS gives up after 2 s + 0.05 s per image and returns empty results for the rest of the
            # batch (a silent loss on a slow CPU with many candidates): run it without that limit. The detection
            # predictor reads the function from the module at call time; the model's lock serialises this swap.
            limited = nms.non_max_suppression
            nms.non_max_suppression = functools.partial(limited, max_time_img=math.inf)
            try:
                results = super().postprocess(preds, img, orig_imgs)
            finally:
                nms.non_max_suppression = limited
            for result, (stability, classes) in zip(results, self._segpipe_stability, strict=True):
                rows = result.boxes.data[:, 5].long() if len(result) else stability.new_zeros((0,)).long()
                if len(result):
                    result.boxes.data[:, 5] = classes[rows]
                result.segpipe_stability = stability[rows].tolist()
            return results

    return StabilityFastSAMPredictor


def torch_arange(n: int, like: torch.Tensor) -> torch.Tensor:
    """``torch.arange`` on the device and dtype of ``like``."""
    torch = _import_torch()
    return torch.arange(n, device=like.device, dtype=like.dtype)


class FastSAMModel:
    """ultralytics' FastSAM, loaded on first use; one instance per process, inference serialised by a lock."""

    def __init__(self, checkpoint: Path, device: str, *, runtime: str = "torch") -> None:
        self.checkpoint = Path(checkpoint)
        self.device = device
        self.runtime = runtime  # "onnx": pipeline.fastsam_onnx
        self._lock = threading.Lock()
        self._model: Any = None
        self._predictor_class: type | None = None
        self._threads = 0

    def _load(self) -> Any:
        if self._model is None:
            if not self.checkpoint.is_file():
                raise ModelUnavailableError(f"FastSAM checkpoint not found: {self.checkpoint} (FASTSAM_MODEL_PATH)")
            configure_offline()
            torch = _import_torch()
            from ultralytics import FastSAM

            path = self.checkpoint
            if self.runtime == "onnx":
                from pipeline.fastsam_onnx import onnx_export_path

                path = onnx_export_path(self.checkpoint)
            try:
                model = FastSAM(str(path))
            except Exception as exc:  # a corrupt or foreign file: say which and why
                raise ModelUnavailableError(f"cannot load FastSAM checkpoint {self.checkpoint}: {exc}") from exc
            self._predictor_class = _fastsam_predictor_class()
            # ultralytics' select_device() sets torch to cpu_count - 1 threads ("for training") while it builds the
            # predictor on the first predict, so a first call would run with other threads (and other float
            # rounding) than the rest. Fix the count now, build the predictor with a real predict on a tiny image,
            # and hold every later call to the same count.
            self._threads = torch.get_num_threads()
            try:
                self._run(
                    model,
                    [np.zeros((_WARM_UP_SIDE, _WARM_UP_SIDE, 3), np.uint8)],
                    conf=0.25,
                    iou=0.7,
                    imgsz=_WARM_UP_SIDE,
                    retina=True,
                )
            except Exception as exc:
                raise ModelUnavailableError(f"FastSAM checkpoint {self.checkpoint} failed its warm-up: {exc}") from exc
            self._model = model
            log.info("loaded FastSAM from %s on %s", self.checkpoint, self.device)
        return self._model

    def load(self) -> None:
        """Load now (workers call this at start so the first request does not pay for it)."""
        with self._lock:
            self._load()

    def predict(
        self, images: list[np.ndarray], prompts: list[Prompts], *, conf: float, iou: float, imgsz: int, retina: bool
    ) -> list[list[RawMask]]:
        """Run FastSAM on a batch of RGB images; prompted images run one by one (prompts are per call)."""
        with self._lock:
            model = self._load()
            outputs: list[list[RawMask]] = [[] for _ in images]
            unprompted = [i for i, p in enumerate(prompts) if p.empty]
            if unprompted:
                batch = [images[i][:, :, ::-1] for i in unprompted]  # ultralytics takes numpy images as BGR
                results = self._run(model, batch, conf=conf, iou=iou, imgsz=imgsz, retina=retina)
                for index, result in zip(unprompted, results, strict=True):
                    outputs[index] = _raw_masks(result)
            for index, prompt in enumerate(prompts):
                if prompt.empty:
                    continue
                kwargs: dict[str, Any] = {}
                if prompt.boxes:
                    kwargs["bboxes"] = [list(box) for box in prompt.boxes]
                if prompt.points:
                    kwargs["points"] = [list(point) for point in prompt.points]
                    kwargs["labels"] = list(prompt.point_labels) or [1] * len(prompt.points)
                (result,) = self._run(
                    model, [images[index][:, :, ::-1]], conf=conf, iou=iou, imgsz=imgsz, retina=retina, **kwargs
                )
                outputs[index] = _raw_masks(result)
            return outputs

    def _run(
        self, model: Any, batch: list[np.ndarray], *, conf: float, iou: float, imgsz: int, retina: bool, **prompts: Any
    ) -> list[Any]:
        torch = _import_torch()
        torch.set_num_threads(self._threads)
        try:
            return model.predict(
                batch,
                predictor=self._predictor_class,
                device=self.device,
                conf=conf,
                iou=iou,
                imgsz=imgsz,
                retina_masks=retina,
                verbose=False,
                save=False,
                **prompts,
            )
        finally:
            # ultralytics' select_device sets torch to cpu_count - 1 threads ("for training"): one of two cores
            # here. A worker owns its machine's cores, so put back what torch (or TORCH_NUM_THREADS) had at load.
            if torch.get_num_threads() != self._threads:
                torch.set_num_threads(self._threads)


def _raw_masks(result: Any) -> list[RawMask]:
    if result.masks is None or len(result) == 0:
        return []
    data = result.masks.data
    if tuple(data.shape[1:]) != tuple(result.orig_shape):  # retina_masks=False: letterboxed network-input size
        from ultralytics.utils.ops import scale_masks

        data = scale_masks(data[None].float(), result.orig_shape)[0] > 0.5
    masks = data.bool().cpu().numpy()
    scores = result.boxes.conf.float().cpu().tolist()
    stability = getattr(result, "segpipe_stability", [0.0] * len(scores))
    return [
        RawMask(mask=mask, predicted_iou=float(score), stability_score=float(stab))
        for mask, score, stab in zip(masks, scores, stability, strict=True)
    ]


@dataclass(frozen=True, slots=True)
class SAM2Options:
    """Automatic mask generator settings (see sam2.automatic_mask_generator.SAM2AutomaticMaskGenerator)."""

    points_per_side: int = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.8
    stability_score_thresh: float = 0.95
    #: MEMORY_OPTIMIZATION: above max_inference_side, fewer points per batch so one batch's full-size mask logits
    #: (points x 3 x H x W floats) stay as large as a 1024 x 1024 image's at points_per_batch.
    memory_optimization: bool = False
    max_inference_side: int = 1024


class SAM2Model:
    """SAM2 from the sam2 package: automatic mask generator for 'everything', image predictor for prompts."""

    def __init__(
        self,
        checkpoint: Path,
        device: str,
        config: str | None,
        options: SAM2Options,
        *,
        embeddings: EmbeddingCache | None = None,
    ) -> None:
        self.checkpoint = Path(checkpoint)
        self.embeddings = embeddings  # prompted images already seen skip the image encoder
        self.device = device
        self.config = config
        self.options = options
        self._lock = threading.Lock()
        self._predictor: Any = None
        self._generator: Any = None

    def _load(self) -> None:
        if self._predictor is not None:
            return
        if not self.checkpoint.is_file():
            raise ModelUnavailableError(f"SAM2 checkpoint not found: {self.checkpoint} (SAM_MODEL_PATH)")
        torch = _import_torch()
        state_dict = load_sam2_state_dict(self.checkpoint)
        config = self.config or infer_sam2_config(self.checkpoint, state_dict)
        from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator
        from sam2.build_sam import build_sam2
        from sam2.sam2_image_predictor import SAM2ImagePredictor

        try:
            # sam2's own loader only reads {"model": ...}; build without weights, then load them as it does
            # (strict: a missing or unexpected key is an error), which also takes a raw state dict.
            model = build_sam2(config, None, device="cpu", mode="eval")
            missing, unexpected = model.load_state_dict(state_dict, strict=False)
            if missing or unexpected:
                raise RuntimeError(f"missing keys {missing[:5]}, unexpected keys {unexpected[:5]}")
            model = model.to(self.device)
        except Exception as exc:
            raise ModelUnavailableError(f"cannot load SAM2 {config} from {self.checkpoint}: {exc}") from exc
        del state_dict
        predictor = SAM2ImagePredictor(model)
        self._generator = SAM2AutomaticMaskGenerator(
            model,
            points_per_side=self.options.points_per_side,
            points_per_batch=self.options.points_per_batch,
            pred_iou_thresh=self.options.pred_iou_thresh,
            stability_score_thresh=self.options.stability_score_thresh,
            output_mode="binary_mask",
        )
        with torch.inference_mode():  # warm-up: a real forward pass, so the first request runs like the others
            predictor.set_image(np.zeros((_WARM_UP_SIDE, _WARM_UP_SIDE, 3), np.uint8))
            predictor.predict(point_coords=np.array([[_WARM_UP_SIDE / 2] * 2]), point_labels=np.array([1]))
            predictor.reset_predictor()
        self._predictor = predictor
        log.info("loaded SAM2 %s from %s on %s", config, self.checkpoint, self.device)

    def load(self) -> None:
        """Load now (workers call this at start so the first fallback does not pay for it)."""
        with self._lock:
            self._load()

    def predict(self, images: list[np.ndarray], prompts: list[Prompts]) -> list[list[RawMask]]:
        """Segment a batch of RGB images: everything mode without prompts, the image predictor with them."""
        torch = _import_torch()
        with self._lock, torch.inference_mode():
            self._load()
            return [
                self._everything(image) if p.empty else self._prompted(image, p)
                for image, p in zip(images, prompts, strict=True)
            ]

    def _everything(self, image: np.ndarray) -> list[RawMask]:
        generator = self._generator
        generator.points_per_batch = self._points_per_batch(*image.shape[:2])
        records = generator.generate(image)
        return [
            RawMask(
                mask=np.asarray(record["segmentation"], dtype=bool),
                predicted_iou=float(record["predicted_iou"]),
                stability_score=float(record["stability_score"]),
            )
            for record in records
        ]

    def _points_per_batch(self, height: int, width: int) -> int:
        """SAM2's generator upsamples each batch's low-resolution logits to the full image; MEMORY_OPTIMIZATION
        bounds that by batching fewer points on large images (the masks stay SAM2's own: same logits, same
        interpolation, same threshold)."""
        options = self.options
        side = options.max_inference_side
        if not options.memory_optimization or max(height, width) <= side:
            return options.points_per_batch
        return max(1, options.points_per_batch * side * side // (height * width))

    def _prompted(self, image: np.ndarray, prompts: Prompts) -> list[RawMask]:
        """Points describe one object (best of SAM's three guesses); each box gives one mask (points added)."""
        from pipeline.masks import stability_scores

        predictor = self._predictor
        if self.embeddings is not None:
            self.embeddings.set_image(predictor, image)
        else:
            predictor.set_image(image)
        points = np.asarray(prompts.points, dtype=np.float32).reshape(-1, 2) if prompts.points else None
        labels = None
        if points is not None:
            labels = np.asarray(prompts.point_labels or [1] * len(points), dtype=np.int32)
        if prompts.boxes:
            boxes = np.asarray(prompts.boxes, dtype=np.float32).reshape(-1, 4)
            count = len(boxes)
            batched_points = None if points is None else np.repeat(points[None], count, axis=0)
            batched_labels = None if labels is None else np.repeat(labels[None], count, axis=0)
            logits, scores, _ = predictor.predict(
                point_coords=batched_points,
                point_labels=batched_labels,
                box=boxes,
                multimask_output=False,
                return_logits=True,
            )
            logits = logits.reshape(count, *logits.shape[-2:])
            scores = np.asarray(scores).reshape(count)
        else:
            logits, scores, _ = predictor.predict(
                point_coords=points, point_labels=labels, multimask_output=True, return_logits=True
            )
            best = int(np.argmax(scores))
            logits, scores = logits[best : best + 1], np.asarray(scores)[best : best + 1]
        threshold = float(predictor.mask_threshold)
        stability = stability_scores(_import_torch().from_numpy(np.ascontiguousarray(logits)), threshold, 1.0)
        return [
            RawMask(mask=logit > threshold, predicted_iou=float(score), stability_score=stab)
            for logit, score, stab in zip(logits, scores, stability, strict=True)
        ]
