"""``segpipe-publish``: send images to the pipeline from a shell and print the request ids to follow.

    segpipe-publish photos/ --recursive --model sam2 --points '[[120, 80]]'
    segpipe-publish --stdin < cat.jpg
    SEGPIPE_PUBLISH_MODEL=fastsam segpipe-publish cat.jpg --repeat 3      # the worker's cache answers repeats

Every option can also come from an environment variable ``SEGPIPE_PUBLISH_<OPTION>`` (``--max-contours`` is
``SEGPIPE_PUBLISH_MAX_CONTOURS``; booleans take true/false/1/0/yes/no/on/off); a flag on the command line wins.
The Kafka client itself is configured by ``KAFKA_*`` variables (:class:`segpipe.config.KafkaSettings`).

Output: one ``request_id<TAB>source`` line per request the broker confirmed, in publishing order. Exit status 1
with a message on stderr for bad arguments or when any request was not delivered.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaException
from pydantic import ValidationError
from tqdm import tqdm

from pipeline.errors import SegmentationError
from pipeline.params import PARAM_NAMES, cli_flag, param_doc, param_kind, param_rule, params_from_text
from pipeline.types import SegmentParams
from schemas import prompts_from_lists
from segpipe.config import KafkaSettings
from segpipe.preflight import ServiceUnavailable, check_kafka

from .publisher import PublishError, SegmentationProducer, image_files

__all__ = ["ENV_PREFIX", "build_parser", "main", "params_from_args"]

ENV_PREFIX = "SEGPIPE_PUBLISH_"
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_STDIN_SOURCE = "stdin"


class _UsageError(Exception):
    """A bad command line or environment variable: reported on stderr with exit status 1."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        """Raise instead of exiting with status 2, so :func:`main` reports every bad input the same way (status 1)."""
        raise _UsageError(message)


class EnvOptions:
    """Adds options whose defaults come from ``<prefix><DEST>`` environment variables, named in ``--help``.

    A value that does not convert is collected in :attr:`errors` (naming the variable) rather than raised, so
    the command can report it as a usage error. Converting here, not through argparse's string defaults, also
    applies to booleans and gives errors that name the variable instead of the flag.
    """

    def __init__(self, parser: argparse.ArgumentParser, prefix: str, environ: Mapping[str, str]) -> None:
        self.parser = parser
        self.prefix = prefix
        self.environ = environ
        self.errors: list[str] = []
        self.names: list[str] = []

    def add(self, *flags: str, **kwargs: Any) -> argparse.Action:
        action = self.parser.add_argument(*flags, **kwargs)
        name = self.prefix + action.dest.upper()
        self.names.append(name)
        action.help = f"{action.help or ''} [env {name}]".strip()
        raw = self.environ.get(name)
        if raw is not None:
            try:
                action.default = _convert(action, raw)
            except (ValueError, TypeError, argparse.ArgumentTypeError) as exc:
                self.errors.append(f"environment variable {name}={raw!r}: {exc}")
        return action


def _convert(action: argparse.Action, raw: str) -> Any:
    if action.nargs == 0:  # store_true / BooleanOptionalAction
        word = raw.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
        raise ValueError("expected true/false, 1/0, yes/no or on/off")
    return action.type(raw) if callable(action.type) else raw


def _json_list(text: str) -> list[Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc}): {text!r:.80}") from None
    if not isinstance(value, list):
        raise argparse.ArgumentTypeError(f"expected a JSON array, got {text!r:.80}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser(environ: Mapping[str, str] | None = None) -> tuple[argparse.ArgumentParser, EnvOptions]:
    """The argument parser with environment defaults applied; also returns the collected environment errors."""
    parser = _Parser(
        prog="segpipe-publish",
        description="Publish images to the segpipe input topic; prints request_id<TAB>source per delivered request.",
        epilog=(
            f"Every option can also be set with {ENV_PREFIX}<OPTION> (shown with each option); the command line "
            "wins. Kafka client settings come from KAFKA_* variables (KAFKA_BOOTSTRAP_SERVERS, KAFKA_INPUT_TOPIC, "
            "KAFKA_MESSAGE_MAX_BYTES, KAFKA_EXTRA_CONFIG, ...)."
        ),
    )
    env = EnvOptions(parser, ENV_PREFIX, os.environ if environ is None else environ)
    parser.add_argument("paths", nargs="*", type=Path, help="image files or directories (directories are expanded)")
    env.add("--recursive", action="store_true", help="descend into sub-directories of directory arguments")
    env.add("--base64-file", type=Path, metavar="FILE", help="also publish a file holding base64 text (or data URI)")
    env.add("--stdin", action="store_true", help="also publish the raw bytes read from standard input")
    env.add("--points", type=_json_list, metavar="JSON", help="point prompts, e.g. '[[x, y], ...]'")
    env.add("--labels", type=_json_list, metavar="JSON", help="one label per point: 1 foreground, 0 background")
    env.add("--boxes", type=_json_list, metavar="JSON", help="box prompts, e.g. '[[x1, y1, x2, y2], ...]'")
    for name in PARAM_NAMES:  # the parameter flags come from the spec: name, help and rule
        help_text = f"{param_doc(name)} Must be {param_rule(name)}; the worker's default when unset."
        if param_kind(name) == "bool":
            env.add(cli_flag(name), dest=name, action=argparse.BooleanOptionalAction, help=help_text)
        else:
            env.add(cli_flag(name), dest=name, metavar=param_kind(name).upper(), help=help_text)
    env.add("--repeat", type=_positive_int, default=1, metavar="N", help="publish each image N times (dedup demo)")
    env.add("--bare", action="store_true", help="bare records: image as value, parameters as segpipe-* headers")
    env.add("--reply-to", metavar="TOPIC", help="ask the worker to also send each result to TOPIC")
    env.add("--topic", help="input topic (default: KAFKA_INPUT_TOPIC)")
    env.add("--bootstrap-servers", metavar="HOST:PORT", help="brokers (default: KAFKA_BOOTSTRAP_SERVERS)")
    env.add("--flush-timeout", type=float, default=60.0, metavar="S", help="seconds to wait for delivery (60)")
    env.add("--progress", action=argparse.BooleanOptionalAction, help="progress bar on stderr (default: if a tty)")
    return parser, env


def params_from_args(args: argparse.Namespace) -> SegmentParams:
    """The parameters of parsed arguments, read and validated by the spec (the same messages as every other door)."""
    texts = {}
    for name in PARAM_NAMES:
        value = getattr(args, name)
        texts[name] = ("true" if value else "false") if isinstance(value, bool) else value
    return params_from_text(texts)


def _jobs(args: argparse.Namespace) -> list[tuple[Path | bytes | str, str]]:
    """What to publish, in order, as (image, source); each repeated ``--repeat`` times."""
    jobs: list[tuple[Path | bytes | str, str]] = []
    for path in args.paths:
        if path.is_dir():
            found = image_files(path, recursive=args.recursive)
            if not found:
                print(f"segpipe-publish: no image files in {path}", file=sys.stderr)
            jobs.extend((file, file.relative_to(path).as_posix()) for file in found)
        elif path.is_file():
            jobs.append((path, path.name))
        else:
            raise _UsageError(f"no such file or directory: {path}")
    if args.base64_file is not None:
        try:
            jobs.append((args.base64_file.read_text(encoding="utf-8"), args.base64_file.name))
        except (OSError, UnicodeDecodeError) as exc:
            raise _UsageError(f"cannot read --base64-file {args.base64_file}: {exc}") from None
    if args.stdin:
        jobs.append((sys.stdin.buffer.read(), _STDIN_SOURCE))
    if not jobs:
        raise _UsageError("nothing to publish: give image files or directories, --base64-file or --stdin")
    return [job for job in jobs for _ in range(args.repeat)]


def _settings(args: argparse.Namespace) -> KafkaSettings:
    overrides = {} if args.bootstrap_servers is None else {"bootstrap_servers": args.bootstrap_servers}
    try:
        return KafkaSettings(**overrides)
    except (ValidationError, ValueError) as exc:
        raise _UsageError(f"invalid Kafka configuration (KAFKA_* variables): {exc}") from None


def _setup_logging() -> None:
    """Use the project's log format unless the host (a test runner, an embedding app) already configured logging."""
    if not logging.getLogger().handlers:
        from segpipe.logs import configure_logging

        configure_logging()


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``segpipe-publish``; returns the exit status (0, or 1 on bad arguments or undelivered requests)."""
    parser, env = build_parser()
    try:
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:  # --help
            return int(exc.code or 0) if isinstance(exc.code, int | None) else 1
        if env.errors:
            raise _UsageError("; ".join(env.errors))
        prompts = prompts_from_lists(args.points, args.labels, args.boxes, names=("--points", "--labels", "--boxes"))
        params = params_from_args(args)
        jobs = _jobs(args)
        settings = _settings(args)
    except _UsageError as exc:
        parser.print_usage(sys.stderr)
        print(f"segpipe-publish: error: {exc}", file=sys.stderr)
        return 1
    except SegmentationError as exc:
        print(f"segpipe-publish: error: {exc.message}", file=sys.stderr)
        return 1

    try:
        check_kafka(settings)  # one line within seconds, rather than a minute of retries, when there is no broker
    except ServiceUnavailable as exc:
        print(f"segpipe-publish: error: {exc}", file=sys.stderr)
        return 1
    _setup_logging()
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    published: list[tuple[str, str]] = []
    status = 0
    current = ""
    try:
        producer = SegmentationProducer(settings, topic=args.topic, bare=args.bare)
    except KafkaException as exc:
        print(f"segpipe-publish: error: cannot create the Kafka producer: {exc}", file=sys.stderr)
        return 1
    try:
        for image, source in tqdm(jobs, desc="publishing", unit="img", disable=not progress, file=sys.stderr):
            current = source
            request_id = producer.publish(
                image,
                points=list(prompts.points),
                point_labels=list(prompts.point_labels),
                boxes=list(prompts.boxes),
                params=params,
                source=source,
                reply_to=args.reply_to,
            )
            published.append((request_id, source))
    except (ValueError, OSError, SegmentationError, KafkaException) as exc:
        message = exc.message if isinstance(exc, SegmentationError) else str(exc)
        print(f"segpipe-publish: error: stopped at {current}: {message}", file=sys.stderr)
        status = 1
    try:
        producer.close(args.flush_timeout)
    except PublishError as exc:
        for failure in exc.failures:
            print(f"segpipe-publish: not delivered: {failure.request_id}: {failure.reason}", file=sys.stderr)
        print(f"segpipe-publish: error: {len(exc.failures)} request(s) not delivered", file=sys.stderr)
        status = 1
    delivered = {delivery.request_id for delivery in producer.deliveries}
    for request_id, source in published:
        if request_id in delivered:
            print(f"{request_id}\t{source}")
    sys.stdout.flush()
    return status


if __name__ == "__main__":
    raise SystemExit(main())
