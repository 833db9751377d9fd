"""docker-compose.yml and the Dockerfile: services, ports, GPU, and every CLI flag they use is a
real flag of the CLI it is given to (checked with the CLIs' own argparse parsers)."""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from kpvid.receiver.cli import build_parser as receiver_parser
from kpvid.sender.cli import build_parser as sender_parser

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
ENV = {"KPVID_TOKEN": "compose-token", "TURN_PASSWORD": "turn-secret",
       "KPVID_PUBLIC_IP": "203.0.113.7"}
PARSERS = {"kpvid-receive": receiver_parser, "kpvid-send": sender_parser}

_VARIABLE = re.compile(r"\$(?:\$|\{(\w+)(?:(:?[?-])([^}]*))?\})")


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's variable syntax: ${VAR}, ${VAR:-default}, ${VAR:?error}, $$."""
    def substitute(match: re.Match) -> str:
        name, op, arg = match.groups()
        if name is None:
            return "$"
        value = env.get(name)
        if op in (":-", "-"):
            return value if value else arg
        if op in (":?", "?") and not value:
            raise KeyError(f"{name}: {arg}")
        return value or ""
    return _VARIABLE.sub(substitute, text)


def resolve(node: Any, env: dict[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [resolve(item, env) for item in node]
    if isinstance(node, dict):
        return {key: resolve(value, env) for key, value in node.items()}
    return node


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    return resolve(yaml.safe_load(COMPOSE.read_text()), ENV)["services"]


def command(service: dict[str, Any]) -> list[str]:
    cmd = service["command"]
    return shlex.split(cmd) if isinstance(cmd, str) else list(cmd)


def parse_cli(argv: list[str]) -> argparse.Namespace:
    """Parse ``argv`` with the parser of the kpvid CLI it names; fail on any unknown flag."""
    parser = PARSERS[argv[0]]()
    try:
        return parser.parse_args(argv[1:])
    except SystemExit:
        pytest.fail(f"{argv[0]} rejects the arguments compose gives it: {shlex.join(argv)}")


def test_services_and_images(services: dict[str, Any]) -> None:
    assert set(services) == {"edge", "sender", "turn"}
    assert services["edge"]["build"] == "."
    assert services["sender"]["image"] == services["edge"]["image"]
    assert services["turn"]["image"].split(":")[0] == "coturn/coturn"
    assert "edge" in services["sender"]["depends_on"]


def test_ports(services: dict[str, Any]) -> None:
    assert "8443:8443" in services["edge"]["ports"]
    turn_ports = services["turn"]["ports"]
    assert {"3478:3478/udp", "3478:3478/tcp"} <= set(turn_ports)
    turn_args = command(services["turn"])
    low = int(next(a for a in turn_args if a.startswith("--min-port=")).split("=")[1])
    high = int(next(a for a in turn_args if a.startswith("--max-port=")).split("=")[1])
    assert f"{low}-{high}:{low}-{high}/udp" in turn_ports  # the relay ports are published


def test_edge_reserves_a_gpu(services: dict[str, Any]) -> None:
    devices = services["edge"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    args = parse_cli(command(services["edge"]))
    assert args.gpu == 0 and not args.cpu


def test_edge_command(services: dict[str, Any]) -> None:
    argv = command(services["edge"])
    assert argv[0] == "kpvid-receive"
    args = parse_cli(argv)
    assert (args.host, args.port, args.token) == ("0.0.0.0", 8443, ENV["KPVID_TOKEN"])
    assert args.ice_server == ["turn:turn:3478"]
    assert (args.ice_username, args.ice_credential) == ("kpvid", ENV["TURN_PASSWORD"])
    mounts = {v.split(":")[1] for v in services["edge"]["volumes"]}
    assert str(args.record) in mounts and str(args.state_dir) in mounts


def test_sender_command(services: dict[str, Any]) -> None:
    argv = command(services["sender"])
    assert argv[0] == "kpvid-send"
    args = parse_cli(argv)
    assert args.to == ("edge", 8443) and args.insecure and args.loop
    assert args.token == ENV["KPVID_TOKEN"]
    assert "./media:/media:ro" in services["sender"]["volumes"]
    assert str(args.video).startswith("/media/")


def test_turn_credentials_match_the_edge(services: dict[str, Any]) -> None:
    turn_args = command(services["turn"])
    assert "--lt-cred-mech" in turn_args and "--realm=kpvid" in turn_args
    edge = parse_cli(command(services["edge"]))
    assert f"--user={edge.ice_username}:{edge.ice_credential}" in turn_args


def test_secrets_are_required() -> None:
    raw = yaml.safe_load(COMPOSE.read_text())
    for name in ("KPVID_TOKEN", "TURN_PASSWORD"):
        env = {k: v for k, v in ENV.items() if k != name}
        with pytest.raises(KeyError, match=name):
            resolve(raw, env)


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()]
    return [tuple(line.split(None, 1)) for line in lines if line and not line.startswith("#")]


def test_dockerfile() -> None:
    tomllib = pytest.importorskip("tomllib")
    steps = dockerfile_instructions()
    assert steps[0] == ("FROM", "python:3.11-slim")
    runs = [arg for op, arg in steps if op == "RUN"]
    torch_step = next(i for i, r in enumerate(runs) if "pip install" in r and "torch==" in r)
    project_step = next(i for i, r in enumerate(runs) if re.search(r"pip install \.(\s|$)", r))
    assert torch_step < project_step

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    torch_pin = next(d for d in pyproject["project"]["dependencies"] if d.startswith("torch"))
    assert torch_pin.replace(" ", "") in runs[torch_step]

    copied: set[str] = set()
    for op, arg in steps:
        if op == "COPY":
            *sources, _ = arg.split()
            for source in sources:
                assert (ROOT / source).exists(), f"Dockerfile copies missing {source}"
                copied.add(source.rstrip("/"))
    ignored = {line.strip().rstrip("/") for line in (ROOT / ".dockerignore").read_text()
               .splitlines() if line.strip() and not line.startswith("#")}
    assert not copied & ignored, ".dockerignore drops files the Dockerfile copies"
    package_dirs = set(pyproject["tool"]["setuptools"]["package-dir"].values())
    assert package_dirs <= copied, f"not copied into the image: {package_dirs - copied}"
    assert {"pyproject.toml", pyproject["project"]["readme"]} <= copied

    cmd = next(arg for op, arg in steps if op == "CMD")
    argv = json.loads(cmd)
    assert argv[0] == "kpvid-receive" and argv[0] in pyproject["project"]["scripts"]
    parse_cli(argv)


def docker_compose_usable() -> bool:
    if shutil.which("docker") is None:
        return False
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
    return probe.returncode == 0


@pytest.mark.skipif(not docker_compose_usable(),
                    reason="`docker compose` is not available here (docker CLI or compose "
                           "plugin missing); the YAML checks above still ran")
def test_docker_compose_config() -> None:
    result = subprocess.run(["docker", "compose", "-f", str(COMPOSE), "config", "--quiet"],
                            capture_output=True, text=True, timeout=60,
                            env={**os.environ, **ENV}, cwd=ROOT)
    assert result.returncode == 0, result.stderr
