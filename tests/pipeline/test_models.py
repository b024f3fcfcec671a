"""Model wrappers: SAM2 config inference, missing checkpoints, the CPU nms fallback, and load-once under threads."""

from __future__ import annotations

import threading
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline._torchvision_cpu import ensure_torchvision_ops, nms_reference
from pipeline.errors import ModelUnavailableError
from pipeline.models import FastSAMModel, SAM2Model, SAM2Options, configure_offline, infer_sam2_config

# --------------------------------------------------------------------------------------------------------------------
# SAM2 config from the checkpoint's contents

# (patch-embedding width, trunk blocks) of each Hiera size, as the package's configs build them.
TRUNKS = {"t": (96, 12), "s": (96, 16), "b+": (112, 24), "l": (144, 48)}


def fake_state_dict(size: str, *, v21: bool = True) -> dict[str, torch.Tensor]:
    """Just the tensors config inference reads: the trunk's patch embedding and one entry per block."""
    width, blocks = TRUNKS[size]
    state = {"image_encoder.trunk.patch_embed.proj.weight": torch.empty(width, 3, 7, 7)}
    state.update({f"image_encoder.trunk.blocks.{i}.norm1.weight": torch.empty(1) for i in range(blocks)})
    if v21:
        state["no_obj_embed_spatial"] = torch.empty(1, 64)
    return state


@pytest.mark.parametrize("size", list(TRUNKS))
@pytest.mark.parametrize("v21", [True, False], ids=["sam2.1", "sam2"])
@pytest.mark.parametrize("name", ["model.pt", "sam2.1_hiera_large_ft.pt", "sam2_hiera_tiny-ft.pt"])
def test_sam2_config_comes_from_the_tensors(size: str, v21: bool, name: str) -> None:
    """Width and block count pick the size, SAM2.1-only parameters the version; any file name, even a wrong one."""
    family = "sam2.1" if v21 else "sam2"
    config = infer_sam2_config(Path(name), fake_state_dict(size, v21=v21))
    assert config == f"configs/{family}/{family}_hiera_{size}.yaml"


def test_inferred_configs_exist_in_the_sam2_package() -> None:
    """Every config the mapping can produce is really shipped by the installed sam2 (else build_sam2 would fail)."""
    import sam2

    package = Path(sam2.__file__).parent
    for size in TRUNKS:
        for v21 in (True, False):
            assert (package / infer_sam2_config(Path("x.pt"), fake_state_dict(size, v21=v21))).is_file()


@pytest.mark.parametrize("name", ["sam2.1_hiera_large-ft.pt", "sam2.1_hiera_large_ft.pt", "sam2.1_hiera_l.pt"])
def test_unknown_trunk_falls_back_to_the_name_hint(name: str) -> None:
    """A trunk no config describes: the name (both fine-tune spellings) is the only hint left."""
    state = fake_state_dict("l")
    state["image_encoder.trunk.blocks.48.norm1.weight"] = torch.empty(1)
    assert infer_sam2_config(Path(name), state) == "configs/sam2.1/sam2.1_hiera_l.yaml"
    with pytest.raises(ModelUnavailableError, match="SAM2_CONFIG"):
        infer_sam2_config(Path("model.pt"), state)


def test_raw_state_dict_loads_like_the_official_format(tmp_path: Path, demo_checkpoints: tuple[Path, Path]) -> None:
    """A bare state dict (no "model" key) loads and answers exactly as the official {"model": ...} file does."""
    import numpy as np

    from pipeline.types import Prompts

    official = demo_checkpoints[1]
    raw = tmp_path / "finetuned.pt"
    torch.save(torch.load(official, map_location="cpu", weights_only=True)["model"], raw)
    image = np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    prompt = [Prompts(points=((40.0, 30.0),), point_labels=(1,))]
    answers = [SAM2Model(path, "cpu", None, SAM2Options()).predict([image], prompt)[0] for path in (official, raw)]
    assert [(m.mask.tobytes(), m.predicted_iou) for m in answers[0]] == [
        (m.mask.tobytes(), m.predicted_iou) for m in answers[1]
    ]


