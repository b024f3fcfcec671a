"""The dedup cache against a real redis-server that speaks TLS only and knows no password-less default user.

A throwaway CA signs the server's certificate; the cache connects with REDIS_URL (``rediss://user:password@...``)
or with REDIS_SSL + REDIS_USERNAME + REDIS_PASSWORD, verifies the server against REDIS_SSL_CA_CERTS, and refuses
a server its CA did not sign. A second server requires client certificates (``--tls-auth-clients yes``).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis_tls_harness import WORKER_ACL, TlsRedis, make_tls_files, start_tls_redis

from consumers.dedup import DedupCache
from segpipe.config import RedisSettings

USER, PASSWORD = "segpipe-worker", "w0rker-pass:with/odd@chars"


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsRedis]:
    server = start_tls_redis(tmp_path_factory.mktemp("redis-tls"), {USER: PASSWORD, "other": "other-pass"})
    try:
        yield server
    finally:
        server.stop()


def _url(server: TlsRedis, user: str = USER, password: str = PASSWORD, scheme: str = "rediss") -> str:
    from urllib.parse import quote

    return f"{scheme}://{quote(user, safe='')}:{quote(password, safe='')}@{server.host}:{server.port}/3"


def _round_trip(settings: RedisSettings) -> DedupCache:
    """Store and read back through the cache (claim, put, alias lookup): the calls a worker makes."""
    cache = DedupCache(settings)
    key = f"segpipe:tls-test:{uuid.uuid4().hex}"
    try:
        assert cache.lookup_or_claim(key, "w", timeout=1) is None
        cache.put(key, b"stored over TLS", "w", aliases=(f"{key}:alias",))
        assert cache.get(key) == b"stored over TLS"
        assert cache.lookup_payloads([f"{key}:alias"]) == [b"stored over TLS"]
        assert cache.healthy
    finally:
        cache.close()
    return cache


def test_dedup_cache_over_tls_with_an_acl_user_from_redis_url(
    tls_redis: TlsRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_URL", _url(tls_redis))
    monkeypatch.setenv("REDIS_SSL_CA_CERTS", str(tls_redis.tls.ca))
    settings = RedisSettings()
    cache = _round_trip(settings)
    assert cache.client.connection_pool.connection_kwargs["username"] == USER  # the only user on
    assert cache.client.connection_pool.connection_kwargs["db"] == 3
    assert PASSWORD not in repr(settings) and PASSWORD not in settings.display_url
    assert settings.display_url == f"rediss://{USER}@127.0.0.1:{tls_redis.port}/3"


def test_dedup_cache_over_tls_from_separate_variables(tls_redis: TlsRedis, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "REDIS_HOST": tls_redis.host,
        "REDIS_PORT": str(tls_redis.port),
        "REDIS_SSL": "true",
        "REDIS_USERNAME": USER,
        "REDIS_PASSWORD": PASSWORD,
        "REDIS_SSL_CA_CERTS": str(tls_redis.tls.ca),
    }.items():
        monkeypatch.setenv(name, value)
    cache = _round_trip(RedisSettings())
    assert cache.client.connection_pool.connection_kwargs["username"] == USER  # the only user on


def test_the_worker_acl_allows_the_cache_and_nothing_else(tls_redis: TlsRedis) -> None:
    """The users here hold docs/SECURITY.md's ACL: segpipe's keys only, no FLUSHDB, KEYS or CONFIG."""
    assert "~segpipe:*" in WORKER_ACL
    client = RedisSettings(url=_url(tls_redis), ssl_ca_certs=str(tls_redis.tls.ca)).client()
    try:
        client.set("segpipe:acl-probe", b"1", ex=10)
        for forbidden in (
            lambda: client.set("other-app:key", b"1"),
            lambda: client.get("other-app:key"),
            client.flushdb,
            lambda: client.keys("*"),
            lambda: client.config_get("*"),
        ):
            with pytest.raises(redis.exceptions.NoPermissionError):
                forbidden()
    finally:
        client.close()


@pytest.mark.parametrize(
    "case",
    ["wrong-password", "no-user", "plain-text", "unknown-ca"],
)
def test_the_cache_refuses_or_degrades_without_the_right_credentials_or_ca(
    tls_redis: TlsRedis, tmp_path: Path, case: str
) -> None:
    """Each of these cannot reach the data: the cache reports unhealthy and answers 'no cache' (work goes on)."""
    ca = str(tls_redis.tls.ca)
    settings = {
        "wrong-password": RedisSettings(url=_url(tls_redis, password="guess"), ssl_ca_certs=ca),
        # Only a password: redis-py logs in as 'default', which this server has turned off.
        "no-user": RedisSettings(
            host=tls_redis.host, port=tls_redis.port, ssl=True, password=PASSWORD, ssl_ca_certs=ca
        ),
        "plain-text": RedisSettings(url=_url(tls_redis, scheme="redis")),
        "unknown-ca": RedisSettings(url=_url(tls_redis), ssl_ca_certs=str(make_tls_files(tmp_path / "other").ca)),
    }[case]
    probe = settings.client(socket_timeout=2, socket_connect_timeout=2, retry=Retry(NoBackoff(), 0))
    with pytest.raises(redis.RedisError):
        probe.ping()
    probe.close()
    # One failure opens the breaker here (the default waits for 3 in a row), so one call shows the outcome.
    cache = DedupCache(settings.model_copy(update={"socket_timeout": 2.0, "breaker_failures": 1}))
    try:
        assert cache.get("anything") is None
        assert not cache.healthy
    finally:
        cache.close()


def test_client_certificates_when_the_server_requires_them(tmp_path: Path) -> None:
    server = start_tls_redis(tmp_path, {USER: PASSWORD}, auth_clients="yes")
    try:
        base = {"url": _url(server), "ssl_ca_certs": str(server.tls.ca)}
        without = RedisSettings(**base).client(socket_timeout=2, socket_connect_timeout=2, retry=Retry(NoBackoff(), 0))
        with pytest.raises(redis.RedisError):
            without.ping()
        without.close()
        settings = RedisSettings(
            **base, ssl_certfile=str(server.tls.client_cert), ssl_keyfile=str(server.tls.client_key)
        )
        assert _round_trip(settings).healthy
    finally:
        server.stop()
