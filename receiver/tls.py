"""TLS for the edge receiver: use the operator's certificate or make a self-signed one.

Browsers only grant WebRTC and media autoplay to secure origins, so the receiver always serves
HTTPS. Without ``--cert/--key`` it creates (once) a self-signed certificate in its state folder
and logs its fingerprint so a viewer can compare it with what the browser shows.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import os
import socket
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

log = logging.getLogger(__name__)

CERT_FILE = "kpvid-selfsigned.crt"
KEY_FILE = "kpvid-selfsigned.key"
VALIDITY = dt.timedelta(days=365)
DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")


class CertificateError(ValueError):
    """The certificate or key given is missing, unreadable or inconsistent."""


def ensure_certificate(cert_path: Path | None, key_path: Path | None, state_dir: Path,
                       hosts: list[str]) -> tuple[Path, Path]:
    """The (certificate, key) paths to serve with.

    With both paths: check that they exist and parse, and that the key matches the certificate.
    With neither: reuse or create a self-signed certificate in ``state_dir`` whose SAN holds
    ``hosts`` plus localhost, 127.0.0.1, ::1 and this machine's hostname.
    """
    if (cert_path is None) != (key_path is None):
        raise CertificateError("give both --cert and --key, or neither for a self-signed one")
    if cert_path is not None and key_path is not None:
        _check_pair(Path(cert_path), Path(key_path))
        return Path(cert_path), Path(key_path)

    state_dir = Path(state_dir)
    cert_path, key_path = state_dir / CERT_FILE, state_dir / KEY_FILE
    names = _san_names(hosts)
    if cert_path.exists() and key_path.exists():
        try:
            cert = _check_pair(cert_path, key_path)
        except CertificateError as exc:
            log.warning("replacing unusable self-signed certificate: %s", exc)
        else:
            if _covers(cert, names) and cert.not_valid_after_utc > _now() + dt.timedelta(days=1):
                return cert_path, key_path
            log.info("self-signed certificate expired or lacks a host name; making a new one")
    _write_self_signed(cert_path, key_path, names)
    log.info("created self-signed certificate %s for %s (%s)", cert_path, ", ".join(names),
             certificate_fingerprint(cert_path))
    return cert_path, key_path


def certificate_fingerprint(cert_path: Path) -> str:
    """SHA-256 fingerprint as browsers show it: ``"SHA-256 AB:CD:..."``."""
    digest = _load_cert(Path(cert_path)).fingerprint(hashes.SHA256())
    return "SHA-256 " + ":".join(f"{b:02X}" for b in digest)


def server_ssl_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server-side context (TLS 1.2+) loaded with the certificate chain and key."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as exc:
        raise CertificateError(f"cannot load certificate {cert} with key {key}: {exc}") from exc
    return context


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _san_names(hosts: list[str]) -> list[str]:
    names: list[str] = []
    for name in [*hosts, *DEFAULT_HOSTS, socket.gethostname()]:
        name = name.strip().strip("[]")
        if name and name not in ("0.0.0.0", "::") and name not in names:
            names.append(name)
    return names


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _covers(cert: x509.Certificate, names: list[str]) -> bool:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    present = {str(v) for v in san.get_values_for_type(x509.DNSName)}
    present |= {str(v) for v in san.get_values_for_type(x509.IPAddress)}
    return all(str(_general_name(n).value) in present for n in names)


def _write_self_signed(cert_path: Path, key_path: Path, names: list[str]) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0]),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "kpvid edge receiver")])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.SubjectAlternativeName([_general_name(n) for n in names]),
                       critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False),
                       critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                       critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    key_bytes = key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption())
    key_path.unlink(missing_ok=True)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key_bytes)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _load_cert(cert_path: Path) -> x509.Certificate:
    try:
        data = cert_path.read_bytes()
    except OSError as exc:
        raise CertificateError(f"cannot read certificate {cert_path}: {exc}") from exc
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise CertificateError(f"{cert_path} is not a PEM certificate: {exc}") from exc


def _check_pair(cert_path: Path, key_path: Path) -> x509.Certificate:
    cert = _load_cert(cert_path)
    try:
        data = key_path.read_bytes()
    except OSError as exc:
        raise CertificateError(f"cannot read key {key_path}: {exc}") from exc
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise CertificateError(f"{key_path} is not an unencrypted PEM private key: {exc}") from exc
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    if (key.public_key().public_bytes(serialization.Encoding.PEM, public)
            != cert.public_key().public_bytes(serialization.Encoding.PEM, public)):
        raise CertificateError(f"key {key_path} does not match certificate {cert_path}")
    return cert
