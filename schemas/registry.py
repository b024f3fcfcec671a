"""Wire codec: plain schemaless Avro, or Confluent Schema Registry framing when a registry is configured.

With ``SCHEMA_REGISTRY_URL`` set, requests, results and dead letters are written in the registry wire format
(magic byte 0 + schema id + Avro) by confluent-kafka's own ``AvroSerializer`` under the topic's ``<topic>-value``
subject, so Java, ksqlDB and Kafka Connect consumers read them with their stock deserializers. Without it, the plain
schemaless Avro of :mod:`schemas.avro` is used. Readers accept both: a registry-framed value starts with the
magic byte 0. Plain requests and results never do (they start with a non-empty request id's length); a plain dead
letter with no request id does, so a value starting with 0 that the registry cannot read is tried as plain Avro.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from confluent_kafka.serialization import MessageField, SerializationContext
from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from pipeline.errors import MalformedRequestError, SegmentationError
from schemas import avro
from schemas.messages import DeadLetter, SegmentRequest, SegmentResultMessage

_T = TypeVar("_T")

MAGIC_BYTE = 0


class RegistrySettings(BaseSettings):
    """Confluent Schema Registry. Environment: SCHEMA_REGISTRY_URL (``mock://name`` for tests), ..._USER_INFO."""

    model_config = SettingsConfigDict(
        env_prefix="SCHEMA_REGISTRY_", extra="ignore", frozen=True, hide_input_in_errors=True
    )

    url: str | None = None
    basic_auth_user_info: SecretStr | None = None  # key:secret; shown as ********** in dumps and logs
    auto_register_schemas: bool = True

    def client_config(self) -> dict[str, Any]:
        """The registry client's configuration: the one place the basic-auth secret is unwrapped."""
        config: dict[str, Any] = {"url": self.url}
        if self.basic_auth_user_info is not None and self.basic_auth_user_info.get_secret_value():
            config["basic.auth.credentials.source"] = "USER_INFO"
            config["basic.auth.user.info"] = self.basic_auth_user_info.get_secret_value()
        return config


@dataclass(frozen=True)
class _Kind:
    """How one message type maps to Avro records."""

    schema_name: str
    to_record: Callable[[Any], dict[str, Any]]
    from_record: Callable[[dict[str, Any]], Any]
    plain_encode: Callable[[Any], bytes]
    plain_decode: Callable[[bytes], Any]


_KINDS = {
    "request": _Kind(
        "SegmentRequest", avro._request_record, avro._request_from_record, avro.encode_request, avro.decode_request
    ),
    "result": _Kind(
        "SegmentResult", avro._result_record, avro._result_from_record, avro.encode_result, avro.decode_result
    ),
    "dead_letter": _Kind(
        "DeadLetter",
        avro._dead_letter_record,
        avro._dead_letter_from_record,
        avro.encode_dead_letter,
        avro.decode_dead_letter,
    ),
}


class WireCodec:
    """Encode/decode every message type for a topic, with or without the registry. Thread-safe."""

    def __init__(self, settings: RegistrySettings | None = None, *, client: Any = None) -> None:
        self.settings = settings or RegistrySettings()
        self._serializers: dict[str, Any] = {}
        self._deserializers: dict[str, Any] = {}
        self.client = client
        if self.client is None and self.settings.url:
            from confluent_kafka.schema_registry import SchemaRegistryClient

            self.client = SchemaRegistryClient.new_client(self.settings.client_config())
        if self.client is not None:
            from confluent_kafka.schema_registry import topic_subject_name_strategy
            from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer

            for name, kind in _KINDS.items():
                self._serializers[name] = AvroSerializer(
                    self.client,
                    avro.schema_text(kind.schema_name),
                    to_dict=lambda obj, _ctx, kind=kind: kind.to_record(obj),
                    conf={
                        "auto.register.schemas": self.settings.auto_register_schemas,
                        "subject.name.strategy": topic_subject_name_strategy,
                    },
                )
                self._deserializers[name] = AvroDeserializer(self.client)

    @property
    def uses_registry(self) -> bool:
        return self.client is not None

    def _encode(self, name: str, message: Any, topic: str) -> bytes:
        if not self.uses_registry:
            return _KINDS[name].plain_encode(message)
        return self._serializers[name](message, SerializationContext(topic, MessageField.VALUE))

    def _decode(self, name: str, data: bytes, topic: str) -> Any:
        kind = _KINDS[name]
        if not (self.uses_registry and data and data[0] == MAGIC_BYTE):
            try:
                return kind.plain_decode(data)
            except MalformedRequestError as exc:
                if not self.uses_registry and looks_registry_framed(data):
                    raise MalformedRequestError(
                        f"{kind.schema_name} looks like Schema Registry framing (magic byte 0 + 4-byte schema id) "
                        "and this process has no registry: set SCHEMA_REGISTRY_URL"
                    ) from exc
                raise
        try:
            record = self._deserializers[name](data, SerializationContext(topic, MessageField.VALUE))
        except Exception as exc:  # noqa: BLE001 - the registry client raises many types; fall back to plain
            try:
                return kind.plain_decode(data)
            except SegmentationError:
                raise MalformedRequestError(f"{kind.schema_name} in registry format cannot be read: {exc}") from exc
        return _convert(kind.schema_name, kind.from_record, record)

    def encode_request(self, request: SegmentRequest, topic: str) -> bytes:
        return self._encode("request", request, topic)

    def decode_request(self, data: bytes, topic: str) -> SegmentRequest:
        return self._decode("request", data, topic)

    def encode_result(self, result: SegmentResultMessage, topic: str) -> bytes:
        return self._encode("result", result, topic)

    def decode_result(self, data: bytes, topic: str) -> SegmentResultMessage:
        return self._decode("result", data, topic)

    def encode_dead_letter(self, dead_letter: DeadLetter, topic: str) -> bytes:
        return self._encode("dead_letter", dead_letter, topic)

    def decode_dead_letter(self, data: bytes, topic: str) -> DeadLetter:
        return self._decode("dead_letter", data, topic)


def looks_registry_framed(data: bytes | None) -> bool:
    """Magic byte 0 then a 4-byte schema id and a body: the Confluent wire format."""
    return bool(data) and len(data) > 5 and data[0] == MAGIC_BYTE  # type: ignore[index]


def _convert(what: str, build: Callable[[dict[str, Any]], _T], record: Any) -> _T:
    if not isinstance(record, dict):
        raise MalformedRequestError(f"{what}: expected a record, got {type(record).__name__}")
    try:
        return build(record)
    except SegmentationError:
        raise
    except Exception as exc:
        raise MalformedRequestError(f"{what} has invalid content: {type(exc).__name__}: {exc}") from exc


PLAIN = WireCodec(RegistrySettings(url=None))
