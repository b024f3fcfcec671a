"""The .avsc files themselves: documented, evolvable, self-contained, shipped as package data, field order pinned."""

from __future__ import annotations

import json
from collections.abc import Iterator
from importlib import resources
from typing import Any

import fastavro
import pytest

from schemas import schema_text

NAMES = ["SegmentRequest", "SegmentResult", "DeadLetter"]
PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}

# Schemaless Avro has no field names on the wire: order is the format. A reorder or rename must fail here.
EXPECTED_FIELDS = {
    "SegmentRequest": [
        "request_id",
        "image",
        "points",
        "point_labels",
        "boxes",
        "params",
        "source",
        "reply_to",
        "submitted_at_ms",
    ],
    "SegmentResult": [
        "request_id",
        "status",
        "image_sha256",
        "width",
        "height",
        "inference_width",
        "inference_height",
        "model",
        "fallback_reason",
        "fallback_detail",
        "cached",
        "masks",
        "timings_ms",
        "error",
        "worker_id",
        "source",
        "created_at_ms",
        "request_key",
        "request_topic",
        "request_partition",
        "request_offset",
        "mask_prompt_indices",
    ],
    "DeadLetter": [
        "request_id",
        "error",
        "original_value",
        "original_key",
        "original_headers",
        "topic",
        "partition",
        "offset",
        "worker_id",
        "failed_at_ms",
    ],
}
TIMESTAMP_FIELDS = {"SegmentRequest": "submitted_at_ms", "SegmentResult": "created_at_ms", "DeadLetter": "failed_at_ms"}


def raw(name: str) -> dict[str, Any]:
    return json.loads(schema_text(name))


def walk_records(schema: Any) -> Iterator[dict[str, Any]]:
    """Every record definition reachable from a schema, the top-level one included."""
    if isinstance(schema, list):
        for member in schema:
            yield from walk_records(member)
    elif isinstance(schema, dict):
        kind = schema.get("type")
        if kind == "record":
            yield schema
            for f in schema["fields"]:
                yield from walk_records(f["type"])
        elif kind == "array":
            yield from walk_records(schema["items"])
        elif kind == "map":
            yield from walk_records(schema["values"])
        elif isinstance(kind, dict | list):
            yield from walk_records(kind)


def type_references(schema: Any) -> Iterator[str]:
    """Every type named by a bare string (primitives and references to named types)."""
    if isinstance(schema, str):
        yield schema
    elif isinstance(schema, list):
        for member in schema:
            yield from type_references(member)
    elif isinstance(schema, dict):
        kind = schema.get("type")
        if kind == "record":
            for f in schema["fields"]:
                yield from type_references(f["type"])
        elif kind == "array":
            yield from type_references(schema["items"])
        elif kind == "map":
            yield from type_references(schema["values"])
        else:
            yield from type_references(kind)


@pytest.mark.parametrize("name", NAMES)
def test_top_level_name_and_namespace(name: str) -> None:
    schema = raw(name)
    assert schema["type"] == "record"
    assert schema["name"] == name
    assert schema["namespace"] == "io.segpipe.v1"


@pytest.mark.parametrize("name", NAMES)
def test_every_record_and_field_has_a_doc(name: str) -> None:
    records = list(walk_records(raw(name)))
    assert records, "walk found no record"
    for record in records:
        assert isinstance(record.get("doc"), str) and record["doc"].strip(), f"record {record['name']} has no doc"
        for f in record["fields"]:
            assert isinstance(f.get("doc"), str) and f["doc"].strip(), f"{record['name']}.{f['name']} has no doc"


def test_walk_reaches_the_nested_records() -> None:
    """Guard for the doc test above: it must look inside arrays, unions and nested records."""
    found = {r["name"] for name in NAMES for r in walk_records(raw(name))}
    assert {"Point", "Box", "Params", "Mask", "Rle", "ErrorInfo", "Header"} <= found


@pytest.mark.parametrize("name", NAMES)
def test_optional_fields_are_null_first_with_null_default(name: str) -> None:
    for record in walk_records(raw(name)):
        for f in record["fields"]:
            if isinstance(f["type"], list):
                where = f"{record['name']}.{f['name']}"
                assert f["type"][0] == "null", f"{where}: null must come first"
                assert len(f["type"]) == 2, f"{where}: only [null, T] unions"
                assert "default" in f and f["default"] is None, f"{where}: default must be null"


@pytest.mark.parametrize("name", NAMES)
def test_field_order_is_the_wire_contract(name: str) -> None:
    assert [f["name"] for f in raw(name)["fields"]] == EXPECTED_FIELDS[name]


@pytest.mark.parametrize("name", NAMES)
def test_timestamps_are_timestamp_millis_longs(name: str) -> None:
    (field,) = [f for f in raw(name)["fields"] if f["name"] == TIMESTAMP_FIELDS[name]]
    assert field["type"] == {"type": "long", "logicalType": "timestamp-millis"}


@pytest.mark.parametrize("name", NAMES)
def test_schemas_are_self_contained(name: str) -> None:
    """No reference to a type defined in another file: each parses alone, and references point inside it."""
    schema = raw(name)
    defined = {r["name"] for r in walk_records(schema)}
    for ref in type_references(schema):
        assert ref in PRIMITIVES or ref.split(".")[-1] in defined, f"{name} refers to {ref} defined elsewhere"
    fastavro.parse_schema(schema, named_schemas={})


def test_model_is_a_documented_string_not_an_enum() -> None:
    (params,) = [f for f in raw("SegmentRequest")["fields"] if f["name"] == "params"]
    (model,) = [f for f in params["type"]["fields"] if f["name"] == "model"]
    assert model["type"] == "string"
    for value in ("auto", "fastsam", "sam2"):
        assert value in model["doc"]


def test_no_avro_enums_anywhere() -> None:
    """Enums fail to decode on an unknown symbol; every enumerated value here is a string on purpose."""
    for name in NAMES:
        assert '"enum"' not in schema_text(name)


def test_dead_letter_headers_can_repeat() -> None:
    (headers,) = [f for f in raw("DeadLetter")["fields"] if f["name"] == "original_headers"]
    assert headers["type"]["type"] == "array"
    assert [f["name"] for f in headers["type"]["items"]["fields"]] == ["key", "value"]


def test_schemas_ship_as_package_data() -> None:
    files = {p.name for p in resources.files("schemas").iterdir()}
    assert {"segment_request.avsc", "segment_result.avsc", "dead_letter.avsc"} <= files


def test_schema_text_by_record_name_or_file_stem() -> None:
    assert schema_text("SegmentResult") == schema_text("segment_result")
    assert schema_text("dead_letter") == resources.files("schemas").joinpath("dead_letter.avsc").read_text("utf-8")
    with pytest.raises(ValueError, match="unknown schema"):
        schema_text("Nope")
