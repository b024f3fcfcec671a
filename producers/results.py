"""Read what the workers published: the results topic (and the dead-letter topic) as decoded messages.

:func:`follow_results` is for code (tests, a notebook, a gateway waiting on a handful of ids); ``segpipe-results``
(:func:`main`) prints one summary line or one JSON object per result:

    segpipe-results --max 10
    segpipe-results --format json --no-masks --timeout 5 --request-id 3f2a... --request-id 9bc1...
    segpipe-results --dead-letters

By default a follower reads every partition from the beginning under a fresh group id
(``segpipe-results-<uuid>``) without joining a consumer group: it sees everything, starts at once (no group
rebalance to wait for) and never takes records away from anyone. With an explicit ``group_id`` it subscribes as a
group member instead and commits what it has yielded, so a later follower of that group resumes after it.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import sys
import time
import uuid
from collections.abc import Callable, Generator, Mapping, Sequence
from typing import Any, TypeVar

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaException, TopicPartition
from pydantic import ValidationError

from pipeline.errors import SegmentationError
from schemas import DeadLetter, SegmentResultMessage, result_to_dict
from schemas.registry import WireCodec
from segpipe.config import KafkaSettings
from segpipe.kafka import make_admin, make_consumer
from segpipe.preflight import ServiceUnavailable, check_kafka

__all__ = [
    "dead_letter_to_dict",
    "follow_dead_letters",
    "follow_results",
    "format_dead_letter",
    "format_summary",
    "main",
    "result_to_json_dict",
    "total_ms",
]

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_POLL_S = 0.5
_METADATA_RETRY_S = 0.25
#: timings_ms keys that are not durations, left out when the total is summed from the stages.
_NOT_DURATIONS = frozenset({"batch_size"})


def follow_results(
    settings: KafkaSettings,
    *,
    group_id: str | None = None,
    from_beginning: bool = True,
    max_results: int | None = None,
    timeout_s: float | None = None,
    request_ids: set[str] | None = None,
    topic: str | None = None,
    consumer_config: Mapping[str, Any] | None = None,
    codec: WireCodec | None = None,
) -> Generator[SegmentResultMessage, None, None]:
    """Yield results from ``topic`` (default ``KAFKA_OUTPUT_TOPIC``) as they arrive, decoded.

    Stops after ``max_results`` results, once every id of ``request_ids`` has been seen (only those results are
    yielded, each once), or after ``timeout_s`` seconds without a record, counted from when the partitions were
    assigned so that a slow group join does not eat it (until then: from the start, plus the session timeout when
    joining a group). Without any of them it follows forever. Records that do not decode are logged and skipped.
    The consumer is closed when the iterator ends or is closed. ``consumer_config`` adds librdkafka settings.
    """
    name = topic or settings.output_topic
    wire = codec if codec is not None else WireCodec()
    yield from _follow(
        settings,
        name,
        lambda data: wire.decode_result(data, name),
        lambda msg: msg.request_id,
        group_id=group_id,
        from_beginning=from_beginning,
        max_items=max_results,
        timeout_s=timeout_s,
        request_ids=request_ids,
        consumer_config=consumer_config,
    )


def follow_dead_letters(
    settings: KafkaSettings,
    *,
    group_id: str | None = None,
    from_beginning: bool = True,
    max_results: int | None = None,
    timeout_s: float | None = None,
    request_ids: set[str] | None = None,
    topic: str | None = None,
    consumer_config: Mapping[str, Any] | None = None,
    codec: WireCodec | None = None,
) -> Generator[DeadLetter, None, None]:
    """Like :func:`follow_results`, for the dead-letter topic (default ``KAFKA_DEAD_LETTER_TOPIC``).

    A dead letter whose request id could not be read (``None``) never matches ``request_ids``.
    """
    name = topic or settings.dead_letter_topic
    wire = codec if codec is not None else WireCodec()
    yield from _follow(
        settings,
        name,
        lambda data: wire.decode_dead_letter(data, name),
        lambda dl: dl.request_id,
        group_id=group_id,
        from_beginning=from_beginning,
        max_items=max_results,
        timeout_s=timeout_s,
        request_ids=request_ids,
        consumer_config=consumer_config,
    )


def _follow(
    settings: KafkaSettings,
    topic: str,
    decode: Callable[[bytes], _T],
    request_id_of: Callable[[_T], str | None],
    *,
    group_id: str | None,
    from_beginning: bool,
    max_items: int | None,
    timeout_s: float | None,
    request_ids: set[str] | None,
    consumer_config: Mapping[str, Any] | None,
) -> Generator[_T, None, None]:
    missing = None if request_ids is None else set(request_ids)
    if (max_items is not None and max_items <= 0) or missing == set():
        return
    as_member = group_id is not None
    overrides: dict[str, Any] = {
        "auto.offset.reset": "earliest" if from_beginning else "latest",
        "enable.partition.eof": False,
    }
    if not as_member:
        overrides["enable.auto.commit"] = False  # nothing to resume: a fresh group id every time
    overrides.update(consumer_config or {})
    consumer = make_consumer(settings, group_id or f"segpipe-results-{uuid.uuid4().hex}", **overrides)
    started = time.monotonic()
    # Silence is counted from the assignment; a group join may legitimately take up to about a session timeout
    # (longer on brokers that hold JoinGroup), so until then the clock starts that much later.
    last_activity = started + (settings.session_timeout_ms / 1000.0 if as_member else 0.0)

    def on_assign(_consumer: Consumer, _partitions: list[TopicPartition]) -> None:
        nonlocal last_activity
        last_activity = time.monotonic()

    try:
        if as_member:
            consumer.subscribe([topic], on_assign=on_assign)
        else:
            deadline = None if timeout_s is None else started + timeout_s
            partitions = _wait_for_partitions(consumer, topic, deadline)
            if partitions is None:
                log.warning("topic %s did not appear within %s s", topic, timeout_s)
                return
            offset = OFFSET_BEGINNING if from_beginning else OFFSET_END
            consumer.assign([TopicPartition(topic, p, offset) for p in partitions])
            last_activity = time.monotonic()

        yielded = 0
        while True:
            wait = _POLL_S
            if timeout_s is not None:
                remaining = timeout_s - (time.monotonic() - last_activity)
                if remaining <= 0:
                    return
                wait = min(wait, remaining)
            record = consumer.poll(wait)
            if record is None:
                continue
            error = record.error()
            if error is not None:
                if error.fatal():
                    raise KafkaException(error)
                log.warning("while following %s: %s", topic, error)
                continue
            last_activity = time.monotonic()
            try:
                item = decode(record.value())
            except SegmentationError as exc:
                log.warning(
                    "skipping undecodable record %s[%d]@%d: %s",
                    record.topic(),
                    record.partition(),
                    record.offset(),
                    exc.message,
                )
                item = None
            request_id = None if item is None else request_id_of(item)
            if item is not None and (missing is None or request_id in missing):
                yield item
                yielded += 1
                if missing is not None:
                    missing.discard(request_id)  # type: ignore[arg-type]
            if as_member:
                consumer.store_offsets(record)
            if missing is not None and not missing:
                return
            if max_items is not None and yielded >= max_items:
                return
    finally:
        consumer.close()


def _wait_for_partitions(consumer: Consumer, topic: str, deadline: float | None) -> list[int] | None:
    """The topic's partition ids once its metadata shows any; ``None`` if the deadline passes first."""
    while True:
        try:
            metadata = consumer.list_topics(topic, timeout=5.0).topics.get(topic)
        except KafkaException as exc:
            log.debug("metadata for %s not available yet: %s", topic, exc)
            metadata = None
        if metadata is not None and metadata.error is None and metadata.partitions:
            return sorted(metadata.partitions)
        if deadline is not None and time.monotonic() >= deadline:
            return None
        time.sleep(_METADATA_RETRY_S)


