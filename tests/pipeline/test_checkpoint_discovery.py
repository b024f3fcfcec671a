"""Unset checkpoint paths are found in the checkpoint folder: the variable first, then a release file, then demo."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.checkpoints import (
    FASTSAM_DEMO_NAME,
    SAM2_DEMO_CONFIG,
    SAM2_DEMO_NAME,
    describe_checkpoints,
    discover_checkpoints,
    is_demo_checkpoint,
)
from pipeline.settings import ModelSettings


@pytest.fixture(autouse=True)
def _no_checkpoint_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("FASTSAM_MODEL_PATH", "SAM_MODEL_PATH", "SAM2_CONFIG", "SEGPIPE_CHECKPOINT_DIR"):
        monkeypatch.delenv(name, raising=False)


def _touch(folder: Path, *names: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"checkpoint")


def test_demo_files_are_found_and_reported_as_demo_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _touch(tmp_path, FASTSAM_DEMO_NAME, SAM2_DEMO_NAME)
    monkeypatch.setenv("SEGPIPE_CHECKPOINT_DIR", str(tmp_path))
    found = discover_checkpoints(ModelSettings())
    assert found.fastsam_model_path == tmp_path / FASTSAM_DEMO_NAME
    assert found.sam_model_path == tmp_path / SAM2_DEMO_NAME
    assert found.sam2_config == SAM2_DEMO_CONFIG  # what the demo file was built from
    line = describe_checkpoints(found)
    assert line.count("found in the checkpoint folder; demo weights") == 2, line


def test_release_files_win_over_demo_files_and_variables_win_over_both(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _touch(tmp_path, FASTSAM_DEMO_NAME, SAM2_DEMO_NAME, "FastSAM-s.pt", "sam2.1_hiera_large.pt")
    found = discover_checkpoints(ModelSettings(), tmp_path)
    assert found.fastsam_model_path.name == "FastSAM-s.pt" and found.sam_model_path.name == "sam2.1_hiera_large.pt"
    assert found.sam2_config is None  # inferred from the release name when the model loads
    assert not is_demo_checkpoint(found.fastsam_model_path)

    mine = tmp_path / "elsewhere" / "mine.pt"
    _touch(mine.parent, mine.name)
    monkeypatch.setenv("FASTSAM_MODEL_PATH", str(mine))
    found = discover_checkpoints(ModelSettings(), tmp_path)
    assert found.fastsam_model_path == mine, "a path that was set is never replaced"
    assert found.sam_model_path.name == "sam2.1_hiera_large.pt"
    assert f"FastSAM {mine} (FASTSAM_MODEL_PATH; not a demo file)" in describe_checkpoints(found)


def test_an_empty_folder_keeps_the_defaults_and_says_they_are_missing(tmp_path: Path) -> None:
    found = discover_checkpoints(ModelSettings(), tmp_path)
    assert found == ModelSettings()
    assert describe_checkpoints(found).count("(default; MISSING)") == 2
