"""Avro codec: round trips, NaN, schema evolution both ways, and typed errors on anything unreadable."""

from __future__ import annotations

import contextlib
import io
import json
import math
from typing import Any

import fastavro
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.errors import InvalidParametersError, InvalidPromptError, MalformedRequestError
from pipeline.types import RLE, FallbackReason, MaskRecord, ModelChoice, ModelName, Prompts, SegmentParams
from schemas import (
    DEAD_LETTER_SCHEMA,
    REQUEST_SCHEMA,
    RESULT_SCHEMA,
    DeadLetter,
    ErrorInfo,
    Header,
    RequestEnvelope,
    ResultStatus,
    SegmentRequest,
    SegmentResultMessage,
    decode_dead_letter,
    decode_request,
    decode_result,
    encode_dead_letter,
    encode_request,
    encode_result,
    peek_request_envelope,
    result_to_dict,
    schema_text,
)

REQUEST_ERRORS = (MalformedRequestError, InvalidParametersError, InvalidPromptError)

MASK = MaskRecord(
    rle=RLE(size=(480, 640), counts="PZ`17j?2N1O1O00001O"),
    polygons=((10.0, 20.0, 30.0, 20.0, 30.0, 40.5), (1.0, 1.0, 2.0, 2.0, 1.0, 2.0)),
    bbox=(10.0, 20.0, 20.0, 20.5),
    area=321,
    predicted_iou=0.93,
    stability_score=0.97,
)


def full_request() -> SegmentRequest:
    return SegmentRequest(
        request_id="req-1",
        image=b"\x89PNG\r\n\x1a\n" + bytes(range(256)),
        prompts=Prompts(points=((10.5, 20.0), (3.0, 4.0)), point_labels=(1, 0), boxes=((0.0, 1.0, 100.0, 200.25),)),
        params=SegmentParams(
            model=ModelChoice.FASTSAM,
            conf=0.25,
            iou=0.7,
            imgsz=640,
            max_contours=3,
            mask_post_processing=False,
            fallback_min_score=0.5,
        ),
        source="cat.jpg",
        reply_to="replies-gw1",
        submitted_at_ms=1_732_520_000_123,
    )


def ok_result() -> SegmentResultMessage:
    return SegmentResultMessage(
        request_id="req-1",
        status=ResultStatus.OK,
        image_sha256="ab" * 32,
        width=640,
        height=480,
        inference_width=512,
        inference_height=384,
        model=ModelName.SAM2,
        fallback_reason=FallbackReason.LOW_SCORE,
        fallback_detail="best predicted_iou 0.12 < 0.5",
        cached=True,
        masks=(MASK, MASK),
        timings_ms={"fastsam": 12.5, "sam2": 80.0},
        error=None,
        worker_id="worker-7",
        source="cat.jpg",
        created_at_ms=1_732_520_000_999,
    )


def error_result() -> SegmentResultMessage:
    return SegmentResultMessage.failure(
        "req-2",
        ErrorInfo(code="invalid_image", message="not an image"),
        worker_id="worker-7",
        source=None,
        image_sha256="cd" * 32,
        timings_ms={"decode": 0.5},
        created_at_ms=5,
    )


def dead_letter() -> DeadLetter:
    return DeadLetter(
        request_id=None,
        error=ErrorInfo(code="malformed_request", message="cannot decode"),
        original_value=b"\x00\xffgarbage",
        original_key=b"k",
        original_headers=(Header("segpipe-format", b"avro-v1"), Header("x", None), Header("x", b"again")),
        topic="segment-requests",
        partition=3,
        offset=2**40,
        worker_id="worker-7",
        failed_at_ms=1_732_520_001_000,
    )


def write(schema: Any, record: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, schema, record)
    return buf.getvalue()


def raw_request(**changes: Any) -> dict[str, Any]:
    """The Avro record of ``full_request()`` with some wire values changed, as a foreign producer could send."""
    record = fastavro.schemaless_reader(io.BytesIO(encode_request(full_request())), REQUEST_SCHEMA)
    params = changes.pop("params", {})
    record.update(changes)
    record["params"] = {**record["params"], **params}
    return record