# --- presentation --------------------------------------------------------------------------------------------------


def total_ms(msg: SegmentResultMessage) -> float | None:
    """The result's end-to-end time: its ``total`` timing if the worker gave one, else the sum of its stages."""
    timings = msg.timings_ms
    if not timings:
        return None
    if "total" in timings:
        return float(timings["total"])
    return float(sum(value for key, value in timings.items() if key not in _NOT_DURATIONS))


def format_summary(msg: SegmentResultMessage) -> str:
    """One line per result, ``key=value`` fields after the id and status, ``-`` for what does not apply.

    Always the same fields in the same order, so ``awk``/``grep`` work on the output.
    """
    model = "-" if msg.model is None else str(msg.model)
    if msg.fallback_reason is not None:
        model += f"(fallback={msg.fallback_reason})"
    best = max((mask.predicted_iou for mask in msg.masks), default=None)
    size = "-" if msg.width is None or msg.height is None else f"{msg.width}x{msg.height}"
    total = total_ms(msg)
    fields = [
        msg.request_id,
        str(msg.status),
        f"model={model}",
        f"masks={len(msg.masks)}",
        f"best={'-' if best is None else f'{best:.3f}'}",
        f"cached={'yes' if msg.cached else 'no'}",
        f"size={size}",
        f"total_ms={'-' if total is None else f'{total:.1f}'}",
        f"error={'-' if msg.error is None else msg.error.code}",
    ]
    return "  ".join(fields)


