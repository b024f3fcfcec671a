"""A real redis-server with TLS only and ACL users, and a throwaway CA that signs its certificate (tests only).

Plain functions (no fixtures), importable from any test folder like ``worker_harness``. Debian's redis-server 7 is
built with TLS: ``--port 0 --tls-port P`` serves TLS alone, ``--user NAME on >password ~* +@all`` adds an ACL user,
``--user default off`` turns off the password-less default user.
"""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from devstack.services import free_port, stop_process

#: The least a worker's ACL user needs (docs/SECURITY.md): segpipe's keys only, reads, writes, MULTI/EXEC and scripts,
#: nothing dangerous (FLUSHDB, KEYS, CONFIG, ...).
WORKER_ACL = ("~segpipe:*", "resetchannels", "-@all", "+@read", "+@write", "+@transaction", "+@scripting",
              "+@connection", "-@dangerous")  # fmt: skip


@dataclass(frozen=True)
class TlsFiles:
    """PEM files: the CA, the server's certificate (for 127.0.0.1 and localhost) and a client certificate."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    path.chmod(0o600)
    return path


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name | None,
    issuer_key: ec.EllipticCurvePrivateKey | None,
    *,
    ca: bool = False,
    server: bool = False,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer or name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
    else:
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    return builder.sign(issuer_key or key, hashes.SHA256())


def make_tls_files(directory: Path, name: str = "segpipe-test-ca") -> TlsFiles:
    """A fresh CA, a server certificate and a client certificate it signed, written under ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = _key()
    ca_cert = _certificate(name, ca_key, None, None, ca=True)
    server_key, client_key = _key(), _key()
    server_cert = _certificate("127.0.0.1", server_key, ca_cert.subject, ca_key, server=True)
    client_cert = _certificate("segpipe-worker", client_key, ca_cert.subject, ca_key)
    pem = serialization.Encoding.PEM
    (directory / "ca.pem").write_bytes(ca_cert.public_bytes(pem))
    (directory / "server.pem").write_bytes(server_cert.public_bytes(pem))
    (directory / "client.pem").write_bytes(client_cert.public_bytes(pem))
    return TlsFiles(
        ca=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=_write_key(server_key, directory / "server.key"),
        client_cert=directory / "client.pem",
        client_key=_write_key(client_key, directory / "client.key"),
    )


@dataclass
class TlsRedis:
    process: subprocess.Popen[bytes]
    host: str
    port: int
    tls: TlsFiles
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        stop_process(self.process, timeout=10)


def start_tls_redis(
    directory: Path,
    users: dict[str, str],
    *,
    rules: tuple[str, ...] = WORKER_ACL,
    auth_clients: str = "optional",
    timeout: float = 10.0,
) -> TlsRedis:
    """redis-server on 127.0.0.1 with TLS only (no plain port), ``users`` (name -> password) holding ACL ``rules``,
    and no default user."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server not installed (apt-get install -y redis-server)")
    tls = make_tls_files(directory / "tls")
    port = free_port()
    command = [
        binary,
        "--port", "0",
        "--bind", "127.0.0.1",
        "--tls-port", str(port),
        "--tls-cert-file", str(tls.server_cert),
        "--tls-key-file", str(tls.server_key),
        "--tls-ca-cert-file", str(tls.ca),
        "--tls-auth-clients", auth_clients,
        "--save", "",
        "--appendonly", "no",
        "--dir", str(directory),
    ]  # fmt: skip
    for name, password in users.items():
        command += ["--user", name, "on", f">{password}", *rules]
    command += ["--user", "default", "off"]
    log_path = directory / f"redis-tls-{port}.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)
    server = TlsRedis(process, "127.0.0.1", port, tls, log_path)
    name, password = next(iter(users.items()))
    client = redis.Redis(
        host=server.host,
        port=port,
        username=name,
        password=password,
        ssl=True,
        ssl_ca_certs=str(tls.ca),
        ssl_certfile=str(tls.client_cert),
        ssl_keyfile=str(tls.client_key),
        socket_connect_timeout=0.5,
        socket_timeout=1.0,
    )
    deadline = time.monotonic() + timeout
    try:
        while True:
            if process.poll() is not None:
                raise AssertionError(f"redis-server exited with {process.returncode}:\n{server.log()[-3000:]}")
            try:
                if client.ping():
                    return server
            except redis.RedisError:
                if time.monotonic() > deadline:
                    server.stop()
                    raise AssertionError(
                        f"redis-server (TLS) not ready in {timeout} s:\n{server.log()[-3000:]}"
                    ) from None
                time.sleep(0.02)
    finally:
        client.close()
