"""``segpipe lag``: how far the workers' consumer group is behind, per partition, and who is in the group.

Lag of a partition = end offset - committed offset (the earliest offset when the group has committed nothing
there): the records published and not yet acknowledged by a worker, which is what KEDA's Kafka scaler scales on.
:func:`lag_from_statistics` is the same from inside a consumer (librdkafka's statistics), for the workers'
``segpipe_consumer_lag`` gauge.

On the local broker (tansu 0.6) the end offsets from ListOffsets are wrong when a record batch holds several
records (see ``/work/shared/INFRA.md``): there the figure is exact only for records produced one per batch. A
consumer's high watermark comes from fetch responses, which tansu gets right, so the workers' gauge is exact.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from segpipe.config import KafkaSettings
from segpipe.kafka import make_admin
from segpipe.preflight import ServiceUnavailable, check_kafka

__all__ = [
    "GroupLag",
    "Member",
    "PartitionLag",
    "format_lag",
    "group_lag",
    "lag_from_statistics",
    "main",
    "quiet_admin",
]


@dataclass(frozen=True)
class PartitionLag:
    partition: int
    committed: int | None  # None: the group has committed nothing on this partition
    end: int
    lag: int


@dataclass(frozen=True)
class Member:
    member_id: str
    client_id: str
    host: str
    partitions: tuple[int, ...]


@dataclass
class GroupLag:
    group: str
    topic: str
    state: str
    partitions: list[PartitionLag] = field(default_factory=list)
    members: list[Member] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(p.lag for p in self.partitions)


def _results(futures: dict, timeout: float) -> dict:
    return {key: future.result(timeout=timeout) for key, future in futures.items()}


def group_lag(
    settings: KafkaSettings,
    group: str | None = None,
    topic: str | None = None,
    *,
    timeout: float = 10.0,
    admin: AdminClient | None = None,
) -> GroupLag:
    """The group's committed offsets against the topic's end offsets, and its members, as the broker reports them.

    Pass ``admin`` to reuse one client when asking repeatedly. Raises ``KafkaException`` when the broker does not
    answer and ``LookupError`` when the topic does not exist.
    """
    group = group or settings.group_id
    topic = topic or settings.input_topic
    admin = admin if admin is not None else make_admin(settings)
    # All topics, not list_topics(topic): a metadata request naming a topic may create it (auto.create.topics).
    metadata = admin.list_topics(timeout=timeout).topics.get(topic)
    if metadata is None or metadata.error is not None or not metadata.partitions:
        raise LookupError(f"topic {topic} does not exist on {settings.bootstrap_servers}")
    partitions = [TopicPartition(topic, p) for p in sorted(metadata.partitions)]
    ends = _offsets(admin, partitions, OffsetSpec.latest(), timeout)
    starts = _offsets(admin, partitions, OffsetSpec.earliest(), timeout)
    request = ConsumerGroupTopicPartitions(group, partitions)
    answer = admin.list_consumer_group_offsets([request], request_timeout=timeout)[group].result(timeout=timeout)
    committed = {tp.partition: tp.offset for tp in answer.topic_partitions or () if tp.error is None and tp.offset >= 0}
    rows = []
    for tp in partitions:
        end = ends[tp.partition]
        done = committed.get(tp.partition)
        start = done if done is not None else starts[tp.partition]
        rows.append(PartitionLag(tp.partition, done, end, max(0, end - start)))
    state, members = _describe(admin, group, topic, timeout)
    return GroupLag(group, topic, state, rows, members)


def _offsets(admin: AdminClient, partitions: list[TopicPartition], spec: OffsetSpec, timeout: float) -> dict[int, int]:
    futures = admin.list_offsets({tp: spec for tp in partitions}, request_timeout=timeout)
    return {tp.partition: result.offset for tp, result in _results(futures, timeout).items()}


def _describe(admin: AdminClient, group: str, topic: str, timeout: float) -> tuple[str, list[Member]]:
    try:
        description = admin.describe_consumer_groups([group], request_timeout=timeout)[group].result(timeout=timeout)
    except KafkaException as exc:
        return f"unknown ({exc.args[0].str()})", []
    members = [
        Member(
            member.member_id,
            member.client_id,
            member.host,
            tuple(sorted(tp.partition for tp in member.assignment.topic_partitions if tp.topic == topic))
            if member.assignment is not None
            else (),
        )
        for member in description.members or ()
    ]
    return str(description.state.name).lower(), members


def lag_from_statistics(stats_json: str) -> dict[tuple[str, int], int]:
    """Per-partition consumer lag from a librdkafka statistics document (``stats_cb``): records after the committed
    offset, by the high watermark of the partition's fetch responses (``consumer_lag``); where nothing is committed
    yet, everything from the low watermark. Partitions whose watermark is not known yet are left out."""
    stats = json.loads(stats_json)
    lag: dict[tuple[str, int], int] = {}
    for topic, topic_stats in stats.get("topics", {}).items():
        for key, partition in topic_stats.get("partitions", {}).items():
            number = int(key)
            if number < 0:  # librdkafka's internal "unassigned" partition
                continue
            value = partition.get("consumer_lag", -1)
            if value < 0 and partition.get("committed_offset", -1) < 0 and partition.get("hi_offset", -1) >= 0:
                value = partition["hi_offset"] - max(0, partition.get("lo_offset", 0))
            if value >= 0:
                lag[(topic, number)] = value
    return lag


def quiet_admin(settings: KafkaSettings) -> AdminClient:
    """An admin client that logs warnings and errors only: at exit librdkafka reports, at info level, the internal
    events of answered requests it discards ("Purging 1 unserved events from background queue")."""
    return AdminClient({**settings.client_config(), "log_level": 4})


def format_lag(report: GroupLag) -> str:
    """A table per partition, the total, then the members."""
    lines = [f"group {report.group} on {report.topic} ({report.state}): lag {report.total}"]
    lines.append(f"  {'partition':>9}  {'committed':>10}  {'end':>10}  {'lag':>8}")
    for row in report.partitions:
        committed = "-" if row.committed is None else str(row.committed)
        lines.append(f"  {row.partition:>9}  {committed:>10}  {row.end:>10}  {row.lag:>8}")
    if report.members:
        lines.append(f"members ({len(report.members)}):")
        for member in report.members:
            owned = ",".join(map(str, member.partitions)) or "-"
            lines.append(f"  {member.client_id} {member.host} partitions {owned}  ({member.member_id})")
    else:
        lines.append("members: none reported by the broker")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="segpipe lag",
        description="Per partition: committed offset, end offset and lag of the workers' group; then its members.",
        epilog="Kafka client settings come from KAFKA_* variables (KAFKA_BOOTSTRAP_SERVERS, KAFKA_GROUP_ID, ...).",
    )
    parser.add_argument("--group", help="consumer group (default: KAFKA_GROUP_ID)")
    parser.add_argument("--topic", help="topic (default: KAFKA_INPUT_TOPIC)")
    parser.add_argument("--bootstrap-servers", metavar="HOST:PORT", help="brokers (default: KAFKA_BOOTSTRAP_SERVERS)")
    parser.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    parser.add_argument("--watch", type=float, metavar="S", help="print again every S seconds until Ctrl-C")
    args = parser.parse_args(argv)
    overrides = {} if args.bootstrap_servers is None else {"bootstrap_servers": args.bootstrap_servers}
    settings = KafkaSettings(**overrides)
    try:
        check_kafka(settings)
        admin = quiet_admin(settings)
        while True:
            report = group_lag(settings, args.group, args.topic, admin=admin)
            if args.json:
                print(json.dumps({**asdict(report), "total": report.total}), flush=True)
            else:
                print(format_lag(report), flush=True)
            if args.watch is None:
                return 0
            time.sleep(args.watch)
    except (ServiceUnavailable, LookupError) as exc:
        print(f"segpipe lag: error: {exc.args[0]}", file=sys.stderr)
        return 1
    except KafkaException as exc:
        print(f"segpipe lag: error: {exc.args[0]}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