def format_dead_letter(dl: DeadLetter) -> str:
    """One line per dead letter: request id, error code and message, where the original record was."""
    message = " ".join(dl.error.message.split())
    if len(message) > 120:
        message = message[:117] + "..."
    size = "-" if dl.original_value is None else str(len(dl.original_value))
    return "  ".join(
        [
            dl.request_id or "-",
            "dead-letter",
            f"error={dl.error.code}",
            f"from={dl.topic}[{dl.partition}]@{dl.offset}",
            f"value_bytes={size}",
            f"worker={dl.worker_id}",
            f"message={message}",
        ]
    )


def result_to_json_dict(msg: SegmentResultMessage, *, masks: bool = True) -> dict[str, Any]:
    """The result as JSON types (:func:`schemas.result_to_dict`): RLE counts and polygons included unless
    ``masks=False``, which keeps each mask's bbox, area and scores but drops its RLE and polygons."""
    record = result_to_dict(msg)
    if not masks:
        record["masks"] = [
            {key: value for key, value in mask.items() if key not in ("rle", "polygons")} for mask in record["masks"]
        ]
    return record


def dead_letter_to_dict(dl: DeadLetter, *, payload: bool = True) -> dict[str, Any]:
    """A dead letter as JSON types; bytes as base64 (the original value dropped when ``payload=False``)."""

    def b64(data: bytes | None) -> str | None:
        return None if data is None else base64.b64encode(data).decode("ascii")

    record: dict[str, Any] = {
        "request_id": dl.request_id,
        "error": {"code": dl.error.code, "message": dl.error.message},
        "topic": dl.topic,
        "partition": dl.partition,
        "offset": dl.offset,
        "worker_id": dl.worker_id,
        "failed_at_ms": dl.failed_at_ms,
        "original_key_base64": b64(dl.original_key),
        "original_headers": [{"key": h.key, "value_base64": b64(h.value)} for h in dl.original_headers],
        "original_value_bytes": None if dl.original_value is None else len(dl.original_value),
    }
    if payload:
        record["original_value_base64"] = b64(dl.original_value)
    return record


# --- command -------------------------------------------------------------------------------------------------------


