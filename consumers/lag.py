"""The worker's ``segpipe_consumer_lag`` gauge: records not yet committed, per assigned input partition.

librdkafka computes it (high watermark of the fetch responses minus the committed offset) and hands it over in
its statistics, which the client serves on the thread that polls: a scrape never touches the consumer, whose
calls would wait for the poll loop (``Consumer.position`` from another thread blocks while ``consume`` runs).
Wiring: ``Worker(settings, consumer_overrides=tracker.consumer_config())`` and
``registry.register(LagCollector(tracker, worker))``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from segpipe.lag import lag_from_statistics

if TYPE_CHECKING:
    from consumers.worker import Worker

log = logging.getLogger(__name__)

#: How often librdkafka emits statistics: the gauge is at most this old.
STATISTICS_INTERVAL_MS = 2000


class LagTracker:
    """Keeps the latest per-partition lag from the consumer's statistics callback."""

    def __init__(self, interval_ms: int = STATISTICS_INTERVAL_MS) -> None:
        self.interval_ms = interval_ms
        self._lock = threading.Lock()
        self._lag: dict[tuple[str, int], int] = {}

    def consumer_config(self) -> dict[str, Any]:
        """librdkafka settings that make the consumer report to this tracker."""
        return {"statistics.interval.ms": self.interval_ms, "stats_cb": self.on_statistics}

    def on_statistics(self, stats_json: str) -> None:
        try:
            lag = lag_from_statistics(stats_json)
        except (ValueError, KeyError, TypeError) as exc:  # a malformed document must not break the poll loop
            log.debug("unreadable consumer statistics: %s", exc)
            return
        with self._lock:
            self._lag = lag

    def snapshot(self) -> dict[tuple[str, int], int]:
        with self._lock:
            return dict(self._lag)


class LagCollector(Collector):
    """``segpipe_consumer_lag{topic,partition}`` for the partitions the worker holds now."""

    def __init__(self, tracker: LagTracker, worker: Worker) -> None:
        self.tracker = tracker
        self.worker = worker

    def collect(self) -> Iterator[GaugeMetricFamily]:
        gauge = GaugeMetricFamily(
            "segpipe_consumer_lag",
            "Records after the committed offset, per assigned input partition (librdkafka's consumer_lag: high "
            "watermark of the last fetch response minus the committed offset)",
            labels=["topic", "partition"],
        )
        assigned = self.worker.assigned
        for (topic, partition), value in sorted(self.tracker.snapshot().items()):
            if (topic, partition) in assigned:
                gauge.add_metric([topic, str(partition)], value)
        yield gauge
