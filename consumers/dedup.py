"""Redis deduplication: the same image with the same parameters is segmented once; repeats get the stored result.

Key = sha256 over the decoded pixels' hash, the prompts, the resolved parameters and a fingerprint of the models
and settings that shape masks, so a changed checkpoint or threshold never serves a stale result. The same image sent
as PNG, JPEG-decoded array or base64 therefore shares one entry.

Repeats of the *same payload* (the common case: a client retrying, a frame re-sent) skip even the image decode: every
stored result also gets an alias keyed by the sha256 of the payload bytes as sent (with the same prompts, parameters
and fingerprint) pointing at its entry, and :meth:`DedupCache.lookup_payloads` resolves a whole batch of records in
two Redis round trips. A miss there (alias absent or its entry expired) falls through to the pixel key.

Two copies in flight at once: the first claims the key (``SET NX`` with a short TTL, kept alive by a heartbeat while
its owner works); the second waits for the stored result for as long as the claim lives. A killed owner stops
refreshing, its claim expires within REDIS_LOCK_TTL seconds, and the waiter claims the key itself. Redis unreachable:
every call degrades to "no cache" (logged once per outage), so work goes on without dedup and nothing is lost.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
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
    material = json.dumps(
        {"image": image_sha256, "prompts": asdict(prompts), "params": params.model_dump(), "models": fingerprint},
        sort_keys=True,
        default=str,
    )
    return f"{KEY_PREFIX}:result:{hashlib.sha256(material.encode()).hexdigest()}"


def payload_key(payload: bytes | str, prompts: Prompts, params: SegmentParams, fingerprint: str) -> str:
    """The alias key of a request's image payload exactly as sent (before any decoding)."""
    data = payload.encode("utf-8") if isinstance(payload, str) else payload
    material = json.dumps(
        {"payload": hashlib.sha256(data).hexdigest(), "prompts": asdict(prompts), "params": params.model_dump()},
        sort_keys=True,
        default=str,
    )
    digest = hashlib.sha256(f"{material}|{fingerprint}".encode()).hexdigest()
    return f"{KEY_PREFIX}:payload:{digest}"