class _UsageError(Exception):
    """A bad command line: reported on stderr with exit status 1."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        """Bad arguments exit with status 1 like every other failure of this command (not argparse's 2)."""
        raise _UsageError(message)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="segpipe-results",
        description="Print segpipe results (or dead letters) as they arrive: one summary line or JSON object each.",
        epilog="Kafka client settings come from KAFKA_* variables (KAFKA_BOOTSTRAP_SERVERS, KAFKA_OUTPUT_TOPIC, ...).",
    )
    parser.add_argument("--format", choices=("summary", "json"), default="summary", help="output form (summary)")
    parser.add_argument("--max", type=int, metavar="N", help="stop after N results")
    parser.add_argument("--timeout", type=float, metavar="S", help="stop after S seconds without a record")
    start = parser.add_mutually_exclusive_group()
    start.add_argument("--from-beginning", dest="from_beginning", action="store_true", default=True, help="(default)")
    start.add_argument("--latest", dest="from_beginning", action="store_false", help="only records published from now")
    parser.add_argument("--topic", help="topic (default: KAFKA_OUTPUT_TOPIC, or KAFKA_DEAD_LETTER_TOPIC)")
    parser.add_argument("--bootstrap-servers", metavar="HOST:PORT", help="brokers (default: KAFKA_BOOTSTRAP_SERVERS)")
    parser.add_argument("--group-id", help="follow as a member of this consumer group and commit (default: no group)")
    parser.add_argument(
        "--request-id",
        dest="request_ids",
        action="append",
        metavar="ID",
        help="only these requests (repeatable); stop once all are seen, exit 1 if some are not",
    )
    parser.add_argument(
        "--no-masks", action="store_true", help="JSON without RLE counts and polygons (dead letters: without payload)"
    )
    parser.add_argument("--dead-letters", action="store_true", help="follow the dead-letter topic instead")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``segpipe-results``; returns the exit status (1 on bad arguments or request ids never seen)."""
    parser = _parser()
    try:
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:  # --help
            return int(exc.code or 0) if isinstance(exc.code, int | None) else 1
        if args.max is not None and args.max < 1:
            raise _UsageError(f"--max must be at least 1, got {args.max}")
        overrides = {} if args.bootstrap_servers is None else {"bootstrap_servers": args.bootstrap_servers}
        try:
            settings = KafkaSettings(**overrides)
        except (ValidationError, ValueError) as exc:
            raise _UsageError(f"invalid Kafka configuration (KAFKA_* variables): {exc}") from None
    except _UsageError as exc:
        parser.print_usage(sys.stderr)
        print(f"segpipe-results: error: {exc}", file=sys.stderr)
        return 1

    try:
        check_kafka(settings)  # one line within seconds when there is no broker, and a non-zero exit
    except ServiceUnavailable as exc:
        print(f"segpipe-results: error: {exc}", file=sys.stderr)
        return 1
    if not logging.getLogger().handlers:
        from segpipe.logs import configure_logging

        configure_logging()
    wanted = None if args.request_ids is None else set(args.request_ids)
    follow = follow_dead_letters if args.dead_letters else follow_results
    items = follow(
        settings,
        group_id=args.group_id,
        from_beginning=args.from_beginning,
        max_results=args.max,
        timeout_s=args.timeout,
        request_ids=wanted,
        topic=args.topic,
    )
    seen: set[str] = set()
    try:
        for item in items:
            if item.request_id is not None:
                seen.add(item.request_id)
            print(_render(item, json_format=args.format == "json", masks=not args.no_masks), flush=True)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader (head, less) went away: stop quietly, and keep Python from complaining at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    finally:
        items.close()
    if wanted is not None and wanted - seen:
        print(f"segpipe-results: not seen: {' '.join(sorted(wanted - seen))}", file=sys.stderr)
        return 1
    name = args.topic or (settings.dead_letter_topic if args.dead_letters else settings.output_topic)
    if not seen and not _topic_exists(settings, name):
        print(f"segpipe-results: error: topic {name} does not exist on {settings.bootstrap_servers}", file=sys.stderr)
        return 1
    return 0


def _topic_exists(settings: KafkaSettings, name: str) -> bool:
    """Whether ``name`` exists, so that following a topic that never appeared is a failure (exit 1)."""
    try:
        # All topics: a metadata request naming the topic may create it on brokers that auto-create topics.
        topic = make_admin(settings).list_topics(timeout=5).topics.get(name)
    except KafkaException:
        return False
    return topic is not None and topic.error is None and bool(topic.partitions)


def _render(item: SegmentResultMessage | DeadLetter, *, json_format: bool, masks: bool) -> str:
    if isinstance(item, DeadLetter):
        return json.dumps(dead_letter_to_dict(item, payload=masks)) if json_format else format_dead_letter(item)
    return json.dumps(result_to_json_dict(item, masks=masks)) if json_format else format_summary(item)


if __name__ == "__main__":
    raise SystemExit(main())