@pytest.mark.parametrize(
    "content", [{"weights": {}}, {"model": {"foo": torch.zeros(1)}}, [1, 2, 3]], ids=["no-model", "alien", "list"]
)
def test_foreign_files_are_refused_with_a_clear_message(tmp_path: Path, content: object) -> None:
    path = tmp_path / "sam2.1_hiera_tiny.pt"
    torch.save(content, path)
    with pytest.raises(ModelUnavailableError, match="not a SAM2 checkpoint"):
        SAM2Model(path, "cpu", None, SAM2Options()).load()


# --------------------------------------------------------------------------------------------------------------------
# missing checkpoints


def test_missing_fastsam_checkpoint_names_its_env_var(tmp_path: Path) -> None:
    """Operators fix a missing file through the env var, so the message must name FASTSAM_MODEL_PATH."""
    missing = tmp_path / "FastSAM-x.pt"
    with pytest.raises(ModelUnavailableError, match="FASTSAM_MODEL_PATH") as caught:
        FastSAMModel(missing, "cpu").load()
    assert str(missing) in caught.value.message
    assert caught.value.code == "model_unavailable"


def test_missing_sam2_checkpoint_names_its_env_var(tmp_path: Path) -> None:
    """Same for SAM2: SAM_MODEL_PATH (the original API's name) must be in the message."""
    missing = tmp_path / "sam2.1_hiera_tiny.pt"
    with pytest.raises(ModelUnavailableError, match="SAM_MODEL_PATH") as caught:
        SAM2Model(missing, "cpu", None, SAM2Options()).load()
    assert str(missing) in caught.value.message


# --------------------------------------------------------------------------------------------------------------------
# the CPU nms fallback


def brute_force_nms(boxes: list[tuple[int, int, int, int]], scores: list[float], threshold: float) -> list[int]:
    """Greedy NMS from its definition, with exact rational IoU: take the best remaining box, drop every box whose
    IoU with it exceeds the threshold, repeat."""
    order = sorted(range(len(boxes)), key=lambda i: -scores[i])
    limit = Fraction(threshold)
    keep: list[int] = []
    removed: set[int] = set()
    for i in order:
        if i in removed:
            continue
        keep.append(i)
        ax1, ay1, ax2, ay2 = boxes[i]
        for j in order:
            if j in removed or j in keep:
                continue
            bx1, by1, bx2, by2 = boxes[j]
            inter = max(0, min(ax2, bx2) - max(ax1, bx1)) * max(0, min(ay2, by2) - max(ay1, by1))
            union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
            if Fraction(inter, union) > limit:
                removed.add(j)
    return keep


@st.composite
def nms_cases(draw: st.DrawFn) -> tuple[list[tuple[int, int, int, int]], list[float], float]:
    """Integer boxes (exact in float32) with distinct scores (no tie-break ambiguity) and dyadic thresholds
    (exactly representable, so float32 IoUs and exact IoUs compare the same way)."""
    n = draw(st.integers(0, 40))
    boxes = []
    for _ in range(n):
        x1, y1 = draw(st.integers(0, 60)), draw(st.integers(0, 60))
        boxes.append((x1, y1, x1 + draw(st.integers(1, 40)), y1 + draw(st.integers(1, 40))))
    scores = draw(st.lists(st.integers(0, 10_000), min_size=n, max_size=n, unique=True))
    threshold = draw(st.sampled_from([0.0, 0.125, 0.25, 0.5, 0.75, 0.875, 1.0]))
    return boxes, [s / 10_000 for s in scores], threshold


@settings(max_examples=300, deadline=None, database=None)
@given(nms_cases())
def test_nms_reference_is_greedy_nms(case: tuple[list[tuple[int, int, int, int]], list[float], float]) -> None:
    """segpipe's CPU kernel keeps exactly the boxes greedy NMS keeps, in descending score order."""
    boxes, scores, threshold = case
    kept = nms_reference(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), torch.tensor(scores), threshold)
    assert kept.dtype == torch.int64
    assert kept.tolist() == brute_force_nms(boxes, scores, threshold)


