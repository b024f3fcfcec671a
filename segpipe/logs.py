"""Logging set-up shared by every command: plain or JSON lines (LOG_FORMAT), level from LOG_LEVEL, and warnings and
errors rate-limited per distinct message (an outage repeats the same failure many times a second)."""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
import time

RATE_LIMIT_INTERVAL_S = 10.0
_NUMBERS = re.compile(r"\d+")


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the request id when the log call passes ``extra={"request_id": ...}``."""

    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("request_id", "worker_id", "topic", "partition", "offset"):
            if hasattr(record, key):
                payload[key] = getattr(record, key)
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


class RateLimitFilter(logging.Filter):
    """At most one record per distinct message per ``interval`` seconds, for WARNING and above.

    Distinct = same logger, level and message with its numbers blanked: librdkafka's "Connect to ...:9092 failed
    (after 0ms ..., 3 identical error(s) suppressed)" is one error however its counters and ports change. INFO and
    below pass untouched (one line per result is the point of those). The first record let through after a
    suppression says how many were dropped.
    """

    def __init__(self, interval: float = RATE_LIMIT_INTERVAL_S, *, min_level: int = logging.WARNING) -> None:
        super().__init__()
        self.interval = interval
        self.min_level = min_level
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, int, str], tuple[float, int]] = {}  # key -> (last let through, dropped since)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < self.min_level:
            return True
        try:
            text = record.getMessage()
        except (TypeError, ValueError, KeyError):  # a broken format: let logging report it as usual
            return True
        key = (record.name, record.levelno, _NUMBERS.sub("#", text))
        now = time.monotonic()
        with self._lock:
            last, dropped = self._seen.get(key, (None, 0))
            if last is not None and now - last < self.interval:
                self._seen[key] = (last, dropped + 1)
                return False
            self._seen[key] = (now, 0)
            if len(self._seen) > 10_000:  # distinct messages can be unbounded: forget the stale ones
                self._seen = {k: v for k, v in self._seen.items() if now - v[0] < self.interval}
        if dropped:
            record.msg, record.args = f"{text} (%d similar suppressed in %.0f s)", (dropped, self.interval)
        return True


def configure_logging(level: str | None = None, fmt: str | None = None) -> None:
    """Configure the root logger once; libraries that log chattily are turned down."""
    level = (level or os.environ.get("LOG_LEVEL", "INFO")).upper()
    fmt = (fmt or os.environ.get("LOG_FORMAT", "plain")).lower()
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RateLimitFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("ultralytics", "PIL", "urllib3", "hydra"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
