"""Wire formats of segpipe: Avro schemas (shipped as ``*.avsc`` package data), message dataclasses and codecs.

* :mod:`schemas.messages` - frozen dataclasses of what travels on Kafka, built on the core's types;
* :mod:`schemas.avro` - schemaless Avro encode/decode, with the evolution rule that keeps old and new readers safe;
* :mod:`schemas.headers` - the "bare" request (image as value, parameters as headers) any Kafka client can send.
"""

from __future__ import annotations

from .avro import (
    DEAD_LETTER_SCHEMA,
    REQUEST_SCHEMA,
    RESULT_SCHEMA,
    decode_dead_letter,
    decode_request,
    decode_result,
    encode_dead_letter,
    encode_request,
    encode_result,
    peek_request_envelope,
    result_from_dict,
    result_to_dict,
    schema_text,
)
from .headers import (
    BARE_HEADERS,
    FORMAT_AVRO,
    FORMAT_HEADER,
    is_avro_request,
    parse_bare_request,
    parse_model,
    peek_bare_envelope,
    prompts_from_lists,
    request_headers,
)
from .messages import (
    DeadLetter,
    ErrorInfo,
    Header,
    RequestEnvelope,
    RequestOrigin,
    ResultStatus,
    SegmentRequest,
    SegmentResultMessage,
    headers_from_kafka,
    now_ms,
)

__all__ = [
    "BARE_HEADERS",
    "DEAD_LETTER_SCHEMA",
    "FORMAT_AVRO",
    "FORMAT_HEADER",
    "REQUEST_SCHEMA",
    "RESULT_SCHEMA",
    "DeadLetter",
    "ErrorInfo",
    "Header",
    "RequestEnvelope",
    "RequestOrigin",
    "ResultStatus",
    "SegmentRequest",
    "SegmentResultMessage",
    "decode_dead_letter",
    "decode_request",
    "decode_result",
    "encode_dead_letter",
    "encode_request",
    "encode_result",
    "headers_from_kafka",
    "is_avro_request",
    "now_ms",
    "parse_bare_request",
    "parse_model",
    "peek_bare_envelope",
    "peek_request_envelope",
    "prompts_from_lists",
    "request_headers",
    "result_from_dict",
    "result_to_dict",
    "schema_text",
]