class DedupCache:
    """Stored results and in-flight claims in Redis, degrading to no-op while Redis is unreachable."""

    def __init__(self, settings: RedisSettings, client: redis.Redis | None = None) -> None:
        self.settings = settings
        # Address, ACL user, password and TLS (REDIS_URL or REDIS_HOST/..., REDIS_SSL_*) come from the settings.
        self.client = client or settings.client(
            socket_timeout=settings.socket_timeout,
            socket_connect_timeout=settings.socket_timeout,
            # One immediate retry (a pooled connection gone stale when Redis restarted), no backoff: redis-py's
            # default (3 retries, exponential backoff) spends ~4 s on every call while Redis is down, and these calls
            # sit on the decode threads and the inference thread, so an outage would stall the whole worker.
            retry=Retry(NoBackoff(), 1),
        )
        self._healthy = True
        self._lock = threading.Lock()
        self._held: set[str] = set()  # claim keys this process owns and keeps alive
        self._heartbeat_stop = threading.Event()
        self._heartbeat = threading.Thread(target=self._refresh_claims, name="segpipe-claims", daemon=True)
        self._heartbeat.start()

    def close(self) -> None:
        """Stop the claim heartbeat (claims still held expire by themselves)."""
        self._heartbeat_stop.set()

    def _refresh_claims(self) -> None:
        """Extend our claims every third of their TTL, so only a dead owner's claim expires."""
        interval = max(0.2, self.settings.lock_ttl / 3)
        while not self._heartbeat_stop.wait(interval):
            with self._lock:
                held = list(self._held)
            if not held:
                continue
            try:
                pipe = self.client.pipeline(transaction=False)
                for claim_key in held:
                    pipe.expire(claim_key, self.settings.lock_ttl)
                pipe.execute()
            except redis.RedisError as exc:
                self._failed("refresh", exc)

    @property
    def healthy(self) -> bool:
        """False while the last Redis call failed (dedup is off until one succeeds again)."""
        return self._healthy

    def _failed(self, what: str, exc: Exception) -> None:
        with self._lock:
            if self._healthy:
                log.warning("Redis unreachable (%s: %s): working without dedup until it returns", what, exc)
            self._healthy = False

    def _ok(self) -> None:
        if not self._healthy:
            with self._lock:
                if not self._healthy:
                    log.info("Redis is back: dedup resumed")
                self._healthy = True

    def get(self, key: str) -> bytes | None:
        """The stored result, or None (absent, or Redis unreachable)."""
        try:
            value = self.client.get(key)
        except redis.RedisError as exc:
            self._failed("get", exc)
            return None
        self._ok()
        return value

    def lookup_payloads(self, aliases: list[str]) -> list[bytes | None]:
        """Stored results for payload aliases, in order (None: not stored, or Redis unreachable): two round trips for
        the whole batch, one to resolve the aliases and one to read their entries."""
        if not aliases:
            return []
        try:
            targets = self.client.mget(aliases)
            wanted = [target.decode() for target in targets if target is not None]
            values = iter(self.client.mget(wanted)) if wanted else iter(())
        except redis.RedisError as exc:
            self._failed("mget", exc)
            return [None] * len(aliases)
        self._ok()
        return [None if target is None else next(values) for target in targets]

    def claim(self, key: str, owner: str) -> bool:
        """Try to become the one who segments this key. True also when Redis is down (then nobody coordinates)."""
        try:
            claimed = self.client.set(f"{key}:claim", owner, nx=True, ex=self.settings.lock_ttl)
        except redis.RedisError as exc:
            self._failed("claim", exc)
            return True
        self._ok()
        if claimed:
            with self._lock:
                self._held.add(f"{key}:claim")
        return bool(claimed)

    def lookup_or_claim(self, key: str, owner: str, *, timeout: float, interval: float = 0.05) -> bytes | None:
        """The stored result, or None when the caller must compute it (it then holds the claim, or Redis is down).

        While another worker's claim lives, wait for its result. Every successful claim re-reads the result first,
        so a result stored between our read and our claim is served, not recomputed. After ``timeout`` seconds a
        live but stuck peer is no longer waited for: the caller computes too (a bounded duplicate, never a loss).
        """
        deadline = time.monotonic() + timeout
        while True:
            value = self.get(key)
            if value is not None or not self._healthy:
                return value
            if self.claim(key, owner):
                value = self.get(key)
                if value is not None:
                    self.release(key, owner)
                return value
            if time.monotonic() >= deadline:
                return None
            time.sleep(interval)

    def put(self, key: str, value: bytes, owner: str, *, aliases: tuple[str, ...] = ()) -> None:
        """Store a result for REDIS_TTL seconds, point ``aliases`` (payload keys) at it, and drop our claim."""
        try:
            pipe = self.client.pipeline()
            pipe.set(key, value, ex=self.settings.ttl)
            for alias in aliases:
                pipe.set(alias, key, ex=self.settings.ttl)
            pipe.delete(f"{key}:claim")
            pipe.execute()
        except redis.RedisError as exc:
            self._failed("put", exc)
            return
        finally:
            self._forget(key)
        self._ok()

    def alias(self, alias: str, key: str) -> None:
        """Point a payload alias at a stored entry (best effort: a missing alias only costs a decode)."""
        try:
            self.client.set(alias, key, ex=self.settings.ttl)
        except redis.RedisError as exc:
            self._failed("alias", exc)
            return
        self._ok()

    def _forget(self, key: str) -> None:
        with self._lock:
            self._held.discard(f"{key}:claim")

    def release(self, key: str, owner: str) -> None:
        """Drop our claim without a result (the request failed), so a peer may try."""
        self._forget(key)
        try:
            claim_key = f"{key}:claim"
            if self.client.get(claim_key) == owner.encode():
                self.client.delete(claim_key)
        except redis.RedisError as exc:
            self._failed("release", exc)
            return
        self._ok()
