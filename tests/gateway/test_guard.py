"""gateway.security in process: key checks, token buckets and the body limit on a small app that reads bodies the
way the gateway does (``request.json()``, ``request.form()``). The real gateway process is tested in
test_security.py."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.testclient import TestClient

from gateway.app import STATUS_BY_CODE, GatewaySettings
from gateway.security import (
    ApiKeys,
    GatewayGuard,
    KeyFileError,
    RateLimiter,
    digest,
    presented_key,
)

KEY_A = "alpha-key-0123456789"
KEY_B = "bravo-key-9876543210"


def _reading_app() -> FastAPI:
    """Reads bodies as gateway.app does; answers how much it read, or a 400 on any error (like _read_body)."""
    app = FastAPI()
    app.state.handled = 0

    @app.post("/json")
    async def read_json(request: Request) -> JSONResponse:
        app.state.handled += 1
        body = await request.json()
        return JSONResponse({"read": len(body.get("image", ""))})

    @app.post("/form")
    async def read_form(request: Request) -> JSONResponse:
        try:
            form = await request.form()
        except Exception as exc:  # noqa: BLE001 - as gateway.app: any form error becomes a 400
            return JSONResponse({"success": False, "code": "malformed_request", "error": str(exc)}, status_code=400)
        upload = form["image"]
        data = await upload.read() if not isinstance(upload, str) else upload.encode()
        return JSONResponse({"read": len(data)})

    @app.get("/health")
    async def health() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    return app


def _client(limit: int = 10_000, keys: ApiKeys | None = None, limiter: RateLimiter | None = None) -> TestClient:
    app = _reading_app()
    app.add_middleware(GatewayGuard, max_body_bytes=limit, keys=keys, limiter=limiter)
    return TestClient(app)


def _chunks(total: int, size: int = 1000) -> Iterator[bytes]:
    """A JSON body sent without Content-Length (chunked): the limit must be found while reading."""
    yield b'{"image": "'
    sent = 0
    while sent < total:
        yield b"A" * size
        sent += size
    yield b'"}'


# --- keys ----------------------------------------------------------------------------------------------------------


def test_keys_from_the_environment_and_a_file(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"# clients\n{digest(KEY_B)} bravo\n\n{digest('third').upper().replace('SHA256:', '')}\n")
    keys = ApiKeys.load(f" {KEY_A} ,", keys_file)
    assert len(keys) == 3 and keys.enabled
    assert keys.verify(KEY_A) == "env-1"
    assert keys.verify(KEY_B) == "bravo"
    assert keys.verify("third") == "file-4", "bare hex digests, any case, are accepted"
    for wrong in (None, "", KEY_A + "x", KEY_A[:-1], digest(KEY_A)):
        assert keys.verify(wrong) is None, wrong
    assert KEY_A not in repr(keys) and digest(KEY_A) not in repr(keys)
    assert not ApiKeys.load(None, None).enabled, "off by default"


def test_a_bad_key_file_is_refused_without_echoing_its_lines(tmp_path: Path) -> None:
    pasted = tmp_path / "pasted"
    pasted.write_text(f"{KEY_A}\n")  # a plain key where a digest belongs
    with pytest.raises(KeyFileError) as caught:
        ApiKeys.load(None, pasted)
    assert KEY_A not in str(caught.value) and ":1:" in str(caught.value)
    empty = tmp_path / "empty"
    empty.write_text("# nobody yet\n")
    with pytest.raises(KeyFileError, match="no key"):
        ApiKeys.load(None, empty)
    with pytest.raises(KeyFileError, match="cannot read"):
        ApiKeys.load(None, tmp_path / "missing")


def test_presented_key_from_bearer_or_x_api_key() -> None:
    def scope(*headers: tuple[bytes, bytes]) -> dict[str, object]:
        return {"headers": list(headers)}

    assert presented_key(scope((b"authorization", b"Bearer  abc "))) == "abc"
    assert presented_key(scope((b"authorization", b"bearer abc"))) == "abc"
    assert presented_key(scope((b"x-api-key", b"xyz"))) == "xyz"
    assert presented_key(scope((b"authorization", b"Basic dXNlcjpwdw=="))) is None
    assert presented_key(scope((b"authorization", b"Bearer "))) is None
    assert presented_key(scope()) is None


def test_hash_command_prints_the_key_file_line_and_new_makes_a_usable_key(tmp_path: Path) -> None:
    hashed = subprocess.run(
        [sys.executable, "-m", "gateway.security", "hash", "ci"], input=KEY_A, capture_output=True, text=True
    )
    assert hashed.returncode == 0, hashed.stderr
    line = hashed.stdout.strip().rpartition(": ")[2]
    assert line == f"sha256:{hashlib.sha256(KEY_A.encode()).hexdigest()} ci"
    assert KEY_A not in hashed.stdout

    made = subprocess.run([sys.executable, "-m", "gateway.security", "new"], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    key_line, file_line = made.stdout.strip().splitlines()
    key = key_line.rpartition(": ")[2]
    (tmp_path / "keys").write_text(file_line.rpartition(": ")[2] + "\n")
    assert len(key) >= 40
    assert ApiKeys.load(None, tmp_path / "keys").verify(key) == "file-1"


def test_without_a_valid_key_401_and_health_stays_open() -> None:
    client = _client(keys=ApiKeys([("a", digest(KEY_A))]))
    for headers in ({}, {"X-API-Key": KEY_B}, {"Authorization": f"Basic {KEY_A}"}):
        refused = client.post("/json", json={"image": "abc"}, headers=headers)
        assert refused.status_code == 401, headers
        assert refused.json()["code"] == "unauthorized" and refused.json()["success"] is False
        assert refused.headers["www-authenticate"].startswith("Bearer")
    assert client.post("/json", json={"image": "abc"}, headers={"Authorization": f"Bearer {KEY_A}"}).json() == {
        "read": 3
    }
    assert client.post("/json", json={"image": "abcd"}, headers={"X-API-Key": KEY_A}).json() == {"read": 4}
    assert client.get("/health").status_code == 200


def test_a_refused_key_is_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    client = _client(keys=ApiKeys([("a", digest(KEY_A))]))
    with caplog.at_level("DEBUG"):
        assert client.post("/json", json={}, headers={"X-API-Key": KEY_B}).status_code == 401
        assert client.post("/json", json={}, headers={"X-API-Key": KEY_A}).status_code == 200
    assert "unknown API key" in caplog.text
    assert KEY_A not in caplog.text and KEY_B not in caplog.text


# --- rate limit ----------------------------------------------------------------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_allows_a_burst_then_the_rate() -> None:
    clock = _Clock()
    limiter = RateLimiter(2.0, 3, clock=clock)
    assert [limiter.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("a") == pytest.approx(0.5), "the 4th waits for the next token at 2/s"
    assert limiter.take("b") == 0.0, "another identity has its own bucket"
    clock.now += 0.5
    assert limiter.take("a") == 0.0
    assert limiter.take("a") > 0
    clock.now += 60
    assert [limiter.take("a") for _ in range(4)][:3] == [0.0, 0.0, 0.0], "refills up to the burst, not beyond"
    with pytest.raises(ValueError):
        RateLimiter(0, 1)


def test_rate_limit_per_client_address_without_keys() -> None:
    app = _reading_app()
    app.add_middleware(GatewayGuard, max_body_bytes=10_000, limiter=RateLimiter(0.01, 2))
    first = TestClient(app, client=("10.0.0.1", 5000))
    second = TestClient(app, client=("10.0.0.2", 5000))
    assert [first.post("/json", json={}).status_code for _ in range(2)] == [200, 200]
    over = first.post("/json", json={})
    assert over.status_code == 429 and over.json()["code"] == "rate_limited"
    assert int(over.headers["retry-after"]) >= 1
    assert second.post("/json", json={}).status_code == 200, "another address is still served"
    assert first.get("/health").status_code == 200, "probes are not limited"


def test_rate_limit_per_key_when_keys_are_on() -> None:
    keys = ApiKeys([("a", digest(KEY_A)), ("b", digest(KEY_B))])
    client = _client(keys=keys, limiter=RateLimiter(0.01, 1))
    assert client.post("/json", json={}, headers={"X-API-Key": KEY_A}).status_code == 200
    assert client.post("/json", json={}, headers={"X-API-Key": KEY_A}).status_code == 429
    assert client.post("/json", json={}, headers={"X-API-Key": KEY_B}).status_code == 200, "same address, other key"
    assert client.post("/json", json={}).status_code == 401, "no key is refused before it costs anyone a token"


# --- body limit ----------------------------------------------------------------------------------------------------


def test_a_chunked_json_body_over_the_limit_is_a_413_and_one_under_is_read() -> None:
    client = _client(limit=10_000)
    assert client.post("/json", content=_chunks(9_000), headers={"content-type": "application/json"}).json() == {
        "read": 9_000
    }
    over = client.post("/json", content=_chunks(50_000), headers={"content-type": "application/json"})
    assert over.status_code == 413 and over.json()["code"] == "image_too_large"
    assert "GATEWAY_MAX_BODY_BYTES" in over.json()["error"]


def test_a_declared_length_over_the_limit_is_a_413_before_reading() -> None:
    app = _reading_app()
    app.add_middleware(GatewayGuard, max_body_bytes=10_000)
    over = TestClient(app).post("/json", content=b"x" * 10_001, headers={"content-type": "application/json"})
    assert over.status_code == 413 and over.json()["code"] == "image_too_large"
    assert "10001 bytes" in over.json()["error"], "refused on the declared Content-Length"
    assert app.state.handled == 0, "the application never ran"


def test_a_form_upload_over_the_limit_is_a_413_not_the_parsers_400() -> None:
    """Streamed (chunked) and declared (Content-Length): the parser's catch-all 400 is replaced by the 413."""

    def multipart(size: int) -> tuple[bytes, str]:
        request = httpx.Request("POST", "http://gateway/form", files={"image": ("x.png", b"x" * size, "image/png")})
        return request.read(), request.headers["content-type"]

    client = _client(limit=10_000)
    for size, status in ((5_000, 200), (50_000, 413)):
        body, content_type = multipart(size)
        chunked = client.post(
            "/form",
            content=iter([body[i : i + 4096] for i in range(0, len(body), 4096)]),
            headers={"content-type": content_type},
        )
        declared = client.post("/form", content=body, headers={"content-type": content_type})
        for answer in (chunked, declared):
            assert answer.status_code == status, answer.text
            expected = {"read": size} if status == 200 else {"code": "image_too_large"}
            assert expected.items() <= answer.json().items()


def test_settings_and_status_codes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_API_KEYS", KEY_A)
    monkeypatch.setenv("GATEWAY_RATE_LIMIT_PER_S", "2.5")
    monkeypatch.setenv("GATEWAY_MAX_BODY_BYTES", "2048")
    settings = GatewaySettings()
    assert settings.api_keys is not None and settings.api_keys.get_secret_value() == KEY_A
    assert settings.rate_limit_per_s == 2.5 and settings.max_body_bytes == 2048
    assert KEY_A not in repr(settings) and KEY_A not in settings.model_dump_json()
    assert STATUS_BY_CODE["unauthorized"] == 401 and STATUS_BY_CODE["rate_limited"] == 429
