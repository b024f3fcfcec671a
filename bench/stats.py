"""Small statistics helpers: percentiles of samples, medians over repeats of nested metric dicts."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from typing import Any


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) with linear interpolation; NaN for no values (JSON writes it as null)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    if len(ordered) == 1:
        return float(ordered[0])
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return float(ordered[low] + (ordered[high] - ordered[low]) * (rank - low))


def latency_summary(values_ms: Sequence[float]) -> dict[str, float]:
    """p50/p99/mean/max of latencies in ms."""
    return {
        "p50": percentile(values_ms, 50),
        "p99": percentile(values_ms, 99),
        "mean": statistics.fmean(values_ms) if values_ms else math.nan,
        "max": max(values_ms) if values_ms else math.nan,
    }


def mean(values: Iterable[float]) -> float:
    values = list(values)
    return statistics.fmean(values) if values else math.nan


def median_of(runs: Sequence[Any]) -> Any:
    """Median over repeats, leaf by leaf: dicts are merged by key, numbers take their median, other values the
    last run's (they are descriptive, e.g. a model name). Lists of numbers are kept from the median run's length."""
    present = [r for r in runs if r is not None]
    if not present:
        return None
    first = present[-1]
    if isinstance(first, dict):
        keys: list[str] = []
        for run in present:
            keys.extend(k for k in run if k not in keys)
        return {k: median_of([run.get(k) for run in present if isinstance(run, dict)]) for k in keys}
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in present):
        finite = [float(v) for v in present if not math.isnan(float(v))]
        return statistics.median(finite) if finite else math.nan
    return first


def clean_for_json(value: Any) -> Any:
    """NaN/inf become None so the file is strict JSON."""
    if isinstance(value, dict):
        return {str(k): clean_for_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean_for_json(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
