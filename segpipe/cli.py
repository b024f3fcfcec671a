"""``segpipe <command>``: one entry point for every role, each also runnable as ``python -m <module>``."""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "worker": ("consumers.worker", "run a worker (consumer-group member)"),
    "publish": ("producers.cli", "publish images to the input topic"),
    "results": ("producers.results", "follow the output topic and print results"),
    "gateway": ("gateway.app", "HTTP gateway compatible with the original API (POST /segment, GET /health)"),
    "render": ("producers.render", "draw a result's masks over its image, or a contact sheet of several"),
    "demo": ("devstack.demo", "local broker + Redis + a worker + sample images -> printed results"),
    "up": ("devstack.up", "local broker + Redis + N workers on the default ports until Ctrl-C; --scale N resizes"),
    "lag": ("segpipe.lag", "the workers' group: committed offset, end offset and lag per partition; members"),
    "build-checkpoints": ("pipeline.checkpoints", "build random-weight demo/test checkpoints"),
}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in {"-h", "--help"} or argv[0] not in COMMANDS:
        print("usage: segpipe <command> [options]\n\ncommands:")
        for name, (_, help_text) in COMMANDS.items():
            print(f"  {name:<18} {help_text}")
        raise SystemExit(0 if argv and argv[0] in {"-h", "--help"} else 2)
    module, _ = COMMANDS[argv[0]]
    raise SystemExit(importlib.import_module(module).main(argv[1:]) or 0)


if __name__ == "__main__":
    main()
