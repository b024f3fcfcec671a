"""Bare requests (image as value, parameters as headers), the format header, and the shared prompt shape check."""

from __future__ import annotations

import math
from typing import Any

import pytest

from pipeline.errors import InvalidParametersError, InvalidPromptError, MalformedRequestError
from pipeline.types import ModelChoice, Prompts, SegmentParams
from schemas import (
    BARE_HEADERS,
    FORMAT_AVRO,
    FORMAT_HEADER,
    RequestEnvelope,
    SegmentRequest,
    decode_request,
    encode_request,
    is_avro_request,
    parse_bare_request,
    peek_bare_envelope,
    prompts_from_lists,
    request_headers,
)

IMAGE = b"\xff\xd8\xff\xe0 not really a jpeg"


def bare(headers: list[tuple[str, Any]] | None, value: bytes | None = IMAGE) -> SegmentRequest:
    return parse_bare_request(value, headers, fallback_request_id="topic:0:42")


def test_value_only_gives_defaults() -> None:
    for headers in (None, []):
        req = bare(headers)
        assert req == SegmentRequest(request_id="topic:0:42", image=IMAGE)
        assert req.prompts == Prompts() and req.params == SegmentParams()


def test_value_is_passed_through_untouched() -> None:
    """Base64 text is the core's to decode: the codec must not guess at it."""
    assert bare(None, b"aGVsbG8=").image == b"aGVsbG8="
    assert bare(None, b"").image == b""
    assert bare(None, bytearray(b"abc")).image == b"abc"


@pytest.mark.parametrize(
    ("key", "value", "attribute", "expected"),
    [
        ("segpipe-request-id", b"abc-1", lambda r: r.request_id, "abc-1"),
        ("segpipe-model", b"sam2", lambda r: r.params.model, ModelChoice.SAM2),
        ("segpipe-model", b" FastSAM ", lambda r: r.params.model, ModelChoice.FASTSAM),
        ("segpipe-conf", b"0.25", lambda r: r.params.conf, 0.25),
        ("segpipe-iou", b" 0.7 ", lambda r: r.params.iou, 0.7),
        ("segpipe-imgsz", b"640", lambda r: r.params.imgsz, 640),
        ("segpipe-max-contours", b"+3", lambda r: r.params.max_contours, 3),
        ("segpipe-mask-post-processing", b"true", lambda r: r.params.mask_post_processing, True),
        ("segpipe-mask-post-processing", b"FALSE", lambda r: r.params.mask_post_processing, False),
        ("segpipe-mask-post-processing", b"1", lambda r: r.params.mask_post_processing, True),
        ("segpipe-mask-post-processing", b"0", lambda r: r.params.mask_post_processing, False),
        ("segpipe-fallback-min-score", b"0.5", lambda r: r.params.fallback_min_score, 0.5),
        ("segpipe-points", b"[[1, 2.5], [3, 4]]", lambda r: r.prompts.points, ((1.0, 2.5), (3.0, 4.0))),
        ("segpipe-boxes", b"[[0, 0, 10, 20.5]]", lambda r: r.prompts.boxes, ((0.0, 0.0, 10.0, 20.5),)),
        ("segpipe-source", "über.png".encode(), lambda r: r.source, "über.png"),
        ("segpipe-reply-to", b"replies-gw1", lambda r: r.reply_to, "replies-gw1"),
        ("SEGPIPE-Model", b"sam2", lambda r: r.params.model, ModelChoice.SAM2),
        ("segpipe-conf", "0.5", lambda r: r.params.conf, 0.5),
    ],
)
def test_each_header(key: str, value: Any, attribute: Any, expected: Any) -> None:
    assert attribute(bare([(key, value)])) == expected
    assert attribute(bare([])) != expected  # the header, not a default, made the difference


def test_every_header_at_once_and_through_avro() -> None:
    headers = [
        ("traceparent", b"00-abc-def-01"),
        ("segpipe-request-id", b"r9"),
        ("segpipe-model", b"fastsam"),
        ("segpipe-conf", b"0.3"),
        ("segpipe-iou", b"0.6"),
        ("segpipe-imgsz", b"512"),
        ("segpipe-max-contours", b"5"),
        ("segpipe-mask-post-processing", b"false"),
        ("segpipe-fallback-min-score", b"0.2"),
        ("segpipe-points", b"[[5, 6]]"),
        ("segpipe-point-labels", b"[0]"),
        ("segpipe-boxes", b"[[1, 2, 3, 4]]"),
        ("segpipe-source", b"cam-3"),
        ("segpipe-reply-to", b"gw"),
    ]
    req = bare(headers)
    assert req == SegmentRequest(
        request_id="r9",
        image=IMAGE,
        prompts=Prompts(points=((5.0, 6.0),), point_labels=(0,), boxes=((1.0, 2.0, 3.0, 4.0),)),
        params=SegmentParams(ModelChoice.FASTSAM, 0.3, 0.6, 512, 5, False, 0.2),
        source="cam-3",
        reply_to="gw",
    )
    assert decode_request(encode_request(req)) == req


