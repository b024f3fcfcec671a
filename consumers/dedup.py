"""Redis deduplication: the same image with the same parameters is segmented once; repeats get the stored result.

Key = sha256 over the decoded pixels' hash, the prompts, the resolved parameters and a fingerprint of the models
and settings that shape masks, so a changed checkpoint or threshold never serves a stale result. The same image sent
as PNG, JPEG-decoded array or base64 therefore shares one entry.

Repeats of the *same payload* (the common case: a client retrying, a frame re-sent) skip even the image decode: every
stored result also gets an alias keyed by the sha256 of the payload bytes as sent (with the same prompts, parameters
and fingerprint) pointing at its entry, and :meth:`DedupCache.lookup_payloads` resolves a whole batch of records in
two Redis round trips. A miss there (alias absent or its entry expired) falls through to the pixel key.

Two copies in flight at once: the first claims the key (``SET NX``; the claim's value names its owner: the worker id
and this cache instance); the second waits for the stored result while the owner lives. Every cache instance keeps a
liveness key (REDIS_LIVENESS_TTL, refreshed every REDIS_HEARTBEAT_INTERVAL by a background thread), so a waiter takes
over a killed owner's claim as soon as that key is gone, not REDIS_LOCK_TTL later (the claim's own TTL remains the
backstop for claims of unknown format). Releases are compare-and-delete (Lua): nobody ever deletes another's claim.

Redis unreachable or hung: a circuit breaker opens after REDIS_BREAKER_FAILURES consecutive timeouts or connection
errors; while open every call answers "no cache" at once (work goes on without dedup, nothing is lost), and the
heartbeat thread probes Redis every REDIS_BREAKER_COOLDOWN seconds, closing the breaker when it answers. One log line
when it opens, one when it closes.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import threading
import time
import uuid
from dataclasses import asdict
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from pipeline.settings import ModelSettings
from pipeline.types import Prompts, SegmentParams
from segpipe.config import RedisSettings

log = logging.getLogger(__name__)

KEY_PREFIX = "segpipe:v2"  # v2: entries in schemas.stored layout, payload aliases


def model_fingerprint(settings: ModelSettings) -> str:
    """What, besides the request, decides the masks: checkpoint identities and result-shaping settings."""

    def identity(path: Path) -> str:
        try:
            return f"{path.name}:{path.stat().st_size}"
        except OSError:
            return f"{path.name}:missing"

    shaping = {
        "fastsam": identity(settings.fastsam_model_path),
        "sam2": identity(settings.sam_model_path),
        "sam2_config": settings.sam2_config,
        "retina": settings.retina_masks,
        "sam2_grid": [
            settings.sam2_points_per_side,
            settings.sam2_pred_iou_thresh,
            settings.sam2_stability_score_thresh,
        ],
        "min_region_area": settings.min_region_area,
        "memory": [settings.memory_optimization, settings.max_inference_side],
    }
    return hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:16]


def dedup_key(image_sha256: str, prompts: Prompts, params: SegmentParams, fingerprint: str) -> str:
    """The cache key for one request; ``params`` must already be resolved (no None left)."""
    shaping_prompts, shaping_params = _request_json(prompts, params)
    # What json.dumps({...}, sort_keys=True) of the four fields writes, with the request's part cached.
    material = (
        f'{{"image": {json.dumps(image_sha256)}, "models": {json.dumps(fingerprint)}, '
        f'"params": {shaping_params}, "prompts": {shaping_prompts}}}'
    )
    return f"{KEY_PREFIX}:result:{hashlib.sha256(material.encode()).hexdigest()}"


def payload_key(payload: bytes | str, prompts: Prompts, params: SegmentParams, fingerprint: str) -> str:
    """The alias key of a request's image payload exactly as sent (before any decoding)."""
    data = payload.encode("utf-8") if isinstance(payload, str) else payload
    shaping_prompts, shaping_params = _request_json(prompts, params)
    material = (
        f'{{"params": {shaping_params}, "payload": "{hashlib.sha256(data).hexdigest()}", "prompts": {shaping_prompts}}}'
    )
    digest = hashlib.sha256(f"{material}|{fingerprint}".encode()).hexdigest()
    return f"{KEY_PREFIX}:payload:{digest}"


@functools.lru_cache(maxsize=4096)
def _request_json(prompts: Prompts, params: SegmentParams) -> tuple[str, str]:
    """The prompts and parameters as the keys' JSON writes them: a hit is keyed ~10,000 times a second, mostly with
    the same few (both are immutable, so caching them is safe)."""
    return (
        json.dumps(asdict(prompts), sort_keys=True, default=str),
        json.dumps(params.model_dump(), sort_keys=True, default=str),
    )


