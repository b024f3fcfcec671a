"""The "bare message" path: a request any Kafka client (kcat, a Java producer...) can publish without Avro.

The record value is the image itself (encoded image bytes, base64 text or .npy bytes, passed to the core untouched)
and every parameter is an optional header. A record carrying ``segpipe-format: avro-v1`` is an Avro
``SegmentRequest`` instead (see :func:`is_avro_request`). For example::

    kcat -P -b broker:9092 -t segment-requests -H segpipe-request-id=r1 -H segpipe-model=sam2 \\
         -H 'segpipe-points=[[120,80]]' -H segpipe-reply-to=my-replies cat.jpg

Header values must be UTF-8. Parameters are read and validated by the one spec (:mod:`pipeline.params`), so a bad
value gets the same message here as through Avro, the CLI or HTTP; prompt values (finite, inside the image...) are
the core's to check, so both paths share one rule.
"""

from __future__ import annotations

import json
import numbers
from collections.abc import Sequence

from pipeline.errors import InvalidPromptError, MalformedRequestError
from pipeline.params import HEADER_PREFIX, PARAM_NAMES, ModelChoice, header_name, param_text, params_from_text
from pipeline.types import Prompts, SegmentParams

from .messages import RequestEnvelope, SegmentRequest

FORMAT_HEADER = "segpipe-format"
FORMAT_AVRO = b"avro-v1"

REQUEST_ID_HEADER = "segpipe-request-id"
#: Parameter headers, derived from the spec (:func:`pipeline.params.header_name`): ``segpipe-<name with dashes>``.
PARAM_HEADERS: dict[str, str] = {name: header_name(name) for name in PARAM_NAMES}
MODEL_HEADER = PARAM_HEADERS["model"]
CONF_HEADER = PARAM_HEADERS["conf"]
IOU_HEADER = PARAM_HEADERS["iou"]
IMGSZ_HEADER = PARAM_HEADERS["imgsz"]
MAX_CONTOURS_HEADER = PARAM_HEADERS["max_contours"]
MASK_POST_PROCESSING_HEADER = PARAM_HEADERS["mask_post_processing"]
FALLBACK_MIN_SCORE_HEADER = PARAM_HEADERS["fallback_min_score"]
POINTS_HEADER = "segpipe-points"
POINT_LABELS_HEADER = "segpipe-point-labels"
BOXES_HEADER = "segpipe-boxes"
SOURCE_HEADER = "segpipe-source"
REPLY_TO_HEADER = "segpipe-reply-to"

#: Every ``segpipe-*`` header a bare request may carry; any other ``segpipe-*`` header is refused, so that a typo
#: (``segpipe-modle``) fails loudly instead of silently running with defaults.
BARE_HEADERS: frozenset[str] = frozenset(
    {
        FORMAT_HEADER,
        REQUEST_ID_HEADER,
        *PARAM_HEADERS.values(),
        POINTS_HEADER,
        POINT_LABELS_HEADER,
        BOXES_HEADER,
        SOURCE_HEADER,
        REPLY_TO_HEADER,
    }
)

_PREFIX = HEADER_PREFIX

KafkaHeaders = Sequence[tuple[str, bytes | str | None]] | None
"""Headers as Kafka clients give them: ``(key, value)`` pairs in order, or ``None`` when there are none."""


def parse_model(value: str) -> ModelChoice:
    """The wire's model string as the core's enum; unknown values are a parameter error, not a decoding one.

    Case and surrounding spaces are forgiven (``" SAM2 "`` is ``sam2``) because the bare path is typed by people.
    """
    return SegmentParams(model=value).model


def prompts_from_lists(
    points: object,
    labels: object,
    boxes: object,
    *,
    names: tuple[str, str, str] = ("points", "point_labels", "boxes"),
) -> Prompts:
    """Check the structural shape of prompts and build :class:`Prompts`; shared by the Avro and bare paths.

    Each point must be 2 numbers, each box 4, labels 0 or 1 and either empty or one per point; ``None`` means
    none. Values are not judged (NaN, negative, outside the image): the core does that for both paths, so NaN
    and infinities are kept as floats for it to refuse. ``names`` labels the three inputs in error messages
    (the bare path passes its header names).
    """
    points_name, labels_name, boxes_name = names
    parsed_points = tuple(_coords(item, 2, f"{points_name}[{i}]") for i, item in enumerate(_items(points, points_name)))
    parsed_boxes = tuple(_coords(item, 4, f"{boxes_name}[{i}]") for i, item in enumerate(_items(boxes, boxes_name)))
    parsed_labels = tuple(_label(item, f"{labels_name}[{i}]") for i, item in enumerate(_items(labels, labels_name)))
    if parsed_labels and len(parsed_labels) != len(parsed_points):
        raise InvalidPromptError(
            f"{labels_name} has {len(parsed_labels)} labels for {len(parsed_points)} points: "
            "give one label per point, or none for all foreground"
        )
    return Prompts(points=parsed_points, point_labels=parsed_labels, boxes=parsed_boxes)  # type: ignore[arg-type]


