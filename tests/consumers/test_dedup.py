"""DedupCache on a real redis-server: payload aliases, bulk lookups, TTLs, claims, dead owners, a hung Redis."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from worker_harness import REPO_ROOT

from consumers.dedup import DedupCache, payload_key
from devstack.services import LocalRedis, start_redis
from pipeline.types import Prompts, SegmentParams
from segpipe.config import RedisSettings


def test_lookup_payloads_resolves_aliases_in_order(dedup_cache: DedupCache, redis_client: redis.Redis) -> None:
    dedup_cache.put("k:one", b"result one", "w", aliases=("a:one", "a:one-bis"))
    dedup_cache.put("k:two", b"result two", "w", aliases=("a:two",))
    dedup_cache.alias("a:gone", "k:expired")  # points at an entry that is not there

    found = dedup_cache.lookup_payloads(["a:two", "a:unknown", "a:one", "a:gone", "a:one-bis", "a:two"])

    assert found == [b"result two", None, b"result one", None, b"result one", b"result two"]
    assert dedup_cache.lookup_payloads([]) == []
    for key in ("k:one", "a:one", "a:one-bis", "a:gone"):
        assert 90 <= redis_client.ttl(key) <= 100  # aliases live as long as REDIS_TTL, like the entries


def test_put_releases_the_claim_and_keeps_aliases(dedup_cache: DedupCache, redis_client: redis.Redis) -> None:
    assert dedup_cache.lookup_or_claim("k:x", "w", timeout=1) is None  # claimed by us
    assert redis_client.get("k:x:claim") == f"w@{dedup_cache.instance}".encode()  # names its owner
    dedup_cache.put("k:x", b"value", "w", aliases=("a:x",))
    assert redis_client.get("k:x:claim") is None
    assert redis_client.get("a:x") == b"k:x"
    assert dedup_cache.lookup_or_claim("k:x", "other", timeout=1) == b"value"


def test_payload_key_depends_on_every_input() -> None:
    base = payload_key(b"abc", Prompts(), SegmentParams(conf=0.4), "fp")
    assert payload_key("abc", Prompts(), SegmentParams(conf=0.4), "fp") == base  # text is its UTF-8 bytes
    assert payload_key(b"abd", Prompts(), SegmentParams(conf=0.4), "fp") != base
    assert payload_key(b"abc", Prompts(points=((1.0, 2.0),)), SegmentParams(conf=0.4), "fp") != base
    assert payload_key(b"abc", Prompts(), SegmentParams(conf=0.5), "fp") != base
    assert payload_key(b"abc", Prompts(), SegmentParams(conf=0.4), "other model") != base


@pytest.mark.parametrize(
    ("prompts", "params"),
    [
        (Prompts(), SegmentParams(conf=0.4, iou=0.8, imgsz=1024, max_contours=10)),
        (Prompts(points=((3.5, 4.0),), point_labels=(1,)), SegmentParams(model="sam2", conf=0.25)),
        (Prompts(boxes=((1.0, 2.0, 30.0, 40.0),)), SegmentParams(mask_post_processing=True)),
    ],
)
def test_keys_are_the_json_of_their_inputs_with_or_without_the_cache(prompts: Prompts, params: SegmentParams) -> None:
    """Keys are shared by every worker and version in the group: the cached JSON must write what json.dumps of the
    whole record writes, on the first call and on a repeat."""
    import hashlib
    import json
    from dataclasses import asdict

    from consumers.dedup import KEY_PREFIX, dedup_key

    def reference_result(image: str, fingerprint: str) -> str:
        material = json.dumps(
            {"image": image, "prompts": asdict(prompts), "params": params.model_dump(), "models": fingerprint},
            sort_keys=True,
            default=str,
        )
        return f"{KEY_PREFIX}:result:{hashlib.sha256(material.encode()).hexdigest()}"

    def reference_payload(payload: bytes, fingerprint: str) -> str:
        material = json.dumps(
            {"payload": hashlib.sha256(payload).hexdigest(), "prompts": asdict(prompts), "params": params.model_dump()},
            sort_keys=True,
            default=str,
        )
        return f"{KEY_PREFIX}:payload:{hashlib.sha256(f'{material}|{fingerprint}'.encode()).hexdigest()}"

    for _ in range(2):
        assert dedup_key("ab" * 32, prompts, params, "f1") == reference_result("ab" * 32, "f1")
        assert payload_key(b"\x89PNG...", prompts, params, "f2") == reference_payload(b"\x89PNG...", "f2")


def test_redis_down_degrades_to_no_cache(unreachable_cache: DedupCache) -> None:
    for _ in range(unreachable_cache.settings.breaker_failures):
        assert unreachable_cache.lookup_payloads(["a", "b"]) == [None, None]
    assert not unreachable_cache.healthy
    assert unreachable_cache.lookup_or_claim("k", "w", timeout=5) is None  # compute it: nobody coordinates
    unreachable_cache.alias("a", "k")  # best effort, never raises
    unreachable_cache.put("k", b"v", "w", aliases=("a",))


def _settings(server: LocalRedis, **overrides: object) -> RedisSettings:
    """Fast liveness (1 s) and the product's 30 s claim TTL: a take-over that waited for the TTL would show."""
    base = {"host": server.host, "port": server.port, "ttl": 100, "lock_ttl": 30, "liveness_ttl": 1.0}
    return RedisSettings(**{**base, "heartbeat_interval": 0.25, **overrides})


