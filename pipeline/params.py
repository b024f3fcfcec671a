"""The one specification of per-request parameters, from which every door derives its handling.

:class:`SegmentParams` is a frozen pydantic model: each field's type, range and doc live here once. The doors
derive from it rather than list the fields again:

* Avro: the ``params`` record of ``segment_request.avsc`` has one field per spec field, same name (a test checks the
  names and types agree); :mod:`schemas.avro` maps by :data:`PARAM_NAMES`;
* headers: ``segpipe-<name with dashes>`` (:func:`header_name`), values as text, read by :func:`params_from_text`
  and written by :func:`param_text`;
* CLI: ``--<name with dashes>`` (:func:`cli_flag`), help from the field's doc, value text read by
  :func:`params_from_text`;
* HTTP: JSON/form field ``<name>``, typed values given to :func:`params_from_values`.

Validation happens on construction, and every door reports a bad value with the same
:class:`~pipeline.errors.InvalidParametersError` message: ``"<name> must be <rule>, got <value>"``.
``None`` means "the worker's configured default"; the engine's ``resolve_params`` fills defaults and validates again.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from enum import StrEnum
from typing import Annotated, Any

from annotated_types import Ge, Le, MultipleOf
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic.fields import FieldInfo

from pipeline.errors import InvalidParametersError

__all__ = [
    "HEADER_PREFIX",
    "PARAM_NAMES",
    "ModelChoice",
    "SegmentParams",
    "cli_flag",
    "header_name",
    "param_doc",
    "param_kind",
    "param_rule",
    "param_text",
    "params_from_text",
    "params_from_values",
]

HEADER_PREFIX = "segpipe-"
_TRUE = frozenset({"true", "1"})
_FALSE = frozenset({"false", "0"})


class ModelChoice(StrEnum):
    """Which model a request allows: ``auto`` is FastSAM first with SAM2 as fallback."""

    AUTO = "auto"
    FASTSAM = "fastsam"
    SAM2 = "sam2"


class _Refused(ValueError):
    """A value of the wrong kind; turned into the field's one message by :class:`SegmentParams`."""


