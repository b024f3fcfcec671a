"""Every parameter through all four doors (Avro, headers, CLI, HTTP): the same value, or the same error.

The doors' parameter handling is derived from one spec (:mod:`pipeline.params`); this walks each spec field with a
valid and an invalid value through each door's real parsing code and compares what comes out. A parameter added to
the spec without a case here fails :func:`test_every_parameter_has_a_case`.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any

import fastavro
import pytest

from gateway.app import _form_value, _params
from pipeline.errors import SegmentationError
from pipeline.params import PARAM_NAMES, SegmentParams, cli_flag, header_name, param_kind
from producers.cli import build_parser, params_from_args
from schemas import REQUEST_SCHEMA, SegmentRequest, decode_request, encode_request, parse_bare_request


@dataclass(frozen=True)
class Case:
    name: str
    valid: Any  # the typed value (JSON / Avro)
    invalid: Any  # a typed value the spec refuses (range, or wrong kind)
    expected_error: str


CASES = [
    Case("model", "sam2", "sam3", "model must be one of auto, fastsam, sam2, got 'sam3'"),
    Case("conf", 0.25, 1.5, "conf must be a number in [0, 1], got 1.5"),
    Case("iou", 0.7, -0.5, "iou must be a number in [0, 1], got -0.5"),
    Case("imgsz", 640, 33, "imgsz must be an integer in [32, 4096], a multiple of 32, got 33"),
    Case("max_contours", 3, 0, "max_contours must be an integer in [1, 1000], got 0"),
    Case("mask_post_processing", False, "maybe", "mask_post_processing must be true or false, got 'maybe'"),
    Case("fallback_min_score", 0.9, 2.0, "fallback_min_score must be a number in [0, 1], got 2.0"),
]


def _text(value: Any) -> str:
    """How a person types the value in a header, a flag or a form field."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _outcome(door: Any) -> SegmentParams | tuple[str, str]:
    try:
        return door()
    except SegmentationError as exc:
        return (exc.code, exc.message)


def avro_door(name: str, value: Any) -> SegmentParams:
    """A foreign Avro producer: a raw record written with the shipped schema, read by the worker's decoder."""
    record = fastavro.schemaless_reader(
        io.BytesIO(encode_request(SegmentRequest(request_id="r", image=b"img"))), REQUEST_SCHEMA
    )
    # first-version parameters live in the nested Params record, later ones at the top (the evolution rule)
    (record["params"] if name in record["params"] else record)[name] = value
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, REQUEST_SCHEMA, record)
    return decode_request(buf.getvalue()).params


def header_door(name: str, value: Any) -> SegmentParams:
    """kcat: a bare record with the parameter as its header."""
    headers = [(header_name(name), _text(value).encode())]
    return parse_bare_request(b"img", headers, fallback_request_id="t:0:0").params


def cli_door(name: str, value: Any) -> SegmentParams:
    """segpipe-publish: the flag as typed (booleans as --flag / --no-flag)."""
    parser, _env = build_parser(environ={})
    if param_kind(name) == "bool":
        flag = cli_flag(name) if value else "--no-" + cli_flag(name)[2:]
        argv = ["--stdin", flag]
    else:
        argv = ["--stdin", cli_flag(name), _text(value)]
    return params_from_args(parser.parse_args(argv))


def http_json_door(name: str, value: Any) -> SegmentParams:
    """POST /segment with a JSON body: the gateway's own field parsing of the decoded body."""
    return _params(json.loads(json.dumps({"image": "x", name: value})))


def http_form_door(name: str, value: Any) -> SegmentParams:
    """POST /segment as multipart/form-data: every field arrives as text."""
    return _params({name: _form_value(_text(value))})


DOORS = {
    "avro": avro_door,
    "headers": header_door,
    "cli": cli_door,
    "http-json": http_json_door,
    "http-form": http_form_door,
}


def test_every_parameter_has_a_case() -> None:
    assert [case.name for case in CASES] == list(PARAM_NAMES)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_a_valid_value_is_the_same_through_every_door(case: Case) -> None:
    expected = SegmentParams(**{case.name: case.valid})
    assert getattr(expected, case.name) is not None
    for door_name, door in DOORS.items():
        assert _outcome(lambda door=door: door(case.name, case.valid)) == expected, door_name


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_an_invalid_value_is_the_same_error_through_every_door(case: Case) -> None:
    expected = ("invalid_parameters", case.expected_error)
    checked = 0
    for door_name, door in DOORS.items():
        if door_name == "avro" and param_kind(case.name) == "bool":
            continue  # Avro's boolean type cannot carry a non-boolean: the writer refuses it before any worker
        if door_name == "cli" and param_kind(case.name) == "bool":
            continue  # --flag / --no-flag cannot spell an invalid boolean
        assert _outcome(lambda door=door: door(case.name, case.invalid)) == expected, door_name
        checked += 1
    assert checked >= 3


def test_the_avro_writer_refuses_a_non_boolean_flag() -> None:
    """The one invalid value the Avro door cannot carry is stopped by the schema itself."""
    with pytest.raises((ValueError, TypeError)):
        avro_door("mask_post_processing", "maybe")