def _appended_result_bytes(value: Any) -> bytes:
    """The bytes of the fields appended to SegmentResult after its first version (origin, prompt indices)."""
    record = fastavro.schemaless_reader(io.BytesIO(encode_result(value)), RESULT_SCHEMA)
    schema = json.loads(schema_text("SegmentResult"))
    names = [field["name"] for field in schema["fields"]]
    schema["fields"] = schema["fields"][names.index("request_key") :]
    return write(
        fastavro.parse_schema(schema, named_schemas={}), {f["name"]: record[f["name"]] for f in schema["fields"]}
    )


def next_version(name: str, field: dict[str, Any]) -> Any:
    """Today's schema plus one optional field appended: what the next version is allowed to do."""
    schema = json.loads(schema_text(name))
    schema["fields"].append(field)
    return fastavro.parse_schema(schema)


GPU_NAME = {"name": "gpu_name", "type": ["null", "string"], "default": None, "doc": "GPU that ran the request."}

# --- round trips ---------------------------------------------------------------------------------------------------


def test_request_round_trip() -> None:
    req = full_request()
    back = decode_request(encode_request(req))
    assert back == req
    assert type(back.params.model) is ModelChoice
    assert type(back.submitted_at_ms) is int


def test_minimal_request_round_trip() -> None:
    req = SegmentRequest(request_id="r", image=b"")
    assert decode_request(encode_request(req)) == req


@pytest.mark.parametrize("make", [ok_result, error_result])
def test_result_round_trip(make: Any) -> None:
    msg = make()
    back = decode_result(encode_result(msg))
    assert back == msg
    assert type(back.status) is ResultStatus
    assert back.model is None or type(back.model) is ModelName


def test_dead_letter_round_trip() -> None:
    dl = dead_letter()
    assert decode_dead_letter(encode_dead_letter(dl)) == dl


def test_dead_letter_with_nothing_optional_round_trip() -> None:
    dl = DeadLetter(None, ErrorInfo("c", "m"), None, None, (), "t", 0, 0, "w", 0)
    assert decode_dead_letter(encode_dead_letter(dl)) == dl


@pytest.mark.parametrize("ms", [0, 1, -1, 1_732_520_000_123, 253_402_300_799_999])
def test_timestamps_survive_exactly(ms: int) -> None:
    req = SegmentRequest(request_id="r", image=b"x", submitted_at_ms=ms)
    assert decode_request(encode_request(req)).submitted_at_ms == ms


def test_nan_survives_the_round_trip() -> None:
    nan = float("nan")
    req = SegmentRequest(
        request_id="r",
        image=b"x",
        prompts=Prompts(points=((nan, 1.0),), boxes=((0.0, nan, float("inf"), 2.0),)),
    )
    back = decode_request(encode_request(req))
    assert math.isnan(back.prompts.points[0][0]) and back.prompts.points[0][1] == 1.0
    assert math.isnan(back.prompts.boxes[0][1]) and back.prompts.boxes[0][2] == math.inf

    mask = MaskRecord(RLE((1, 1), "1"), ((nan,),), (0.0, 0.0, 1.0, 1.0), 1, nan, 0.5)
    result = SegmentResultMessage(
        "r",
        ResultStatus.OK,
        None,
        1,
        1,
        1,
        1,
        ModelName.FASTSAM,
        None,
        None,
        False,
        (mask,),
        {"t": nan},
        None,
        "w",
        None,
        0,
    )
    back_result = decode_result(encode_result(result))
    assert math.isnan(back_result.masks[0].predicted_iou)
    assert math.isnan(back_result.masks[0].polygons[0][0])
    assert math.isnan(back_result.timings_ms["t"])


finite = st.floats(allow_nan=False, width=64)
int32 = st.integers(-(2**31), 2**31 - 1)
unit = st.floats(0.0, 1.0)
text = st.text(max_size=20)