def test_nan_in_json_prompts_stays_nan() -> None:
    req = bare([("segpipe-points", b"[[NaN, 1]]"), ("segpipe-boxes", b"[[0, 0, Infinity, 1]]")])
    assert math.isnan(req.prompts.points[0][0])
    assert req.prompts.boxes[0][2] == math.inf


def test_null_valued_header_counts_as_absent() -> None:
    assert bare([("segpipe-model", None)]).params.model is ModelChoice.AUTO


@pytest.mark.parametrize(
    ("key", "value", "error"),
    [
        ("segpipe-model", b"foo", InvalidParametersError),
        ("segpipe-conf", b"high", InvalidParametersError),
        ("segpipe-conf", b"", InvalidParametersError),
        ("segpipe-iou", b"0,5", InvalidParametersError),
        ("segpipe-imgsz", b"1.5", InvalidParametersError),
        ("segpipe-imgsz", b"1e3", InvalidParametersError),
        ("segpipe-imgsz", "١٢".encode(), InvalidParametersError),
        ("segpipe-max-contours", b"9" * 5000, InvalidParametersError),
        ("segpipe-mask-post-processing", b"maybe", InvalidParametersError),
        ("segpipe-fallback-min-score", b"x", InvalidParametersError),
        ("segpipe-points", b"[[1, 2]", MalformedRequestError),
        ("segpipe-points", b"[" * 100_000, MalformedRequestError),
        ("segpipe-points", b"[[1]]", InvalidPromptError),
        ("segpipe-points", b"[[1, 2, 3]]", InvalidPromptError),
        ("segpipe-points", b'[["1", 2]]', InvalidPromptError),
        ("segpipe-points", b"[[true, 2]]", InvalidPromptError),
        ("segpipe-points", b"[[1e999999, 2]]", None),  # inf: the core refuses it, not the codec
        ("segpipe-points", b'{"x": 1, "y": 2}', InvalidPromptError),
        ("segpipe-points", b"[1, 2]", InvalidPromptError),
        ("segpipe-boxes", b"[[1, 2, 3]]", InvalidPromptError),
        ("segpipe-boxes", b"null", None),
        ("segpipe-boxes", b"not json", MalformedRequestError),
        ("segpipe-point-labels", b"[1]", InvalidPromptError),  # one label, no point
        ("segpipe-request-id", b"", MalformedRequestError),
        ("segpipe-source", b"\xff\xfe", MalformedRequestError),
        ("segpipe-modle", b"sam2", MalformedRequestError),
    ],
)
def test_bad_header_is_a_typed_error_naming_it(key: str, value: bytes, error: type[Exception] | None) -> None:
    if error is None:
        bare([(key, value)])
        return
    with pytest.raises(error) as info:
        bare([(key, value)])
    # A parameter's message is the spec's, the same through every door: it names the parameter, not the header.
    param = key.removeprefix("segpipe-").replace("-", "_")
    assert key in str(info.value) or str(info.value).startswith(f"{param} must be ")


def test_integer_header_message_names_parameter_rule_and_value() -> None:
    rule = r"^imgsz must be an integer in \[32, 4096\], a multiple of 32, got '1\.5'$"
    with pytest.raises(InvalidParametersError, match=rule):
        bare([("segpipe-imgsz", b"1.5")])


def test_unknown_model_header_message() -> None:
    with pytest.raises(InvalidParametersError, match=r"^model must be one of auto, fastsam, sam2, got 'foo'$"):
        bare([("segpipe-model", b"foo")])


def test_labels_must_match_points() -> None:
    ok = bare([("segpipe-points", b"[[1, 2], [3, 4]]"), ("segpipe-point-labels", b"[1, 0]")])
    assert ok.prompts.point_labels == (1, 0)
    with pytest.raises(InvalidPromptError, match="segpipe-point-labels has 1 labels for 2 points"):
        bare([("segpipe-points", b"[[1, 2], [3, 4]]"), ("segpipe-point-labels", b"[1]")])
    with pytest.raises(InvalidPromptError, match=r"segpipe-point-labels\[0\]"):
        bare([("segpipe-points", b"[[1, 2]]"), ("segpipe-point-labels", b"[2]")])


def test_repeated_header_is_refused() -> None:
    with pytest.raises(MalformedRequestError, match="segpipe-conf is given more than once"):
        bare([("segpipe-conf", b"0.1"), ("segpipe-conf", b"0.1")])