# Compare-and-delete / compare-and-expire / take-over: atomic on the server, so a claim changes hands only when the
# caller's view of its owner is still true when Redis applies the change.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_MARK = """
for _, key in ipairs(KEYS) do redis.call('SET', key, '1', 'EX', ARGV[1]) end
return #KEYS
"""
_REFRESH = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_TAKE_OVER = """
if redis.call('GET', KEYS[1]) == ARGV[1] and redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
"""

# What a sick Redis raises: these count towards the breaker. Other RedisErrors (a wrong type, a script error) fail the
# one call only.
_OUTAGE = (redis.ConnectionError, redis.TimeoutError)


def answered_key(scope: str, topic: str, partition: int, offset: int, timestamp_ms: int | None) -> str:
    """A delivered record's mark: ``scope`` (the consumer group) and the record's coordinates, its timestamp told
    apart a topic deleted and created again with the same offsets."""
    return f"{KEY_PREFIX}:answered:{scope}:{topic}:{partition}:{offset}:{timestamp_ms}"


def liveness_key(instance: str) -> str:
    return f"{KEY_PREFIX}:alive:{instance}"


def claim_owner_instance(token: str) -> str | None:
    """The cache instance named by a claim's value (``worker@instance``); None for a claim of unknown format."""
    _, sep, instance = token.rpartition("@")
    return instance if sep and len(instance) == 32 and all(c in "0123456789abcdef" for c in instance) else None


class CircuitBreaker:
    """Closed (use Redis) or open (skip it) after ``failures`` consecutive outage errors; thread-safe, never blocks.

    Callers only ask :attr:`is_open` and report outcomes; probing is left to one background thread (the cache's
    heartbeat), so no request ever waits on a sick Redis to learn that it is still sick. (pybreaker holds its lock
    across the wrapped call, serialising every decode thread behind one Redis round trip, and probes half-open on a
    caller's thread: hence these few lines.)
    """

    def __init__(self, failures: int, cooldown: float) -> None:
        self.failures = failures
        self.cooldown = cooldown
        self._lock = threading.Lock()
        self._consecutive = 0
        self._opened_at: float | None = None  # also the time of the last failed probe

    @property
    def is_open(self) -> bool:
        return self._opened_at is not None

    def probe_due(self) -> bool:
        opened_at = self._opened_at
        return opened_at is not None and time.monotonic() - opened_at >= self.cooldown

    def success(self) -> None:
        if self._consecutive == 0 and self._opened_at is None:
            return
        with self._lock:
            self._consecutive = 0
            if self._opened_at is not None:
                self._opened_at = None
                log.info("Redis answers again: dedup resumed")

    def failure(self, what: str, exc: Exception) -> None:
        with self._lock:
            self._consecutive += 1
            if self._opened_at is not None:
                self._opened_at = time.monotonic()  # a failed probe: next one after another cool-down
            elif self._consecutive >= self.failures:
                self._opened_at = time.monotonic()
                log.warning(
                    "Redis unreachable (%s: %s): working without dedup, probing every %.0f s",
                    what,
                    exc,
                    self.cooldown,
                )
            else:
                log.debug("Redis call failed (%s: %s), %d in a row", what, exc, self._consecutive)


class Liveness:
    """One cache instance's proof of life: its liveness key and the TTLs of the claims it holds, refreshed by a
    background thread that doubles as the breaker's probe.

    Its own class because it runs on its own thread and touches only these keys, never a request's: owned and
    closed by :class:`DedupCache`.
    """

    def __init__(self, client: redis.Redis, settings: RedisSettings, breaker: CircuitBreaker, instance: str) -> None:
        self.client = client
        self.settings = settings
        self.breaker = breaker
        self.key = liveness_key(instance)
        self._refresh = client.register_script(_REFRESH)
        self._lock = threading.Lock()
        self._held: dict[str, str] = {}  # claim key -> our token: the claims this process keeps alive
        self._closed = threading.Event()
        self.beat()  # alive before the first claim
        self._thread = threading.Thread(target=self._loop, name="segpipe-liveness", daemon=True)
        self._thread.start()

    def hold(self, claim_key: str, token: str) -> None:
        with self._lock:
            self._held[claim_key] = token

    def forget(self, claim_key: str) -> None:
        with self._lock:
            self._held.pop(claim_key, None)

    def close(self) -> None:
        """Stop the heartbeat and drop the liveness key: peers take over claims still held here at once."""
        self._closed.set()
        self._thread.join(timeout=self.settings.socket_timeout + 1)
        if self.breaker.is_open:
            return
        try:
            self.client.delete(self.key)
        except redis.RedisError as exc:
            log.debug("liveness key not deleted: %s", exc)

    def _loop(self) -> None:
        while not self._closed.wait(self.settings.heartbeat_interval):
            if self.breaker.is_open and not self.breaker.probe_due():
                continue  # while open, one probe per cool-down
            self.beat()

    def beat(self) -> None:
        """Refresh our liveness key and our claims; doubles as the breaker's probe."""
        with self._lock:
            held = list(self._held.items())
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.set(self.key, "1", px=int(self.settings.liveness_ttl * 1000))
            for claim_key, token in held:
                self._refresh(keys=[claim_key], args=[token, self.settings.lock_ttl * 1000], client=pipe)
            pipe.execute()
        except _OUTAGE as exc:
            self.breaker.failure("heartbeat", exc)
        except redis.RedisError as exc:
            log.warning("liveness heartbeat failed: %s", exc)
        else:
            self.breaker.success()