@st.composite
def requests(draw: st.DrawFn) -> SegmentRequest:
    points = draw(st.lists(st.tuples(finite, finite), max_size=4))
    labels = draw(
        st.sampled_from(
            [(), tuple(draw(st.lists(st.sampled_from([0, 1]), min_size=len(points), max_size=len(points))))]
        )
    )
    return SegmentRequest(
        request_id=draw(st.text(min_size=1, max_size=20)),
        image=draw(st.binary(max_size=64)),
        prompts=Prompts(
            points=tuple(points),
            point_labels=labels,
            boxes=tuple(draw(st.lists(st.tuples(finite, finite, finite, finite), max_size=3))),
        ),
        params=SegmentParams(  # values the spec accepts: the others never reach the encoder
            model=draw(st.sampled_from(list(ModelChoice))),
            conf=draw(st.none() | unit),
            iou=draw(st.none() | unit),
            imgsz=draw(st.none() | st.integers(1, 128).map(lambda n: n * 32)),
            max_contours=draw(st.none() | st.integers(1, 1000)),
            mask_post_processing=draw(st.none() | st.booleans()),
            fallback_min_score=draw(st.none() | unit),
        ),
        source=draw(st.none() | text),
        reply_to=draw(st.none() | text),
        submitted_at_ms=draw(st.integers(0, 253_402_300_799_999)),
    )


@settings(max_examples=200, deadline=None)
@given(requests())
def test_any_request_round_trips(req: SegmentRequest) -> None:
    assert decode_request(encode_request(req)) == req


# --- schema evolution ----------------------------------------------------------------------------------------------


def test_next_reader_reads_todays_result() -> None:
    """Backward compatibility: a reader on the next schema resolves records written today."""
    nxt = next_version("SegmentResult", GPU_NAME)
    data = encode_result(ok_result())
    record = fastavro.schemaless_reader(io.BytesIO(data), RESULT_SCHEMA, nxt)
    assert record["gpu_name"] is None
    assert record["request_id"] == "req-1" and len(record["masks"]) == 2
    assert decode_result(data, reader_schema=nxt) == ok_result()


def test_todays_reader_reads_next_versions_result() -> None:
    """Forward compatibility: the appended field is trailing bytes that today's decoder ignores."""
    nxt = next_version("SegmentResult", GPU_NAME)
    for msg in (ok_result(), error_result()):
        data = write(nxt, {**result_to_dict(msg), "gpu_name": "NVIDIA H100"})
        assert data != encode_result(msg)
        assert decode_result(data) == msg
        plain = fastavro.schemaless_reader(io.BytesIO(data), RESULT_SCHEMA)
        assert "gpu_name" not in plain


def test_todays_reader_reads_next_versions_request_and_dead_letter() -> None:
    priority = {"name": "priority", "type": ["null", "int"], "default": None, "doc": "Scheduling priority."}
    data = write(next_version("SegmentRequest", priority), {**raw_request(), "priority": 5})
    assert decode_request(data) == full_request()

    dl = dead_letter()
    record = fastavro.schemaless_reader(io.BytesIO(encode_dead_letter(dl)), DEAD_LETTER_SCHEMA)
    data = write(next_version("DeadLetter", GPU_NAME), {**record, "gpu_name": "x"})
    assert decode_dead_letter(data) == dl


# --- errors --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("data", [b"", b"\x00", b"\x01", b"\x02r", b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff"])
def test_short_or_garbage_request_is_malformed(data: bytes) -> None:
    with pytest.raises(MalformedRequestError):
        decode_request(data)


def test_empty_request_message_says_so() -> None:
    with pytest.raises(MalformedRequestError, match="empty"):
        decode_request(b"")


