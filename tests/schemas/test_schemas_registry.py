"""Schema Registry wire format through confluent-kafka's own serializers, against its mock registry."""

from __future__ import annotations

import uuid

import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

from pipeline.errors import MalformedRequestError
from pipeline.types import RLE, MaskRecord, ModelChoice, ModelName, Prompts, SegmentParams
from schemas import DeadLetter, ErrorInfo, Header, SegmentRequest, SegmentResultMessage
from schemas.registry import PLAIN, RegistrySettings, WireCodec


def _codec() -> WireCodec:
    return WireCodec(RegistrySettings(url=f"mock://{uuid.uuid4().hex}"))


def _result() -> SegmentResultMessage:
    mask = MaskRecord(RLE((4, 6), "52203"), ((1.0, 1.0, 4.0, 1.0, 4.0, 2.0),), (1.0, 1.0, 3.0, 1.0), 8, 0.9, 0.95)
    return SegmentResultMessage(
        request_id="r-1", status="ok", image_sha256="ab", width=6, height=4, inference_width=6, inference_height=4,
        model=ModelName.SAM2, fallback_reason=None, fallback_detail=None, cached=False, masks=(mask,),
        timings_ms={"sam2": 12.5}, error=None, worker_id="w", source="x.png", created_at_ms=1_700_000_000_000,
    )  # fmt: skip


def test_every_message_round_trips_in_registry_framing_and_registers_topic_subjects() -> None:
    codec = _codec()
    request = SegmentRequest(
        "r-1", b"\x89PNG", Prompts(points=((1.0, 2.0),), point_labels=(1,)), SegmentParams(model=ModelChoice.SAM2)
    )
    dead = DeadLetter(None, ErrorInfo("invalid_image", "bad"), b"v", b"k", (Header("h", b"1"),), "in", 2, 7, "w", 5)
    for encode, decode, message, topic in (
        (codec.encode_request, codec.decode_request, request, "segpipe.requests"),
        (codec.encode_result, codec.decode_result, _result(), "segpipe.results"),
        (codec.encode_dead_letter, codec.decode_dead_letter, dead, "segpipe.dead-letter"),
    ):
        data = encode(message, topic)
        assert data[0] == 0, "Confluent wire format: magic byte 0, then the schema id"
        assert decode(data, topic) == message
    assert set(codec.client.get_subjects()) == {
        "segpipe.requests-value",
        "segpipe.results-value",
        "segpipe.dead-letter-value",
    }


def test_a_stock_confluent_deserializer_reads_our_results_without_segpipe_code() -> None:
    """What a Java/ksqlDB/Connect consumer does: look the schema up by id and decode; no segpipe code involved."""
    codec = _codec()
    data = codec.encode_result(_result(), "segpipe.results")
    record = AvroDeserializer(codec.client)(data, SerializationContext("segpipe.results", MessageField.VALUE))
    assert record["request_id"] == "r-1" and record["model"] == "sam2"
    assert record["masks"][0]["rle"] == {"size": [4, 6], "counts": "52203"}
    registered = codec.client.get_latest_version("segpipe.results-value")
    assert "io.segpipe.v1" in registered.schema.schema_str


def test_readers_accept_plain_avro_too_and_plain_codec_never_frames() -> None:
    codec = _codec()
    plain = PLAIN.encode_result(_result(), "t")
    assert plain[0] != 0
    assert codec.decode_result(plain, "t") == _result(), "a registry-enabled reader still reads plain records"
    assert not PLAIN.uses_registry
    dead = DeadLetter(None, ErrorInfo("x", "y"), None, None, (), "t", 0, 0, "w", 1)
    framed_looking = PLAIN.encode_dead_letter(dead, "t")
    assert framed_looking[0] == 0, "a plain dead letter without request id starts with byte 0..."
    assert codec.decode_dead_letter(framed_looking, "t") == dead, "...and is still read correctly"


def test_garbage_in_registry_framing_is_a_typed_error() -> None:
    codec = _codec()
    with pytest.raises(MalformedRequestError):
        codec.decode_result(b"\x00\x00\x00\x00\x63garbage", "t")


def test_registry_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCHEMA_REGISTRY_URL", "https://registry.example:8081")
    monkeypatch.setenv("SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO", "key:secret")
    config = RegistrySettings().client_config()
    assert config == {
        "url": "https://registry.example:8081",
        "basic.auth.credentials.source": "USER_INFO",
        "basic.auth.user.info": "key:secret",
    }
    assert isinstance(SchemaRegistryClient.new_client({"url": "mock://x"}), SchemaRegistryClient)