def test_release_and_put_never_drop_another_owners_claim(
    dedup_cache: DedupCache, redis_client: redis.Redis, redis_server: LocalRedis
) -> None:
    peer = DedupCache(_settings(redis_server))
    try:
        assert peer.claim("k:y", "peer")
        dedup_cache.release("k:y", "w")  # not ours: compare-and-delete leaves it
        dedup_cache.put("k:y", b"value", "w")  # stores the result, leaves the peer's claim
        assert redis_client.get("k:y:claim") == peer.token("peer").encode()
        assert redis_client.get("k:y") == b"value"
        peer.release("k:y", "peer")
        assert redis_client.get("k:y:claim") is None
    finally:
        peer.close()


def test_a_live_owner_is_waited_for_and_its_result_served(redis_server: LocalRedis, redis_client: redis.Redis) -> None:
    owner, waiter = DedupCache(_settings(redis_server)), DedupCache(_settings(redis_server))
    try:
        assert owner.claim("k:live", "a")
        started = time.monotonic()
        # Three liveness TTLs: the heartbeat keeps the owner's key (and claim) alive, so nothing is taken over.
        assert waiter.lookup_or_claim("k:live", "b", timeout=3.0) is None
        assert time.monotonic() - started >= 3.0
        assert redis_client.get("k:live:claim") == owner.token("a").encode()
        threading.Timer(0.5, owner.put, args=("k:live", b"done", "a")).start()
        assert waiter.lookup_or_claim("k:live", "b", timeout=10.0) == b"done"
    finally:
        owner.close()
        waiter.close()


