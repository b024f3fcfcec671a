"""Who may send to the gateway, and how much: API keys, a per-client rate limit and a body limit enforced while reading.

:class:`GatewayGuard` is a pure ASGI middleware in front of the whole application, so each check runs before
FastAPI, starlette's form parser or ``request.json()`` see the request:

1. **API keys** (:class:`ApiKeys`), when configured: ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``, else
   401. Only sha256 digests are held; the presented key is hashed and compared with :func:`hmac.compare_digest`
   against every stored digest (no early exit), so neither the comparison nor the loop says how close a guess was.
   Keys are meant to be random tokens (``python -m gateway.security new``): with 256 bits of entropy a plain sha256
   is safe to store, where a slow password hash would cost every request milliseconds. Keys are never logged; a
   refused request is logged with the client's address and why (no key / unknown key).
2. **Rate limit** (:class:`RateLimiter`), when configured: a token bucket per key (keys on) or per client address
   (keys off), refilled at ``GATEWAY_RATE_LIMIT_PER_S``; an empty bucket is a 429 with ``Retry-After``.
3. **Body limit**: a ``Content-Length`` above the limit is a 413 before any byte of the body is read; otherwise the
   ``http.request`` messages are counted as the application pulls them, and the one that crosses the limit ends
   the request with a 413, whether the body is JSON, a form, chunked or not. Whatever the application was about to
   answer then (its form parser turns any error into a 400) is replaced by that 413. uvicorn reads a body only as
   fast as the application asks for it (it pauses the socket above 64 KiB), so the gateway never holds more than
   the limit of one request.

``/health`` is always open (probes carry no key) and is neither rate-limited nor counted.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import logging
import math
import secrets
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("gateway.security")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

DIGEST_PREFIX = "sha256:"
#: Paths that need no key and are not limited: liveness and readiness probes carry no credentials.
OPEN_PATHS = frozenset({"/health"})
#: Token buckets remembered at most; the least recently used goes first, so many client addresses cannot grow memory.
_MAX_BUCKETS = 10_000


def digest(key: str) -> str:
    """The stored form of a key: ``sha256:<hex>``."""
    return DIGEST_PREFIX + hashlib.sha256(key.encode("utf-8")).hexdigest()


class KeyFileError(ValueError):
    """A key file that cannot be used; the message names the file and line, never a key."""


@dataclass(frozen=True)
class _Entry:
    name: str
    digest: bytes  # raw 32 bytes


class ApiKeys:
    """The accepted keys, as sha256 digests with a name each (the name, never the key, appears in logs and limits)."""

    def __init__(self, entries: Iterable[tuple[str, str]] = ()) -> None:
        """``entries``: (name, ``sha256:<hex>`` digest) pairs."""
        self._entries = tuple(_Entry(name, bytes.fromhex(value.removeprefix(DIGEST_PREFIX))) for name, value in entries)

    @classmethod
    def load(cls, keys: str | None = None, keys_file: Path | None = None) -> ApiKeys:
        """Keys from ``GATEWAY_API_KEYS`` (plain keys, comma-separated) and/or ``GATEWAY_API_KEYS_FILE``.

        The file holds one ``sha256:<64 hex digits> [name]`` per line (``#`` starts a comment), so the plain keys
        need not be stored where the gateway runs. A file that names no key is an error rather than "auth off".
        """
        entries: list[tuple[str, str]] = []
        for index, key in enumerate(part.strip() for part in (keys or "").split(",")):
            if key:
                entries.append((f"env-{index + 1}", digest(key)))
        if keys_file is not None:
            from_file = list(_read_key_file(keys_file))
            if not from_file:
                raise KeyFileError(f"{keys_file}: no key in the file (GATEWAY_API_KEYS_FILE)")
            entries.extend(from_file)
        return cls(entries)

    @property
    def enabled(self) -> bool:
        return bool(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"ApiKeys({len(self._entries)} keys)"

    def verify(self, presented: str | None) -> str | None:
        """The name of the key ``presented`` matches, or None; every stored digest is compared in constant time."""
        if not presented:
            return None
        candidate = hashlib.sha256(presented.encode("utf-8", "surrogateescape")).digest()
        match: str | None = None
        for entry in self._entries:
            if hmac.compare_digest(candidate, entry.digest) and match is None:
                match = entry.name
        return match


def _read_key_file(path: Path) -> Iterable[tuple[str, str]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise KeyFileError(f"cannot read GATEWAY_API_KEYS_FILE {path}: {exc.strerror}") from None
    for number, raw in enumerate(lines, start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        value, _, name = line.partition(" ")
        hex_digest = value.removeprefix(DIGEST_PREFIX)
        if len(hex_digest) != 64 or any(c not in "0123456789abcdefABCDEF" for c in hex_digest):
            # Do not echo the line: an operator may have pasted a plain key by mistake.
            raise KeyFileError(
                f"{path}:{number}: expected 'sha256:<64 hex digits> [name]' (make one with "
                "'python -m gateway.security hash')"
            )
        yield (name.strip() or f"file-{number}"), DIGEST_PREFIX + hex_digest.lower()


class RateLimiter:
    """Token buckets: ``burst`` requests at once, refilled at ``rate`` per second, one bucket per identity."""

    def __init__(self, rate: float, burst: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # identity -> (tokens, at)

    def take(self, identity: str) -> float:
        """Take a token: 0.0 when allowed, else the seconds until the next token."""
        now = self._clock()
        with self._lock:
            tokens, at = self._buckets.pop(identity, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - at) * self.rate)
            wait = 0.0
            if tokens >= 1.0:
                tokens -= 1.0
            else:
                wait = (1.0 - tokens) / self.rate
            self._buckets[identity] = (tokens, now)
            while len(self._buckets) > _MAX_BUCKETS:
                self._buckets.popitem(last=False)
        return wait


class BodyTooLarge(Exception):
    """Raised inside ``receive`` when the body crosses the limit; :class:`GatewayGuard` answers 413."""


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def presented_key(scope: Scope) -> str | None:
    """The key a request carries: ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``."""
    authorization = _header(scope, b"authorization")
    if authorization:
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    key = _header(scope, b"x-api-key")
    return key.strip() if key and key.strip() else None


def _client(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


async def _answer(
    send: Send, status: int, code: str, message: str, headers: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    """An error in the gateway's JSON shape (``success``, ``error``, ``code``)."""
    body = json.dumps({"success": False, "error": message, "code": code}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class GatewayGuard:
    """ASGI middleware: API key (401), rate limit (429), body limit while reading (413); see the module text."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        keys: ApiKeys | None = None,
        limiter: RateLimiter | None = None,
        open_paths: frozenset[str] = OPEN_PATHS,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.keys = keys if keys is not None else ApiKeys()
        self.limiter = limiter
        self.open_paths = open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in self.open_paths:
            await self.app(scope, receive, send)
            return
        identity = f"client {_client(scope)}"
        if self.keys.enabled:
            presented = presented_key(scope)
            name = self.keys.verify(presented)
            if name is None:
                reason = "no API key" if presented is None else "an unknown API key"
                log.warning("refused %s %s from %s: %s", scope.get("method"), scope.get("path"), _client(scope), reason)
                await _answer(
                    send,
                    401,
                    "unauthorized",
                    f"{reason}: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
                    [(b"www-authenticate", b'Bearer realm="segpipe"')],
                )
                return
            identity = f"key {name}"
        if self.limiter is not None:
            wait = self.limiter.take(identity)
            if wait > 0:
                log.info("rate limited %s: retry in %.2f s", identity, wait)
                await _answer(
                    send,
                    429,
                    "rate_limited",
                    f"more than {self.limiter.rate:g} requests/s (burst {self.limiter.burst}); retry in {wait:.2f} s",
                    [(b"retry-after", str(max(1, math.ceil(wait))).encode())],
                )
                return
        length = _header(scope, b"content-length")
        if length is not None and length.strip().isdigit() and int(length) > self.max_body_bytes:
            await _answer(send, 413, "image_too_large", self._too_large(f"{int(length)} bytes"))
            return
        await self._limited(scope, receive, send)

    def _too_large(self, size: str) -> str:
        return f"the request body is {size}; at most {self.max_body_bytes} are read (GATEWAY_MAX_BODY_BYTES)"

    async def _limited(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the application with a ``receive`` that stops at the limit and a ``send`` that then answers 413."""
        received = 0
        exceeded = False
        started = False

        async def counting_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    exceeded = True
                    raise BodyTooLarge(self._too_large(f"over {self.max_body_bytes} bytes"))
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if exceeded:
                return  # the 413 below answers instead of whatever the application made of the error
            started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except BodyTooLarge:
            if not exceeded:
                raise
        if exceeded and not started:
            log.info("refused a body over %d bytes from %s", self.max_body_bytes, _client(scope))
            await _answer(send, 413, "image_too_large", self._too_large(f"over {self.max_body_bytes} bytes"))


def main(argv: Sequence[str] | None = None) -> int:
    """``new [name]``: a random key and its key-file line; ``hash [name]``: the key-file line of a key on stdin."""
    parser = argparse.ArgumentParser(prog="python -m gateway.security", description="gateway API keys")
    parser.add_argument("command", choices=("new", "hash"))
    parser.add_argument("name", nargs="?", default="", help="a label for logs and rate limits (no spaces)")
    args = parser.parse_args(argv)
    if args.command == "new":
        key = secrets.token_urlsafe(32)
        print(f"key (give it to the client; it is not stored): {key}")
    else:
        key = sys.stdin.readline().strip()
        if not key:
            print("no key on stdin", file=sys.stderr)
            return 2
    print(f"GATEWAY_API_KEYS_FILE line: {digest(key)} {args.name}".rstrip())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