def _real(value: object) -> object:
    """Real numbers only (numpy's included): a string or a bool is not a number here, whatever pydantic's lax mode
    would make of it. NaN and infinities pass to the range check, which names them."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _Refused
    return float(value)


def _integer(value: object) -> object:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise _Refused
    return int(value)


def _flag(value: object) -> object:
    """JSON true/false (numpy's bool too), or 0/1 as a header may send them."""
    if value is None or isinstance(value, bool):
        return value
    if type(value).__name__ == "bool_" or (isinstance(value, numbers.Integral) and int(value) in (0, 1)):
        return bool(value)
    raise _Refused


def _model(value: object) -> object:
    """Case and surrounding spaces are forgiven (``" SAM2 "`` is ``sam2``): headers and forms are typed by people."""
    if value is None:
        return ModelChoice.AUTO
    if isinstance(value, str):
        try:
            return ModelChoice(value.strip().lower())
        except ValueError:
            raise _Refused from None
    raise _Refused


Real = Annotated[float | None, BeforeValidator(_real)]
Integer = Annotated[int | None, BeforeValidator(_integer)]
Flag = Annotated[bool | None, BeforeValidator(_flag)]


class SegmentParams(BaseModel):
    """Per-request parameters that shape the result (and therefore take part in the dedup key).

    ``None`` means "use the worker's configured default". Construction validates every field and raises
    :class:`~pipeline.errors.InvalidParametersError` naming the first bad one.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=False)

    model: Annotated[ModelChoice, BeforeValidator(_model)] = Field(
        ModelChoice.AUTO,
        description="Which model may answer: auto (FastSAM first, SAM2 as fallback), fastsam or sam2.",
    )
    conf: Real = Field(None, ge=0.0, le=1.0, description="FastSAM confidence threshold.")
    iou: Real = Field(None, ge=0.0, le=1.0, description="FastSAM NMS IoU threshold.")
    imgsz: Integer = Field(None, ge=32, le=4096, multiple_of=32, description="FastSAM inference size in pixels.")
    max_contours: Integer = Field(None, ge=1, le=1000, description="Polygons kept per mask, largest first.")
    mask_post_processing: Flag = Field(None, description="Remove specks and fill small holes in masks.")
    fallback_min_score: Real = Field(
        None, ge=0.0, le=1.0, description="SAM2 takes over when FastSAM's best predicted_iou is below this."
    )

    def __init__(self, *args: Any, **values: Any) -> None:
        """Keywords, or positional values in spec order (as the dataclass this model replaced took them)."""
        names = tuple(type(self).model_fields)
        if len(args) > len(names):
            raise InvalidParametersError(f"SegmentParams takes at most {len(names)} values, got {len(args)}")
        values.update(zip(names, args, strict=False))
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise InvalidParametersError(_message(exc)) from None


#: The parameters in spec order: the Avro ``Params`` record's field order too.
PARAM_NAMES: tuple[str, ...] = tuple(SegmentParams.model_fields)


def _field(name: str) -> FieldInfo:
    try:
        return SegmentParams.model_fields[name]
    except KeyError:
        raise InvalidParametersError(f"unknown parameter {name!r}: expected one of {', '.join(PARAM_NAMES)}") from None


def param_kind(name: str) -> str:
    """``"float"``, ``"int"``, ``"bool"`` or ``"model"``: how the text doors parse the field."""
    if name == "model":
        return "model"
    annotation = _field(name).annotation
    for kind, python in (("bool", bool), ("int", int), ("float", float)):
        if annotation == python | None:
            return kind
    raise TypeError(f"parameter {name} has an unsupported type {annotation}")  # pragma: no cover - guards the spec


def param_doc(name: str) -> str:
    return _field(name).description or ""


def _bounds(name: str) -> tuple[float | None, float | None, int | None]:
    low = high = step = None
    for item in _field(name).metadata:
        if isinstance(item, Ge):
            low = item.ge
        elif isinstance(item, Le):
            high = item.le
        elif isinstance(item, MultipleOf):
            step = item.multiple_of
    return low, high, step  # type: ignore[return-value]


def param_rule(name: str) -> str:
    """What a valid value is, in words derived from the spec: ``"an integer in [32, 4096], a multiple of 32"``."""
    kind = param_kind(name)
    if kind == "model":
        return "one of " + ", ".join(choice.value for choice in ModelChoice)
    if kind == "bool":
        return "true or false"
    low, high, step = _bounds(name)
    rule = "a number" if kind == "float" else "an integer"
    if low is not None and high is not None:
        rule += f" in [{low:g}, {high:g}]"
    if step is not None:
        rule += f", a multiple of {step}"
    return rule


def header_name(name: str) -> str:
    """The Kafka header of a parameter on the bare path: ``imgsz`` -> ``segpipe-imgsz``."""
    _field(name)
    return HEADER_PREFIX + name.replace("_", "-")


def cli_flag(name: str) -> str:
    """The command-line flag of a parameter: ``max_contours`` -> ``--max-contours``."""
    _field(name)
    return "--" + name.replace("_", "-")


def _shown(value: object) -> str:
    text = repr(value.value if isinstance(value, StrEnum) else value)
    return text if len(text) <= 80 else text[:77] + "..."


def _message(exc: ValidationError) -> str:
    error = exc.errors(include_url=False)[0]
    name = str(error["loc"][0]) if error["loc"] else "params"
    if error["type"] == "extra_forbidden":
        return f"unknown parameter {name!r}: expected one of {', '.join(PARAM_NAMES)}"
    return f"{name} must be {param_rule(name)}, got {_shown(error.get('input'))}"


def params_from_values(values: Mapping[str, Any]) -> SegmentParams:
    """Parameters from typed values (JSON, Avro, Python); ``None`` and absent fields mean the worker's default."""
    return SegmentParams(**{name: value for name, value in values.items() if value is not None})


def _from_text(name: str, text: str) -> object:
    """One parameter's text (header, CLI, environment) as the typed value the spec then validates."""
    kind = param_kind(name)
    stripped = text.strip()
    if kind == "model":
        return stripped
    if kind == "bool":
        word = stripped.lower()
        if word in _TRUE or word in _FALSE:
            return word in _TRUE
        return text  # refused by the spec, with the spec's message
    if kind == "int":
        digits = stripped[1:] if stripped[:1] in ("+", "-") else stripped
        if digits.isascii() and digits.isdigit() and len(digits) <= 20:
            return int(stripped)
        return text
    try:
        return float(stripped)
    except ValueError:
        return text


def params_from_text(texts: Mapping[str, str | None]) -> SegmentParams:
    """Parameters from text values by parameter name (the header and CLI doors); ``None`` means absent."""
    return params_from_values({name: _from_text(name, text) for name, text in texts.items() if text is not None})


def param_text(params: SegmentParams, name: str) -> str | None:
    """A parameter as the text :func:`params_from_text` reads back exactly; ``None`` when unset."""
    value = getattr(params, name)
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, StrEnum):
        return value.value
    return repr(value)  # repr round-trips floats exactly (nan and inf included)