def test_none_is_malformed() -> None:
    with pytest.raises(MalformedRequestError, match="no value"):
        decode_request(None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("encode", "decode", "value"),
    [
        (encode_request, decode_request, full_request()),
        (encode_result, decode_result, ok_result()),
        (encode_dead_letter, decode_dead_letter, dead_letter()),
    ],
)
def test_every_truncation_is_malformed(encode: Any, decode: Any, value: Any) -> None:
    data = encode(value)
    for end in range(len(data)):
        if decode is decode_result and end >= len(data) - len(_appended_result_bytes(value)):
            # A first-version record, plus part of the appended fields as trailing bytes: read as first-version.
            assert decode(data[:end]).origin is None
            continue
        with pytest.raises(MalformedRequestError, match=r"cannot decode|empty"):
            decode(data[:end])


def test_invalid_utf8_string_is_malformed() -> None:
    data = b"\x04\xff\xfe" + encode_request(full_request())[len(b"\x0areq-1") :]
    with pytest.raises(MalformedRequestError, match="UTF-8"):
        decode_request(data)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_raise_only_typed_errors(data: bytes) -> None:
    for decode, allowed in (
        (decode_request, REQUEST_ERRORS),
        (decode_result, (MalformedRequestError,)),
        (decode_dead_letter, (MalformedRequestError,)),
    ):
        with contextlib.suppress(allowed):
            decode(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_corrupted_valid_messages_raise_only_typed_errors(data: st.DataObject) -> None:
    """Random bytes die at the first length; flipping bytes of real messages reaches the deeper fields."""
    for encoded, decode, allowed in (
        (encode_request(full_request()), decode_request, REQUEST_ERRORS),
        (encode_result(ok_result()), decode_result, (MalformedRequestError,)),
        (encode_dead_letter(dead_letter()), decode_dead_letter, (MalformedRequestError,)),
    ):
        corrupt = bytearray(encoded)
        for _ in range(data.draw(st.integers(1, 4))):
            corrupt[data.draw(st.integers(0, len(corrupt) - 1))] = data.draw(st.integers(0, 255))
        with contextlib.suppress(allowed):
            decode(bytes(corrupt))


def test_unknown_model_is_invalid_parameters() -> None:
    data = write(REQUEST_SCHEMA, raw_request(params={"model": "foo"}))
    with pytest.raises(InvalidParametersError) as info:
        decode_request(data)
    assert info.value.message == "model must be one of auto, fastsam, sam2, got 'foo'"
    assert info.value.code == "invalid_parameters"


def test_model_spelling_is_forgiven() -> None:
    data = write(REQUEST_SCHEMA, raw_request(params={"model": " SAM2 "}))
    assert decode_request(data).params.model is ModelChoice.SAM2


def test_empty_request_id_is_malformed() -> None:
    with pytest.raises(MalformedRequestError, match="request_id"):
        decode_request(write(REQUEST_SCHEMA, raw_request(request_id="")))


@pytest.mark.parametrize(
    ("labels", "match"), [([1], "1 labels for 2 points"), ([1, 2], r"point_labels\[1\]"), ([1, -1], "0 .*or 1")]
)
def test_bad_point_labels_are_invalid_prompts(labels: list[int], match: str) -> None:
    with pytest.raises(InvalidPromptError, match=match):
        decode_request(write(REQUEST_SCHEMA, raw_request(point_labels=labels)))


def test_result_with_unknown_status_or_model_is_malformed() -> None:
    record = result_to_dict(ok_result())
    with pytest.raises(MalformedRequestError, match="status 'partial'"):
        decode_result(write(RESULT_SCHEMA, {**record, "status": "partial"}))
    with pytest.raises(MalformedRequestError, match="model 'yolo'"):
        decode_result(write(RESULT_SCHEMA, {**record, "model": "yolo"}))


def test_inconsistent_result_is_malformed() -> None:
    record = result_to_dict(ok_result())
    with pytest.raises(MalformedRequestError, match="error"):
        decode_result(write(RESULT_SCHEMA, {**record, "error": {"code": "x", "message": "y"}}))


def test_bad_mask_shapes_are_malformed() -> None:
    record = result_to_dict(ok_result())
    bad_size = {**record["masks"][0], "rle": {"size": [1, 2, 3], "counts": "x"}}
    with pytest.raises(MalformedRequestError, match=r"rle\.size"):
        decode_result(write(RESULT_SCHEMA, {**record, "masks": [bad_size]}))
    with pytest.raises(MalformedRequestError, match="bbox"):
        decode_result(write(RESULT_SCHEMA, {**record, "masks": [{**record["masks"][0], "bbox": [1.0]}]}))


# --- envelope, dict view, golden bytes -----------------------------------------------------------------------------


def test_peek_envelope_addresses_a_refused_request() -> None:
    data = write(REQUEST_SCHEMA, raw_request(params={"model": "foo"}))
    assert peek_request_envelope(data) == RequestEnvelope("req-1", "cat.jpg", "replies-gw1")


def test_peek_envelope_of_a_truncated_request_keeps_its_id() -> None:
    data = encode_request(full_request())
    assert peek_request_envelope(data[:20]) == RequestEnvelope("req-1", None, None)


@pytest.mark.parametrize("data", [b"", b"\x01", b"\x00rest", b"\x40ab"])
def test_peek_envelope_of_garbage_is_none(data: bytes) -> None:
    assert peek_request_envelope(data) is None


def test_result_to_dict_is_json_ready() -> None:
    d = result_to_dict(ok_result())
    assert json.loads(json.dumps(d)) == d
    assert d["status"] == "ok" and d["model"] == "sam2" and d["fallback_reason"] == "low_score"
    assert d["masks"][0]["rle"] == {"size": [480, 640], "counts": MASK.rle.counts}
    assert d["masks"][0]["bbox"] == [10.0, 20.0, 20.0, 20.5]
    assert d["created_at_ms"] == 1_732_520_000_999
    assert result_to_dict(error_result())["error"] == {"code": "invalid_image", "message": "not an image"}


def test_result_to_dict_turns_numpy_scalars_into_python() -> None:
    np = pytest.importorskip("numpy")
    mask = MaskRecord(
        RLE((np.int64(2), np.int64(3)), "x"),
        ((np.float32(1.5),),),
        tuple(np.float64([0, 0, 1, 1])),
        np.int64(4),
        np.float32(0.5),
        np.float64(1),
    )
    d = result_to_dict(SegmentResultMessage.failure("r", ErrorInfo("c", "m"), worker_id="w", created_at_ms=0))
    assert json.dumps(d)
    msg = SegmentResultMessage(
        "r", ResultStatus.OK, None, 3, 2, 3, 2, ModelName.SAM2, None, None, False, (mask,), {}, None, "w", None, 0
    )
    d = result_to_dict(msg)
    assert json.loads(json.dumps(d)) == d
    assert decode_result(encode_result(msg)).masks[0].area == 4


def test_request_golden_bytes() -> None:
    """The exact wire bytes of a small request: a change here breaks every producer in every language."""
    req = SegmentRequest(
        request_id="r1",
        image=b"\x01\x02",
        prompts=Prompts(points=((1.0, 2.0),), point_labels=(1,)),
        params=SegmentParams(model=ModelChoice.SAM2, imgsz=64),
        reply_to="out",
        submitted_at_ms=1000,
    )
    assert encode_request(req).hex() == (
        "04"
        "7231"  # request_id "r1"
        "04"
        "0102"  # image
        "02"
        "000000000000f03f"
        "0000000000000040"
        "00"  # points: one block of 1 item, then the end
        "02"
        "02"
        "00"  # point_labels [1]
        "00"  # boxes []
        "08"
        "73616d32"  # params.model "sam2"
        "00"
        "00"
        "02"
        "8001"
        "00"
        "00"
        "00"  # conf, iou null; imgsz 64; max_contours, post-processing, min score null
        "00"  # source null
        "02"
        "06"
        "6f7574"  # reply_to "out"
        "d00f"  # submitted_at_ms 1000
    )