class DedupCache:
    """Stored results and in-flight claims in Redis, degrading to no-op while Redis is unreachable.

    ``stop`` (the worker's stop event) ends every claim wait at once: the caller then computes the request itself, so
    a stopping worker never sits out a peer's claim (its offset is stored only after the result is published, so a
    record not finished before the process exits is redelivered: at least once either way).
    """

    def __init__(
        self, settings: RedisSettings, client: redis.Redis | None = None, *, stop: threading.Event | None = None
    ) -> None:
        self.settings = settings
        # Address, ACL user, password and TLS (REDIS_URL or REDIS_HOST/..., REDIS_SSL_*) come from the settings.
        self.client = client or settings.client(
            socket_timeout=settings.socket_timeout,
            socket_connect_timeout=settings.socket_timeout,
            # One immediate retry after a connection error (a pooled connection gone stale when Redis restarted), no
            # backoff, and none after a timeout: a hung Redis would cost two socket timeouts per call, and these calls
            # sit on the decode threads and the inference thread.
            retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
        )
        self.instance = uuid.uuid4().hex  # this process's cache: claims name it, the heartbeat proves it alive
        self.breaker = CircuitBreaker(settings.breaker_failures, settings.breaker_cooldown)
        self._stop = stop if stop is not None else threading.Event()
        self._release = self.client.register_script(_RELEASE)
        self._take_over = self.client.register_script(_TAKE_OVER)
        self._mark = self.client.register_script(_MARK)
        self._liveness = Liveness(self.client, settings, self.breaker, self.instance)  # alive before the first claim

    @property
    def liveness_key(self) -> str:
        return self._liveness.key

    def token(self, owner: str) -> str:
        """The value of a claim by ``owner`` (the worker id) through this cache instance."""
        return f"{owner}@{self.instance}"

    def close(self) -> None:
        """Stop the heartbeat and drop the liveness key: peers take over claims still held here at once."""
        self._liveness.close()

    # -- calls ------------------------------------------------------------------------------------------------------
    @property
    def healthy(self) -> bool:
        """False while the breaker is open (dedup is off until a probe gets an answer)."""
        return not self.breaker.is_open

    def _failed(self, what: str, exc: redis.RedisError) -> None:
        if isinstance(exc, _OUTAGE):
            self.breaker.failure(what, exc)
        else:
            log.warning("Redis %s failed: %s", what, exc)

    def get(self, key: str) -> bytes | None:
        """The stored result, or None (absent, or Redis unreachable)."""
        if self.breaker.is_open:
            return None
        try:
            value = self.client.get(key)
        except redis.RedisError as exc:
            self._failed("get", exc)
            return None
        self.breaker.success()
        return value

    def answered(self, keys: list[str]) -> list[bool]:
        """Which of these records (:func:`answered_key`) were marked delivered (False where Redis is unreachable)."""
        if not keys or self.breaker.is_open or not self.settings.answered_ttl:
            return [False] * len(keys)
        try:
            values = self.client.mget(keys)
        except redis.RedisError as exc:
            self._failed("mget", exc)
            return [False] * len(keys)
        self.breaker.success()
        return [value is not None for value in values]

    def mark_answered(self, keys: list[str]) -> None:
        """Remember these records as delivered for REDIS_ANSWERED_TTL: one script call (a pipeline of SETs cost the
        client ~5x the CPU per key); best effort (a mark lost costs at most a duplicate result, which at-least-once
        allows)."""
        if not keys or self.breaker.is_open or not self.settings.answered_ttl:
            return
        try:
            self._mark(keys=keys, args=[self.settings.answered_ttl])
        except redis.RedisError as exc:
            self._failed("set", exc)
            return
        self.breaker.success()

    def lookup_payloads(self, aliases: list[str]) -> list[bytes | None]:
        """Stored results for payload aliases, in order (None: not stored, or Redis unreachable): two round trips for
        the whole batch, one to resolve the aliases and one to read their entries."""
        if not aliases:
            return []
        if self.breaker.is_open:
            return [None] * len(aliases)
        try:
            targets = self.client.mget(aliases)
            wanted = [target.decode() for target in targets if target is not None]
            values = iter(self.client.mget(wanted)) if wanted else iter(())
        except redis.RedisError as exc:
            self._failed("mget", exc)
            return [None] * len(aliases)
        self.breaker.success()
        return [None if target is None else next(values) for target in targets]

    def _try_claim(self, key: str, owner: str) -> bool | None:
        """True: claimed (or taken over from a dead owner); False: a live owner holds it; None: Redis failed."""
        claim_key, token = f"{key}:claim", self.token(owner)
        lock_ttl_ms = self.settings.lock_ttl * 1000
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.set(claim_key, token, nx=True, px=lock_ttl_ms)
            pipe.get(claim_key)
            claimed, current = pipe.execute()
            if not claimed and current is not None and current.decode() != token:
                holder = current.decode(errors="replace")
                instance = claim_owner_instance(holder)
                if instance is not None:
                    args = [current, token, lock_ttl_ms]
                    claimed = self._take_over(keys=[claim_key, liveness_key(instance)], args=args)
                    if claimed:
                        log.info("took over the claim on %s: its owner %s is not alive", key, holder)
        except redis.RedisError as exc:
            self._failed("claim", exc)
            return None
        self.breaker.success()
        if claimed:
            self._liveness.hold(claim_key, token)
        return bool(claimed)

    def claim(self, key: str, owner: str) -> bool:
        """Try to become the one who segments this key. True also when Redis is down (then nobody coordinates)."""
        if self.breaker.is_open:
            return True
        return self._try_claim(key, owner) is not False

    def lookup_or_claim(self, key: str, owner: str, *, timeout: float, interval: float = 0.05) -> bytes | None:
        """The stored result, or None when the caller must compute it (it then holds the claim, or Redis is down, or
        the worker is stopping).

        While a live owner's claim stands, wait for its result; a dead owner's claim is taken over at once. Every
        successful claim re-reads the result first, so a result stored between our read and our claim is served, not
        recomputed. After ``timeout`` seconds a live but stuck peer is no longer waited for: the caller computes too
        (a bounded duplicate, never a loss).
        """
        deadline = time.monotonic() + timeout
        while True:
            if self.breaker.is_open:
                return None
            value = self.get(key)
            if value is not None:
                return value
            claimed = self._try_claim(key, owner)
            if claimed is None:  # Redis failed: compute without dedup
                return None
            if claimed:
                value = self.get(key)
                if value is not None:
                    self.release(key, owner)
                return value
            if time.monotonic() >= deadline or self._stop.wait(interval):
                return None

    def put(self, key: str, value: bytes, owner: str, *, aliases: tuple[str, ...] = ()) -> None:
        """Store a result for REDIS_TTL seconds, point ``aliases`` (payload keys) at it, and drop our claim (only
        ours: a claim taken over meanwhile stays with its new owner)."""
        claim_key = self._forget(key)
        if self.breaker.is_open:
            return
        try:
            pipe = self.client.pipeline()
            pipe.set(key, value, ex=self.settings.ttl)
            for alias in aliases:
                pipe.set(alias, key, ex=self.settings.ttl)
            self._release(keys=[claim_key], args=[self.token(owner)], client=pipe)
            pipe.execute()
        except redis.RedisError as exc:
            self._failed("put", exc)
            return
        self.breaker.success()

    def alias(self, alias: str, key: str) -> None:
        """Point a payload alias at a stored entry (best effort: a missing alias only costs a decode)."""
        if self.breaker.is_open:
            return
        try:
            self.client.set(alias, key, ex=self.settings.ttl)
        except redis.RedisError as exc:
            self._failed("alias", exc)
            return
        self.breaker.success()

    def _forget(self, key: str) -> str:
        claim_key = f"{key}:claim"
        self._liveness.forget(claim_key)
        return claim_key

    def release(self, key: str, owner: str) -> None:
        """Drop our claim without a result (the request failed or was handed back), so a peer may try at once."""
        claim_key = self._forget(key)
        if self.breaker.is_open:
            return
        try:
            self._release(keys=[claim_key], args=[self.token(owner)])
        except redis.RedisError as exc:
            self._failed("release", exc)
            return
        self.breaker.success()