def _items(value: object, name: str) -> Sequence[object]:
    """A JSON array (list) or Python sequence of prompts; a string or a mapping is a shape error, not a list."""
    if value is None:
        return ()
    if isinstance(value, list | tuple):
        return value
    raise InvalidPromptError(f"{name} must be a list, got {type(value).__name__}")


def _coords(item: object, arity: int, name: str) -> tuple[float, ...]:
    """One point (2 numbers) or box (4 numbers) as floats; booleans are not numbers here."""
    shape = "[x, y]" if arity == 2 else "[x1, y1, x2, y2]"
    if not isinstance(item, list | tuple) or len(item) != arity:
        raise InvalidPromptError(f"{name} must be {shape} ({arity} numbers), got {item!r:.80}")
    return tuple(_number(v, name) for v in item)


def _number(value: object, name: str) -> float:
    """A real number as a float, NaN and infinities included (the core refuses them, not the codec)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidPromptError(f"{name} must contain numbers, got {value!r:.80}")
    try:
        return float(value)
    except (OverflowError, ValueError, TypeError):
        raise InvalidPromptError(f"{name} has a number too large for a double: {value!r:.80}") from None


def _label(value: object, name: str) -> int:
    """A point label: exactly the integer 0 (background) or 1 (foreground)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) not in (0, 1):
        raise InvalidPromptError(f"{name} must be 0 (background) or 1 (foreground), got {value!r:.80}")
    return int(value)


def _segpipe_headers(headers: KafkaHeaders) -> dict[str, bytes]:
    """The ``segpipe-*`` headers by lower-case key; other headers (tracing, ...) are ignored.

    A header with a null value counts as absent. A repeated or unknown ``segpipe-*`` header is refused: which
    copy wins would be a guess, and an unknown one is most likely a typo.
    """
    found: dict[str, bytes] = {}
    for raw_key, value in headers or ():
        if not isinstance(raw_key, str):
            raise MalformedRequestError(f"header key must be a string, got {type(raw_key).__name__}")
        key = raw_key.lower()
        if not key.startswith(_PREFIX) or value is None:
            continue
        if key not in BARE_HEADERS:
            raise MalformedRequestError(
                f"unknown header {raw_key!r}: expected one of {', '.join(sorted(BARE_HEADERS))}"
            )
        if key in found:
            raise MalformedRequestError(f"header {key} is given more than once")
        if isinstance(value, str):
            value = value.encode("utf-8")
        if not isinstance(value, bytes | bytearray | memoryview):
            raise MalformedRequestError(f"header {key} must be bytes, got {type(value).__name__}")
        found[key] = bytes(value)
    return found


def _text(found: dict[str, bytes], key: str) -> str | None:
    """A header's value as text; header values are UTF-8 by contract."""
    raw = found.get(key)
    if raw is None:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedRequestError(f"header {key} is not valid UTF-8") from None


def _json(found: dict[str, bytes], key: str) -> object:
    """An optional JSON header (prompts); NaN and Infinity literals are accepted and become floats."""
    text = _text(found, key)
    if text is None:
        return None
    try:
        return json.loads(text)
    except RecursionError:
        raise MalformedRequestError(f"header {key} is nested too deeply to be a prompt list") from None
    except ValueError as exc:
        raise MalformedRequestError(f"header {key} is not valid JSON: {exc}") from None


