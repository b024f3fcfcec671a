"""Every symbol a schema doc lists is one the code emits, and every symbol the code can emit is listed.

The wire carries these as strings (so a new symbol never breaks an old decoder), which leaves the docs as the only
list a foreign client sees: a symbol there that nothing produces (``requested`` once was) misleads them.
"""

from __future__ import annotations

import ast
import json
import re
from enum import StrEnum
from pathlib import Path

import pytest

from pipeline.types import FallbackReason, ModelChoice, ModelName
from schemas import ResultStatus, schema_text

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("pipeline", "schemas", "segpipe", "consumers", "producers", "gateway")

# (schema, path to the field, the enum whose values it carries)
FIELDS = [
    ("SegmentResult", ("fallback_reason",), FallbackReason),
    ("SegmentResult", ("model",), ModelName),
    ("SegmentRequest", ("params", "model"), ModelChoice),
]


def _field(schema: str, path: tuple[str, ...]) -> dict[str, object]:
    record = json.loads(schema_text(schema))
    for name in path:
        (field,) = [f for f in record["fields"] if f["name"] == name]
        record = field["type"] if isinstance(field["type"], dict) else field
    return field


def _listed(doc: str) -> set[str]:
    """The symbols a doc lists: after its first colon, asides in parentheses left out, up to a semicolon or a full
    stop."""
    listing = re.split(r";|\.\s", re.sub(r"\s*\([^)]*\)", "", doc.split(": ", 1)[1]), maxsplit=1)[0]
    return {word for word in re.split(r",\s*|\s+or\s+", listing.strip(" .")) if word}


@pytest.mark.parametrize(("schema", "path", "enum"), FIELDS, ids=[".".join(f[1]) + "@" + f[0] for f in FIELDS])
def test_each_doc_lists_exactly_the_enum(schema: str, path: tuple[str, ...], enum: type[StrEnum]) -> None:
    doc = str(_field(schema, path)["doc"])
    assert _listed(doc) == {member.value for member in enum}, doc


def _emitted_members() -> set[str]:
    """``Enum.MEMBER`` references in the product's code, outside each enum's own definition."""
    found: set[str] = set()
    for package in PRODUCT:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                    found.add(f"{node.value.id}.{node.attr}")
    return found


@pytest.mark.parametrize("enum", [FallbackReason, ModelName, ResultStatus], ids=lambda e: e.__name__)
def test_every_symbol_is_emitted_somewhere(enum: type[StrEnum]) -> None:
    emitted = _emitted_members()
    missing = [member.name for member in enum if f"{enum.__name__}.{member.name}" not in emitted]
    assert not missing, f"{enum.__name__} members nothing produces: {missing} (emit them or remove them)"


def test_status_doc_names_both_statuses() -> None:
    doc = str(_field("SegmentResult", ("status",))["doc"])
    assert all(re.search(rf"\b{status.value}\b", doc) for status in ResultStatus)
