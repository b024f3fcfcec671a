"""The Avro request carries the spec's parameters, same names, order and types: the first version's in the nested
``Params`` record, later ones appended to ``SegmentRequest`` as optional fields (so adding a parameter touches the
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


def _appended_param_fields() -> list[dict[str, object]]:
    """Parameters added after the first version: top-level optional fields of SegmentRequest (the evolution rule
    forbids adding inside the nested Params record)."""
    request = json.loads(schema_text("SegmentRequest"))
    return [field for field in request["fields"] if field["name"] in PARAM_NAMES]


def test_the_avro_params_are_the_spec() -> None:
    """The first version's parameters, in the Params record in spec order, then any later one appended at the top
    level as an optional field: together exactly the spec's parameters."""
    nested, appended = _params_fields(), _appended_param_fields()
    assert [field["name"] for field in nested + appended] == list(PARAM_NAMES)
    for field in nested + appended:
        assert field["type"] == AVRO_TYPE[param_kind(str(field["name"]))], field["name"]
    for field in appended:
        assert field["type"][0] == "null" and field["default"] is None, "appended fields are optional"


def test_the_avro_docs_state_the_spec_rule() -> None:
    """Each ranged parameter's doc in the .avsc states the rule the spec enforces (imgsz's multiple of 32 included)."""
    for field in _params_fields() + _appended_param_fields():
        name = str(field["name"])
        if param_kind(name) in ("float", "int"):
            rule = param_rule(name).removeprefix("a number ").removeprefix("an integer ")
            assert rule in str(field["doc"]), (name, rule)


def test_the_readme_table_lists_every_parameter_with_its_header_and_rule() -> None:
    from pathlib import Path

    from pipeline.params import cli_flag, header_name

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    for name in PARAM_NAMES:
        row = next((line for line in readme.splitlines() if line.startswith(f"| `{name}` |")), None)
        assert row is not None, f"README's 'Request parameters' table has no row for {name}"
        assert f"`{header_name(name)}`" in row and cli_flag(name)[2:] in row, row
        assert param_rule(name).split(" (")[0] in row, (name, param_rule(name))
