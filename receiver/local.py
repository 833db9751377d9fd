"""Run ``kpvid-receive`` as a child process on this machine and talk to its HTTPS API: what the
demo, the benchmarks and the tests use to bring up a real edge."""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from .tls import CERT_FILE

log = logging.getLogger(__name__)

def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class EdgeApi:
    """A receiver's HTTPS API, with the token of its viewers and senders."""

    url: str
    token: str
    ssl_context: ssl.SSLContext

    def get(self, path: str) -> dict:
        request = urllib.request.Request(self.url + path,
                                         headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(request, context=self.ssl_context, timeout=5) as response:
            return json.load(response)

    def stream(self, name: str) -> tuple[dict | None, bool]:
        """Stream ``name``'s figures (``/api/streams``), and whether it has ended."""
        state = self.get("/api/streams")
        for ended, streams in ((False, state["streams"]), (True, state["ended"])):
            found = next((s for s in streams if s["name"] == name), None)
            if found is not None:
                return found, ended
        return None, False


def trust_certificate(edge: EdgeApi, cert: Path, receiver: subprocess.Popen,
                      timeout: float = 30) -> None:
    """Wait for the receiver to write its self-signed certificate, then make ``edge`` trust it
    (the system's trust store if it never appears)."""
    deadline = time.monotonic() + timeout
    while not cert.exists() and time.monotonic() < deadline and receiver.poll() is None:
        time.sleep(0.2)
    edge.ssl_context = ssl.create_default_context(cafile=str(cert)) if cert.exists() \
        else ssl.create_default_context()


def wait_until_up(edge: EdgeApi, receiver: subprocess.Popen, timeout: float = 60) -> None:
    """Wait until the receiver answers ``/healthz``; SystemExit if it exits or times out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if receiver.poll() is not None:
            raise SystemExit(f"kpvid-receive exited with {receiver.returncode}")
        try:
            edge.get("/healthz")
            return
        except (urllib.error.URLError, ConnectionError, OSError):
            time.sleep(0.3)
    raise SystemExit("kpvid-receive did not come up in time")


def stop_process(name: str, process: subprocess.Popen, sig: int = signal.SIGTERM,
                 timeout: float = 20.0) -> None:
    """Ask ``process`` to stop with ``sig`` and wait; kill it after ``timeout`` seconds."""
    if process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        log.warning("%s did not stop within %.0f s; killing it", name, timeout)
        process.kill()
        process.wait()


@dataclass(frozen=True)
class LocalReceiver:
    """A ``kpvid-receive`` process on this machine that answers, and how to reach it."""

    process: subprocess.Popen
    edge: EdgeApi  # its API, trusting its self-signed certificate
    port: int
    cert: Path
    sender_env: dict[str, str]  # the environment for its senders (KPVID_TOKEN set)


def start_receiver(out: Path, log_file: IO[str], threads: int,
                   extra_args: Sequence[str] = (), port: int = 0) -> LocalReceiver:
    """Start ``kpvid-receive`` on the CPU with a fresh token, its state (certificate) under
    ``out/tls`` and its output in ``log_file``, and wait until it answers. SystemExit, with the
    process stopped, if it exits or does not come up."""
    port = port or free_port()
    token = secrets.token_urlsafe(12)
    env = {**os.environ, "KPVID_TOKEN": token}
    process = subprocess.Popen(
        [sys.executable, "-m", "kpvid.receiver.cli", "--cpu", "--host", "127.0.0.1",
         "--port", str(port), "--state-dir", str(out / "tls"), "--threads", str(threads),
         *extra_args],
        env=env, stdout=log_file, stderr=subprocess.STDOUT)
    cert = out / "tls" / CERT_FILE
    edge = EdgeApi(f"https://127.0.0.1:{port}", token, ssl.create_default_context())
    try:
        trust_certificate(edge, cert, process)
        wait_until_up(edge, process)
    except BaseException:
        stop_process("kpvid-receive", process, signal.SIGINT)
        raise
    return LocalReceiver(process, edge, port, cert, env)