def test_a_killed_owners_claim_is_taken_over_at_once(
    redis_server: LocalRedis, redis_client: redis.Redis, tmp_path: Path
) -> None:
    """A real process claims a key and is SIGKILLed: the waiter has it once the owner's liveness key lapses (1 s), not
    after REDIS_LOCK_TTL (30 s)."""
    script = textwrap.dedent(
        f"""
        import sys, time
        from consumers.dedup import DedupCache
        from segpipe.config import RedisSettings
        cache = DedupCache(RedisSettings(host={redis_server.host!r}, port={redis_server.port}, lock_ttl=30,
                                         liveness_ttl=1.0, heartbeat_interval=0.25))
        assert cache.claim("k:dead", "victim")
        print("claimed", flush=True)
        time.sleep(600)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    victim = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, text=True)
    waiter = DedupCache(_settings(redis_server))
    try:
        assert victim.stdout is not None and victim.stdout.readline().strip() == "claimed"
        time.sleep(1.5)  # longer than the liveness TTL: only the heartbeat keeps the victim's key
        assert waiter.lookup_or_claim("k:dead", "w", timeout=0.5) is None  # a live owner: waited for, not taken
        assert b"victim@" in redis_client.get("k:dead:claim")
        victim.kill()
        victim.wait()
        killed = time.monotonic()
        assert waiter.lookup_or_claim("k:dead", "w", timeout=20.0) is None
        taken_after = time.monotonic() - killed
        assert redis_client.get("k:dead:claim") == waiter.token("w").encode(), "the waiter holds the claim now"
        assert taken_after < 2.5, taken_after  # liveness TTL (1 s) + heartbeat slack; REDIS_LOCK_TTL is 30 s
        assert 25_000 < redis_client.pttl("k:dead:claim") <= 30_000
    finally:
        victim.kill()
        victim.wait()
        waiter.close()


def test_stop_event_ends_a_claim_wait_at_once(redis_server: LocalRedis) -> None:
    owner = DedupCache(_settings(redis_server))
    stop = threading.Event()
    waiter = DedupCache(_settings(redis_server), stop=stop)
    try:
        assert owner.claim("k:stop", "a")
        threading.Timer(0.3, stop.set).start()
        started = time.monotonic()
        assert waiter.lookup_or_claim("k:stop", "b", timeout=60.0) is None  # the caller computes it itself
        assert time.monotonic() - started < 1.0
    finally:
        owner.close()
        waiter.close()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[LocalRedis]:
    """A redis-server of this test's own: it gets SIGSTOPped, which the session's server must never be."""
    server = start_redis(workdir=tmp_path)
    try:
        yield server
    finally:
        server.process.send_signal(signal.SIGCONT)
        server.stop()


def test_hung_redis_opens_the_breaker_and_calls_skip_it(
    own_redis: LocalRedis, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis SIGSTOPped (connections accepted, never answered): after REDIS_BREAKER_FAILURES timeouts every call
    returns at once; a background probe closes the breaker once Redis answers; one log line each way."""
    settings = _settings(own_redis, socket_timeout=0.3, breaker_failures=3, breaker_cooldown=1.0, liveness_ttl=5.0)
    cache = DedupCache(settings)
    caplog.set_level(logging.INFO, logger="consumers.dedup")
    try:
        cache.put("k:h", b"stored", "w")
        own_redis.process.send_signal(signal.SIGSTOP)
        started = time.monotonic()
        while cache.healthy and time.monotonic() - started < 10:
            assert cache.get("k:h") is None  # each waits out one socket timeout (no retry after a timeout)
        opened_after = time.monotonic() - started
        assert not cache.healthy and opened_after < 3 * 0.3 + 0.5, opened_after

        started = time.monotonic()
        for i in range(200):
            assert cache.lookup_or_claim(f"k:{i}", "w", timeout=30) is None
            assert cache.lookup_payloads(["a", "b"]) == [None, None]
            cache.put(f"k:{i}", b"v", "w")
        assert time.monotonic() - started < 0.5, "an open breaker costs no Redis round trip"
        time.sleep(2.5)  # failed background probes meanwhile: no new log lines
        own_redis.process.send_signal(signal.SIGCONT)
        deadline = time.monotonic() + 5
        while not cache.healthy and time.monotonic() < deadline:
            time.sleep(0.05)
        assert cache.healthy, "the background probe closed the breaker"
        assert cache.get("k:h") == b"stored"
    finally:
        own_redis.process.send_signal(signal.SIGCONT)
        cache.close()
    lines = [r for r in caplog.records if r.name == "consumers.dedup" and r.levelno >= logging.INFO]
    assert [r.getMessage().split(":")[0] for r in lines] == ["Redis unreachable (get", "Redis answers again"], [
        r.getMessage() for r in lines
    ]
