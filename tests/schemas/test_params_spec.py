"""The Avro ``Params`` record is the spec's fields, same names, order and types (so adding a parameter touches the
spec, the .avsc and the case in tests/gateway/test_param_doors.py, and nothing else on the wire)."""

from __future__ import annotations

import json

from pipeline.params import PARAM_NAMES, param_kind, param_rule
from schemas import schema_text

AVRO_TYPE = {"float": ["null", "double"], "int": ["null", "int"], "bool": ["null", "boolean"], "model": "string"}


def _params_fields() -> list[dict[str, object]]:
    request = json.loads(schema_text("SegmentRequest"))
    (params,) = [field for field in request["fields"] if field["name"] == "params"]
    return params["type"]["fields"]


def test_the_avro_params_record_is_the_spec() -> None:
    fields = _params_fields()
    assert [field["name"] for field in fields] == list(PARAM_NAMES)
    for field in fields:
        assert field["type"] == AVRO_TYPE[param_kind(str(field["name"]))], field["name"]


def test_the_avro_docs_state_the_spec_rule() -> None:
    """Each ranged parameter's doc in the .avsc states the rule the spec enforces (imgsz's multiple of 32 included)."""
    for field in _params_fields():
        name = str(field["name"])
        if param_kind(name) in ("float", "int"):
            rule = param_rule(name).removeprefix("a number ").removeprefix("an integer ")
            assert rule in str(field["doc"]), (name, rule)
