"""``python -m bench.patched_worker``: the real worker with experimental changes applied, to price a proposed fix.

The benchmark must not edit the product to try an idea, so this applies a change from the outside, then runs
``consumers.worker.main`` unchanged otherwise. ``BENCH_WORKER_PATCH`` is a ``;``-separated list of:

- ``poll_s=SECONDS``: the poll loop's ``consumer.consume`` timeout is capped to this (the worker uses 5 ms while
  an answer is due and 50 ms while all its work is in the model);
- ``max_in_flight=N``: the in-flight bound at which the worker pauses its partitions (it resumes at N // 2),
  without adding decode threads as raising MAX_WORKERS would;
- ``torch_threads=N``: torch's intra-op threads, kept after ultralytics' first CPU predict (whose select_device()
  sets them to min(8, cpus - 1)).
"""

from __future__ import annotations

import os
from typing import Any


class _PollCap:
    """Wraps a confluent-kafka Consumer so that ``poll`` never blocks longer than ``cap`` seconds."""

    def __init__(self, consumer: Any, cap: float) -> None:
        self._consumer = consumer
        self._cap = cap

    def poll(self, timeout: float = -1) -> Any:
        return self._consumer.poll(self._cap if timeout is None or timeout < 0 else min(timeout, self._cap))

    def consume(self, num_messages: int = 1, timeout: float = -1) -> Any:
        return self._consumer.consume(
            num_messages, self._cap if timeout is None or timeout < 0 else min(timeout, self._cap)
        )

    def __getattr__(self, name: str) -> Any:
        return getattr(self._consumer, name)


def keep_torch_threads(threads: int) -> None:
    """Make ultralytics' select_device() set ``threads`` instead of min(8, cpus - 1), and set them now."""
    from pipeline.models import _import_torch, configure_offline

    configure_offline()
    torch = _import_torch()
    import ultralytics.utils.torch_utils as torch_utils

    torch_utils.NUM_THREADS = threads
    torch.set_num_threads(threads)


def apply(spec: str) -> list[str]:
    """Apply the patches named in ``spec``; returns what was applied (for the log)."""
    import consumers.worker as worker_module

    applied = []
    for item in filter(None, (part.strip() for part in spec.split(";"))):
        name, _, value = item.partition("=")
        if name == "poll_s":
            cap = float(value)
            original = worker_module.make_consumer

            def make_consumer(*args: Any, _original: Any = original, _cap: float = cap, **kwargs: Any) -> Any:
                return _PollCap(_original(*args, **kwargs), _cap)

            worker_module.make_consumer = make_consumer  # type: ignore[assignment]
        elif name == "torch_threads":
            keep_torch_threads(int(value))
        elif name == "max_in_flight":
            bound = int(value)
            worker_module.Worker.max_in_flight = property(lambda _self, _bound=bound: _bound)  # type: ignore[assignment,method-assign]
        else:
            raise SystemExit(
                f"unknown BENCH_WORKER_PATCH item {item!r}: expected poll_s, max_in_flight or torch_threads"
            )
        applied.append(item)
    return applied


def main() -> None:
    import logging

    from consumers.worker import main as worker_main

    applied = apply(os.environ.get("BENCH_WORKER_PATCH", ""))
    logging.getLogger(__name__).warning("bench patched worker: %s", ", ".join(applied) or "no patch")
    worker_main([])


if __name__ == "__main__":
    main()
