"""``python -m bench.patched_worker``: the real worker with experimental changes applied, to price a proposed fix.

The benchmark must not edit the product to try an idea, so this applies a change from the outside, then runs
``consumers.worker.main`` unchanged otherwise. ``BENCH_WORKER_PATCH`` is a ``;``-separated list of:

- ``poll_s=SECONDS``: the poll loop's ``consumer.consume`` timeout is capped to this (the worker uses 5 ms while
  an answer is due and 50 ms while all its work is in the model);
- ``max_in_flight=N``: the in-flight bound at which the worker pauses its partitions (it resumes at N // 2),
  without adding decode threads as raising MAX_WORKERS would;
- ``torch_threads=N``: torch's intra-op threads, kept after ultralytics' first CPU predict (whose select_device()
  sets them to min(8, cpus - 1));
- ``warm_up_in_background``: ``Segmenter.warm_up`` loads both models on a thread and returns at once, so the worker
  subscribes (and its group join runs) while FastSAM loads; the first record waits on the model's lock. Prices
  "subscribe before warm_up" for cold start (bench/cold.py's ``join_during_load`` variant).
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
        elif name == "warm_up_in_background":
            import threading

            from pipeline.segmenter import Segmenter

            original_warm_up = Segmenter.warm_up

            def warm_up(self: Any, background_sam2: bool | None = None, _original: Any = original_warm_up) -> Any:
                thread = threading.Thread(target=_original, args=(self, False), name="warm-up", daemon=True)
                thread.start()
                return thread

            Segmenter.warm_up = warm_up  # type: ignore[method-assign]
        elif name == "max_in_flight":
            bound = int(value)
            worker_module.Worker.max_in_flight = property(lambda _self, _bound=bound: _bound)  # type: ignore[assignment,method-assign]
        else:
            raise SystemExit(
                f"unknown BENCH_WORKER_PATCH item {item!r}: expected poll_s, max_in_flight, torch_threads or "
                "warm_up_in_background"
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
