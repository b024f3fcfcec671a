"""DedupCache on a real redis-server: payload aliases, bulk lookups, TTLs, claims."""

from __future__ import annotations

import redis

from consumers.dedup import DedupCache, payload_key
from pipeline.types import Prompts, SegmentParams


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
    assert redis_client.get("k:x:claim") == b"w"
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


def test_redis_down_degrades_to_no_cache(unreachable_cache: DedupCache) -> None:
    assert unreachable_cache.lookup_payloads(["a", "b"]) == [None, None]
    assert not unreachable_cache.healthy
    unreachable_cache.alias("a", "k")  # best effort, never raises
    unreachable_cache.put("k", b"v", "w", aliases=("a",))
