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


def test_the_readme_table_lists_every_parameter_with_its_header_and_rule() -> None:
    from pathlib import Path

    from pipeline.params import cli_flag, header_name

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    for name in PARAM_NAMES:
        row = next((line for line in readme.splitlines() if line.startswith(f"| `{name}` |")), None)
        assert row is not None, f"README's 'Request parameters' table has no row for {name}"
        assert f"`{header_name(name)}`" in row and cli_flag(name)[2:] in row, row
        assert param_rule(name).split(" (")[0] in row, (name, param_rule(name))