def parse_bare_request(
    value: bytes | None,
    headers: KafkaHeaders,
    *,
    fallback_request_id: str,
) -> SegmentRequest:
    """A :class:`SegmentRequest` from a bare record: the value is the image, the headers the parameters.

    ``fallback_request_id`` names the request when ``segpipe-request-id`` is absent (the worker passes something
    unique such as ``topic:partition:offset``). ``submitted_at_ms`` is left at 0: a bare record carries no
    submission time; the worker may use the Kafka timestamp. Raises :class:`MalformedRequestError` for an
    unreadable record or header, :class:`InvalidParametersError` for a bad parameter value and
    :class:`InvalidPromptError` for badly shaped prompts, each naming the header.
    """
    found = _segpipe_headers(headers)
    fmt = found.get(FORMAT_HEADER)
    if fmt is not None:
        shown = fmt.decode("utf-8", "replace")
        if fmt.strip() == FORMAT_AVRO:
            raise MalformedRequestError(f"header {FORMAT_HEADER} is {shown!r}: decode this record as Avro")
        raise MalformedRequestError(
            f"header {FORMAT_HEADER} has unsupported value {shown!r:.80}: "
            f"expected {FORMAT_AVRO.decode()}, or no such header for a bare image"
        )
    if value is None:
        raise MalformedRequestError("record has no value (tombstone): a bare request's value is the image")
    if not isinstance(value, bytes | bytearray | memoryview):
        raise MalformedRequestError(f"record value must be bytes, got {type(value).__name__}")

    request_id = _text(found, REQUEST_ID_HEADER)
    if request_id is None:
        request_id = fallback_request_id
    if not request_id:
        raise MalformedRequestError(f"header {REQUEST_ID_HEADER} is empty")

    params = params_from_text({name: _text(found, header) for name, header in PARAM_HEADERS.items()})
    prompts = prompts_from_lists(
        _json(found, POINTS_HEADER),
        _json(found, POINT_LABELS_HEADER),
        _json(found, BOXES_HEADER),
        names=(POINTS_HEADER, POINT_LABELS_HEADER, BOXES_HEADER),
    )
    return SegmentRequest(
        request_id=request_id,
        image=bytes(value),
        prompts=prompts,
        params=params,
        source=_text(found, SOURCE_HEADER),
        reply_to=_text(found, REPLY_TO_HEADER),
    )


def peek_bare_envelope(headers: KafkaHeaders, *, fallback_request_id: str) -> RequestEnvelope:
    """Request id, source and reply topic of a bare record whose parsing failed, read leniently; never raises.

    So the worker can still send the error result to the gateway waiting on ``segpipe-reply-to``.
    """
    found: dict[str, str] = {}
    for key, value in headers or ():
        if not isinstance(key, str) or value is None:
            continue
        lowered = key.lower()
        if lowered in (REQUEST_ID_HEADER, SOURCE_HEADER, REPLY_TO_HEADER) and lowered not in found:
            try:
                found[lowered] = value if isinstance(value, str) else bytes(value).decode("utf-8")
            except (UnicodeDecodeError, TypeError, ValueError):
                continue
    return RequestEnvelope(
        request_id=found.get(REQUEST_ID_HEADER) or fallback_request_id,
        source=found.get(SOURCE_HEADER),
        reply_to=found.get(REPLY_TO_HEADER),
    )


def is_avro_request(headers: KafkaHeaders) -> bool:
    """True when the record says it is an Avro ``SegmentRequest`` (``segpipe-format: avro-v1``); never raises."""
    for key, value in headers or ():
        if isinstance(key, str) and key.lower() == FORMAT_HEADER and value is not None:
            raw = value.encode("utf-8") if isinstance(value, str) else value
            if isinstance(raw, bytes | bytearray | memoryview) and bytes(raw).strip() == FORMAT_AVRO:
                return True
    return False


def param_headers(params: SegmentParams) -> list[tuple[str, bytes]]:
    """The parameter headers of a bare request, derived from the spec; unset parameters are left out so the worker's
    defaults apply (``model`` is always written)."""
    texts = ((PARAM_HEADERS[name], param_text(params, name)) for name in PARAM_NAMES)
    return [(header, text.encode("utf-8")) for header, text in texts if text is not None]


def request_headers(req: SegmentRequest) -> list[tuple[str, bytes]]:
    """Headers the producer sets on an Avro request: the format marker, and the id for tools that only read headers."""
    return [(FORMAT_HEADER, FORMAT_AVRO), (REQUEST_ID_HEADER, req.request_id.encode("utf-8"))]


__all__ = [
    "BARE_HEADERS",
    "BOXES_HEADER",
    "CONF_HEADER",
    "FALLBACK_MIN_SCORE_HEADER",
    "FORMAT_AVRO",
    "FORMAT_HEADER",
    "IMGSZ_HEADER",
    "IOU_HEADER",
    "MASK_POST_PROCESSING_HEADER",
    "MAX_CONTOURS_HEADER",
    "MODEL_HEADER",
    "PARAM_HEADERS",
    "POINTS_HEADER",
    "POINT_LABELS_HEADER",
    "REPLY_TO_HEADER",
    "REQUEST_ID_HEADER",
    "SOURCE_HEADER",
    "KafkaHeaders",
    "is_avro_request",
    "param_headers",
    "parse_bare_request",
    "parse_model",
    "peek_bare_envelope",
    "prompts_from_lists",
    "request_headers",
]