def test_other_headers_are_ignored_even_when_repeated() -> None:
    assert bare([("x-trace", b"1"), ("x-trace", b"\xff")]).request_id == "topic:0:42"


def test_tombstone_is_malformed() -> None:
    with pytest.raises(MalformedRequestError, match="no value"):
        bare([], value=None)


def test_format_header_values() -> None:
    with pytest.raises(MalformedRequestError, match="decode this record as Avro"):
        bare([(FORMAT_HEADER, FORMAT_AVRO)])
    with pytest.raises(MalformedRequestError, match="unsupported value 'avro-v2'"):
        bare([(FORMAT_HEADER, b"avro-v2")])


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        (None, False),
        ([], False),
        ([("segpipe-format", b"avro-v1")], True),
        ([("x", b"y"), ("Segpipe-Format", b" avro-v1\n")], True),
        ([("segpipe-format", "avro-v1")], True),
        ([("segpipe-format", b"avro-v2")], False),
        ([("segpipe-format", None)], False),
        ([("segpipe-request-id", b"avro-v1")], False),
    ],
)
def test_is_avro_request(headers: Any, expected: bool) -> None:
    assert is_avro_request(headers) is expected


def test_request_headers_mark_the_record_as_avro() -> None:
    headers = request_headers(SegmentRequest(request_id="réq-1", image=b""))
    assert headers == [("segpipe-format", b"avro-v1"), ("segpipe-request-id", "réq-1".encode())]
    assert is_avro_request(headers)
    assert {key for key, _ in headers} <= BARE_HEADERS


def test_peek_bare_envelope_reads_what_it_can() -> None:
    headers = [
        ("segpipe-request-id", b"r1"),
        ("segpipe-reply-to", b"gw"),
        ("segpipe-source", b"\xff"),
        ("segpipe-model", b"foo"),
    ]
    assert peek_bare_envelope(headers, fallback_request_id="t:0:1") == RequestEnvelope("r1", None, "gw")
    assert peek_bare_envelope(None, fallback_request_id="t:0:1") == RequestEnvelope("t:0:1")
    assert peek_bare_envelope([("segpipe-request-id", b"")], fallback_request_id="t:0:1").request_id == "t:0:1"


# --- prompts_from_lists directly -----------------------------------------------------------------------------------


def test_prompts_from_lists_builds_float_tuples() -> None:
    prompts = prompts_from_lists([[1, 2]], [1], ([0, 0, 3, 4],))
    assert prompts == Prompts(points=((1.0, 2.0),), point_labels=(1,), boxes=((0.0, 0.0, 3.0, 4.0),))
    assert all(type(v) is float for v in prompts.points[0] + prompts.boxes[0])
    assert prompts_from_lists(None, None, None) == Prompts()
    assert prompts_from_lists([(1, 2)], [], []).point_labels == ()


def test_prompts_from_lists_keeps_values_for_the_core_to_judge() -> None:
    prompts = prompts_from_lists([(-5, float("nan"))], [], [(10, 10, 0, 0)])
    assert prompts.points[0][0] == -5.0 and math.isnan(prompts.points[0][1])
    assert prompts.boxes == ((10.0, 10.0, 0.0, 0.0),)


def test_prompts_from_lists_accepts_numpy_numbers() -> None:
    np = pytest.importorskip("numpy")
    prompts = prompts_from_lists([tuple(np.float32([1, 2]))], [np.int64(1)], [])
    assert prompts.points == ((1.0, 2.0),) and prompts.point_labels == (1,)


@pytest.mark.parametrize(
    ("points", "labels", "boxes", "match"),
    [
        ("12", [], [], "points must be a list"),
        ([[1, 2]], [True], [], r"point_labels\[0\]"),
        ([[1, 2]], [1.0], [], r"point_labels\[0\]"),
        ([[1, 2]], [1, 1], [], "2 labels for 1 points"),
        ([[1, None]], [], [], r"points\[0\] must contain numbers"),
        ([], [], [[1, 2, 3, 4, 5]], r"boxes\[0\] must be \[x1, y1, x2, y2\]"),
        ([[10**400, 1]], [], [], "too large"),
    ],
)
def test_prompts_from_lists_refuses_bad_shapes(points: Any, labels: Any, boxes: Any, match: str) -> None:
    with pytest.raises(InvalidPromptError, match=match):
        prompts_from_lists(points, labels, boxes)


def test_a_deeply_nested_json_header_says_so_without_recursion_text() -> None:
    with pytest.raises(MalformedRequestError) as info:
        bare([("segpipe-points", b"[" * 100_000 + b"]" * 100_000)])
    assert "nested too deeply" in info.value.message and "recursion" not in info.value.message
