"""Prometheus metrics and health endpoints of a worker.

Everything is derived from what the worker already knows — each published outcome (model, fallback, cache hit,
error code, per-stage timings, batch size) and a snapshot of its live state (:class:`consumers.state.WorkerState`:
records in flight, assignment, last poll) — so the processing code stays free of metrics calls, and this module
never reaches into the worker. One small HTTP server (``METRICS_PORT``, default 9100) serves:

- ``/metrics``: Prometheus text format;
- ``/health/live``: 200 while the poll loop is turning (a stuck loop means the group will evict us);
- ``/health/ready``: 200 once the models are loaded and the worker is in its group with partitions (or waiting
  for them), 503 before.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from consumers.state import StateSource, WorkerState

if TYPE_CHECKING:
    from collections.abc import Callable

    from consumers.processor import Outcome

_STAGE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
_STAGES = ("decode", "dedup", "queue", "preprocess", "fastsam", "sam2", "postprocess")


class Observable(StateSource, Protocol):
    """What :meth:`WorkerMetrics.attach` needs: an outcome hook and a state snapshot (the worker has both)."""

    on_outcome: Callable[[Outcome], None] | None


class WorkerMetrics:
    """Prometheus series for one worker; attach with :meth:`attach` before ``worker.run()``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.results = Counter(
            "segpipe_results",
            "Results published, by status and answering model",
            ["status", "model"],
            registry=self.registry,
        )
        self.fallbacks = Counter(
            "segpipe_fallbacks",
            "Requests SAM2 answered instead of FastSAM, by reason",
            ["reason"],
            registry=self.registry,
        )
        self.cache_hits = Counter(
            "segpipe_cache_hits", "Results served by the Redis dedup cache", registry=self.registry
        )
        self.errors = Counter("segpipe_errors", "Error results, by error code", ["code"], registry=self.registry)
        self.dead_letters = Counter("segpipe_dead_letters", "Dead-letter records published", registry=self.registry)
        self.stage_seconds = Histogram(
            "segpipe_stage_seconds",
            "Time per processing stage",
            ["stage"],
            buckets=_STAGE_BUCKETS,
            registry=self.registry,
        )
        self.end_to_end_seconds = Histogram(
            "segpipe_request_seconds",
            "Submission to result, for requests that carry a submission time",
            buckets=_STAGE_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "segpipe_batch_size",
            "Requests per model call (micro-batching)",
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )

    def attach(self, worker: Observable) -> None:
        """Observe ``worker``: its outcomes feed the counters, its state snapshots the gauges."""
        previous = worker.on_outcome

        def observe(outcome: Outcome) -> None:
            self.observe(outcome)
            if previous is not None:
                previous(outcome)

        worker.on_outcome = observe
        self.registry.register(_LiveState(worker))

    def observe(self, outcome: Outcome) -> None:
        """Account one published outcome."""
        result = outcome.result
        self.results.labels(status=str(result.status), model=str(result.model or "none")).inc()
        if result.fallback_reason is not None:
            self.fallbacks.labels(reason=str(result.fallback_reason)).inc()
        if result.cached:
            self.cache_hits.inc()
        if result.error is not None:
            self.errors.labels(code=result.error.code).inc()
        if outcome.dead_letter is not None:
            self.dead_letters.inc()
        for stage in _STAGES:
            if stage in result.timings_ms:
                self.stage_seconds.labels(stage=stage).observe(result.timings_ms[stage] / 1000.0)
        if "batch_size" in result.timings_ms and not result.cached:
            self.batch_size.observe(result.timings_ms["batch_size"])
        submitted = outcome.submitted_at_ms
        if submitted:
            self.end_to_end_seconds.observe(max(0.0, (result.created_at_ms - submitted) / 1000.0))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _LiveState(Collector):
    """Gauges read at scrape time from one state snapshot (no bookkeeping to drift)."""

    def __init__(self, source: StateSource) -> None:
        self.source = source

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        state = self.source.snapshot()
        yield GaugeMetricFamily("segpipe_in_flight", "Records consumed and not yet acknowledged", state.in_flight)
        yield GaugeMetricFamily(
            "segpipe_in_flight_bytes",
            "Request bytes fetched and held until their results are delivered",
            state.held_bytes,
        )
        yield GaugeMetricFamily(
            "segpipe_backlog", "Records waiting for a model-path slot (not answered by the cache)", state.backlog
        )
        yield GaugeMetricFamily("segpipe_consumed", "Records consumed since start", state.consumed)
        yield CounterMetricFamily(
            "segpipe_redelivered_answered",
            "Redelivered records not published again: their results had been delivered (REDIS_ANSWERED_TTL)",
            value=state.answered_again,
        )
        yield GaugeMetricFamily("segpipe_assigned_partitions", "Input partitions assigned", state.assigned_partitions)
        yield GaugeMetricFamily("segpipe_paused", "1 while fetching is paused for back-pressure", int(state.paused))
        yield GaugeMetricFamily("segpipe_ready", "1 when the worker is ready", int(state.ready))


def health(state: WorkerState) -> tuple[bool, dict[str, object]]:
    """(alive, details): alive while the poll loop turned recently; ready once models are loaded and running, and
    not while stopping (a load balancer or orchestrator then sends nothing new)."""
    details: dict[str, object] = {
        "alive": state.alive,
        "ready": state.ready,
        "stopping": state.stopping,
        "since_last_poll_s": round(state.since_last_poll_s, 3),
        "assigned_partitions": state.assigned_partitions,
        "in_flight": state.in_flight,
        "in_flight_bytes": state.held_bytes,
        "backlog": state.backlog,
        "paused": state.paused,
        "redis": state.redis_healthy,
        "worker_id": state.worker_id,
    }
    return state.alive, details


class MetricsServer:
    """``/metrics``, ``/health/live``, ``/health/ready`` on a daemon thread."""

    def __init__(self, source: StateSource, metrics: WorkerMetrics, *, host: str = "0.0.0.0", port: int = 9100) -> None:
        handler = _handler(source, metrics)
        self.server = ThreadingHTTPServer((host, port), handler)
        self.server.daemon_threads = True
        # A short poll interval: stop() waits for the serving loop to notice, 0.5 s by default.
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, name="segpipe-metrics", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def start(self) -> MetricsServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _handler(source: StateSource, metrics: WorkerMetrics) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/metrics":
                self._send(200, metrics.exposition(), "text/plain; version=0.0.4; charset=utf-8")
            elif self.path in ("/health/live", "/health/ready", "/health"):
                alive, details = health(source.snapshot())
                ok = details["ready"] if self.path == "/health/ready" else alive
                self._send(200 if ok else 503, json.dumps(details).encode(), "application/json")
            else:
                self._send(404, b"not found\n", "text/plain")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return

    return Handler