@settings(max_examples=100, deadline=None, database=None)
@given(nms_cases())
def test_torchvision_nms_agrees_after_ensure(case: tuple[list[tuple[int, int, int, int]], list[float], float]) -> None:
    """After ensure_torchvision_ops(), torchvision.ops.nms (segpipe's kernel or torchvision's own) is greedy NMS."""
    ensure_torchvision_ops()
    import torchvision

    boxes, scores, threshold = case
    tensor_boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    kept = torchvision.ops.nms(tensor_boxes, torch.tensor(scores), threshold)
    assert kept.tolist() == brute_force_nms(boxes, scores, threshold)
    assert kept.tolist() == nms_reference(tensor_boxes, torch.tensor(scores), threshold).tolist()


def test_ensure_torchvision_ops_is_idempotent() -> None:
    """Calling it again must not re-register the operator (a second torch.library DEF would raise)."""
    first = ensure_torchvision_ops()
    assert ensure_torchvision_ops() == first


# --------------------------------------------------------------------------------------------------------------------
# load once, lazily, thread-safely


class CountingFactory:
    """Wraps a real model factory (ultralytics.FastSAM / sam2's build_sam2) and counts the real constructions."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.calls = 0
        self._lock = threading.Lock()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            self.calls += 1
        return self.real(*args, **kwargs)


def _load_from_threads(load: Any, count: int = 4) -> list[BaseException]:
    """Call ``load`` from ``count`` threads released together; return any exceptions they raised."""
    barrier = threading.Barrier(count)
    errors: list[BaseException] = []

    def worker() -> None:
        barrier.wait()
        try:
            load()
        except BaseException as exc:  # noqa: BLE001 - reported to the test thread
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "a load() call hung"
    return errors


@pytest.fixture
def fastsam_factory(monkeypatch: pytest.MonkeyPatch) -> CountingFactory:
    configure_offline()
    ensure_torchvision_ops()
    import ultralytics

    factory = CountingFactory(ultralytics.FastSAM)
    monkeypatch.setattr(ultralytics, "FastSAM", factory)  # FastSAMModel imports it from ultralytics at load time
    return factory


@pytest.fixture
def sam2_factory(monkeypatch: pytest.MonkeyPatch) -> CountingFactory:
    ensure_torchvision_ops()
    import sam2.build_sam

    factory = CountingFactory(sam2.build_sam.build_sam2)
    monkeypatch.setattr(sam2.build_sam, "build_sam2", factory)  # SAM2Model imports it at load time
    return factory


def test_fastsam_loads_once(demo_checkpoints: tuple[Path, Path], fastsam_factory: CountingFactory) -> None:
    """load() twice builds the model once and keeps the same object."""
    model = FastSAMModel(demo_checkpoints[0], "cpu")
    assert fastsam_factory.calls == 0, "loading must be lazy"
    model.load()
    first = model._model
    model.load()
    assert model._model is first
    assert fastsam_factory.calls == 1


def test_fastsam_concurrent_first_loads_build_once(
    demo_checkpoints: tuple[Path, Path], fastsam_factory: CountingFactory
) -> None:
    """Four workers asking for the model at once get one model, built once."""
    model = FastSAMModel(demo_checkpoints[0], "cpu")
    assert _load_from_threads(model.load) == []
    assert fastsam_factory.calls == 1
    assert model._model is not None


def test_sam2_loads_once(demo_checkpoints: tuple[Path, Path], sam2_factory: CountingFactory) -> None:
    """load() twice builds SAM2 once and keeps the same predictor and generator."""
    model = SAM2Model(demo_checkpoints[1], "cpu", None, SAM2Options(points_per_side=4))
    assert sam2_factory.calls == 0, "loading must be lazy"
    model.load()
    predictor, generator = model._predictor, model._generator
    model.load()
    assert model._predictor is predictor and model._generator is generator
    assert sam2_factory.calls == 1


def test_sam2_concurrent_first_loads_build_once(
    demo_checkpoints: tuple[Path, Path], sam2_factory: CountingFactory
) -> None:
    """Four workers asking for SAM2 at once: one build, shared by all."""
    model = SAM2Model(demo_checkpoints[1], "cpu", None, SAM2Options(points_per_side=4))
    assert _load_from_threads(model.load) == []
    assert sam2_factory.calls == 1
    assert model._predictor is not None and model._generator is not None
