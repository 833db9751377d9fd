"""receiver.tls: self-signed certificates, fingerprints, and an HTTPS server that uses them."""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
import stat
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509

from kpvid.receiver.tls import (
    CertificateError,
    certificate_fingerprint,
    ensure_certificate,
    server_ssl_context,
)


@pytest.fixture()
def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    return ensure_certificate(None, None, tmp_path / "state", ["edge.example", "10.1.2.3"])


def test_creates_self_signed_certificate(self_signed: tuple[Path, Path]) -> None:
    cert_path, key_path = self_signed
    assert cert_path.exists() and key_path.exists()
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    dns = set(san.get_values_for_type(x509.DNSName))
    ips = {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    assert {"edge.example", "localhost", socket.gethostname()} <= dns
    assert {"10.1.2.3", "127.0.0.1"} <= ips
    days = (cert.not_valid_after_utc - cert.not_valid_before_utc).days
    assert 364 <= days <= 366


def test_reuses_existing_certificate(self_signed: tuple[Path, Path], tmp_path: Path) -> None:
    cert_path, _ = self_signed
    before = certificate_fingerprint(cert_path)
    again = ensure_certificate(None, None, tmp_path / "state", ["edge.example"])
    assert again == self_signed
    assert certificate_fingerprint(cert_path) == before
    # a host the certificate does not cover yet: a new certificate
    ensure_certificate(None, None, tmp_path / "state", ["other.example"])
    assert certificate_fingerprint(cert_path) != before


def test_fingerprint_format_and_stability(self_signed: tuple[Path, Path]) -> None:
    cert_path, _ = self_signed
    fingerprint = certificate_fingerprint(cert_path)
    assert re.fullmatch(r"SHA-256 [0-9A-F]{2}(:[0-9A-F]{2}){31}", fingerprint)
    assert certificate_fingerprint(cert_path) == fingerprint


def test_given_pair_is_validated(self_signed: tuple[Path, Path], tmp_path: Path) -> None:
    cert_path, key_path = self_signed
    assert ensure_certificate(cert_path, key_path, tmp_path / "unused", []) == self_signed
    assert not (tmp_path / "unused").exists()


def test_errors(self_signed: tuple[Path, Path], tmp_path: Path) -> None:
    cert_path, key_path = self_signed
    with pytest.raises(CertificateError, match="both"):
        ensure_certificate(cert_path, None, tmp_path, [])
    with pytest.raises(CertificateError, match="both"):
        ensure_certificate(None, key_path, tmp_path, [])
    with pytest.raises(CertificateError, match="cannot read certificate"):
        ensure_certificate(tmp_path / "missing.crt", key_path, tmp_path, [])
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    with pytest.raises(CertificateError, match="not a PEM certificate"):
        ensure_certificate(garbage, key_path, tmp_path, [])
    with pytest.raises(CertificateError, match="not an unencrypted PEM private key"):
        ensure_certificate(cert_path, garbage, tmp_path, [])
    other_cert, other_key = ensure_certificate(None, None, tmp_path / "other", [])
    with pytest.raises(CertificateError, match="does not match"):
        ensure_certificate(cert_path, other_key, tmp_path, [])
    with pytest.raises(CertificateError, match="cannot load"):
        server_ssl_context(cert_path, other_key)


def test_context_loads(self_signed: tuple[Path, Path]) -> None:
    context = server_ssl_context(*self_signed)
    assert isinstance(context, ssl.SSLContext)
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2


def test_https_server_trusted_by_client(self_signed: tuple[Path, Path]) -> None:
    cert_path, key_path = self_signed

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hello over tls")

    async def main() -> tuple[int, str]:
        app = web.Application()
        app.router.add_get("/", hello)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0,
                           ssl_context=server_ssl_context(cert_path, key_path))
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        try:
            client_ctx = ssl.create_default_context(cafile=str(cert_path))
            async with aiohttp.ClientSession() as session:
                async with session.get(f"https://localhost:{port}/", ssl=client_ctx) as resp:
                    result = resp.status, await resp.text()
                # a client that does not trust the certificate is refused
                with pytest.raises(aiohttp.ClientConnectorCertificateError):
                    await session.get(f"https://localhost:{port}/",
                                      ssl=ssl.create_default_context())
                return result
        finally:
            await runner.cleanup()

    assert asyncio.run(main()) == (200, "hello over tls")
