"""Parameter resolution and prompt checks accept what real callers send and refuse the rest with typed errors."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.errors import InvalidParametersError, InvalidPromptError
from pipeline.segmenter import resolve_params, validate_prompts
from pipeline.settings import ModelSettings
from pipeline.types import ModelChoice, Prompts, SegmentParams


def test_defaults_come_from_the_original_apis_settings() -> None:
    resolved = resolve_params(SegmentParams(), ModelSettings())
    assert (resolved.model, resolved.conf, resolved.iou, resolved.max_contours) == (ModelChoice.AUTO, 0.4, 0.8, 10)


@pytest.mark.parametrize("bad", [{"conf": "abc"}, {"imgsz": "big"}, {"iou": [1]}])
def test_non_numeric_parameters_are_a_typed_error(bad: dict[str, object]) -> None:
    """The spec refuses them on construction, with the parameter's rule in the message."""
    with pytest.raises(InvalidParametersError, match=f"^{next(iter(bad))} must be "):
        SegmentParams(**bad)


def test_a_bad_configured_default_is_refused_like_a_bad_request_value() -> None:
    with pytest.raises(InvalidParametersError, match="imgsz must be an integer in \\[32, 4096\\], a multiple of 32"):
        resolve_params(SegmentParams(), ModelSettings(fastsam_imgsz=1000))


def test_numpy_coordinates_are_accepted_but_bools_are_not() -> None:
    validate_prompts(Prompts(points=((np.float32(3.0), np.int64(4)),), boxes=((np.float64(1), 1, 5, 5),)), 10, 10)
    with pytest.raises(InvalidPromptError):
        validate_prompts(Prompts(points=((True, 4.0),)), 10, 10)
