"""A real sender (`kpvid-send`, its own process) in a network namespace, streaming to an edge
in the test's namespace over a veth pair the test makes; then the same with `tc netem`
impairing the veth both ways, where the kernel has netem.

The plumbing (namespace, veth, a stream that plays through it) needs root, `ip` and a kernel
that lets us make namespaces; without them the tests skip and say which is missing. The netem
test also needs the kernel's `sch_netem` qdisc and skips with tc's own error where it is not
there. Every run makes its own namespace and veth names (and a random /30 of 10.201.0.0/16),
and removes them again, whatever happens."""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest

from kpvid.receiver.stream_stats import EndReason, StreamEnd
from kpvid.training.loss_models import GilbertElliott
from tests.edge_harness import EDGE_TEST_CHECKPOINT, TOKEN, running_edge, wait_for

FRAMES = 90  # 3 s at 30 fps
NETEM_FRAMES = 150  # 5 s: netem starts once the stream has, and should cover most of it
SENDER_TIMEOUT = 90.0  # s: the sender's process loads torch and the detector first


@dataclass
class VethPair:
    """A namespace `ns` holding `inner` (address `inner_ip`), and its peer `outer`
    (`outer_ip`) in the test's own namespace."""

    ns: str
    outer: str
    inner: str
    outer_ip: str
    inner_ip: str

    def in_ns(self, *command: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns, *command]

    def rx_packets(self) -> int:
        """Packets the outer end has received (from the namespace)."""
        return int(Path(f"/sys/class/net/{self.outer}/statistics/rx_packets").read_text())


def _run(command: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)


def _must(command: list[str]) -> None:
    done = _run(command)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)}: {done.stderr.strip()}")


@pytest.fixture()
def veth() -> Iterator[VethPair]:
    """A fresh namespace and veth pair, removed at the end (skips where they cannot be made)."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root (this test runs as uid "
                    f"{os.geteuid()})")
    if shutil.which("ip") is None:
        pytest.skip("no `ip` command (iproute2) to make network namespaces")
    tag = secrets.token_hex(3)
    subnet = secrets.randbelow(1 << 14) * 4  # a /30 within 10.201.0.0/16
    base = f"10.201.{subnet >> 8}.{subnet & 0xFF}"
    prefix = base.rsplit(".", 1)[0]
    pair = VethPair(ns=f"kpvid-test-{tag}", outer=f"kv{tag}o", inner=f"kv{tag}i",
                    outer_ip=f"{prefix}.{(subnet & 0xFF) + 1}",
                    inner_ip=f"{prefix}.{(subnet & 0xFF) + 2}")
    made = _run(["ip", "netns", "add", pair.ns])
    if made.returncode != 0:
        pytest.skip(f"cannot make a network namespace here: {made.stderr.strip()}")
    try:
        veth_made = _run(["ip", "link", "add", pair.outer, "type", "veth", "peer", "name",
                          pair.inner])
        if veth_made.returncode != 0:
            pytest.skip(f"cannot make a veth pair here: {veth_made.stderr.strip()}")
        entered = _run(pair.in_ns("ip", "link", "set", "lo", "up"))
        if entered.returncode != 0:
            pytest.skip(f"cannot run a command in a network namespace here: "
                        f"{entered.stderr.strip()}")
        _must(["ip", "link", "set", pair.inner, "netns", pair.ns])
        _must(["ip", "addr", "add", f"{pair.outer_ip}/30", "dev", pair.outer])
        _must(["ip", "link", "set", pair.outer, "up"])
        _must(pair.in_ns("ip", "addr", "add", f"{pair.inner_ip}/30", "dev", pair.inner))
        _must(pair.in_ns("ip", "link", "set", pair.inner, "up"))
        yield pair
    finally:
        _run(["ip", "link", "del", pair.outer])  # takes its peer with it
        _run(["ip", "netns", "del", pair.ns])


@dataclass
class Played:
    counts: dict[str, int]
    first_index: int
    end: StreamEnd | None
    packets: int  # keypoint packets the edge got
    rx_packets: int  # packets the edge's end of the veth received meanwhile
    sender_rc: int
    sender_log: str


async def play_from_namespace(tmp_path: Path, pair: VethPair, name: str, frames: int,
                              impair: list[list[str]] | None = None) -> Played:
    """An edge listening on the veth's outer address; `kpvid-send --synthetic faces` in the
    namespace streams `frames` frames to it, every one observed, `delta` coded. Once the
    stream has started, the `impair` commands run (tc, say)."""
    async with running_edge(tmp_path, host=pair.outer_ip, playout_delay=0.15,
                            idle_timeout=10.0) as edge:
        port = edge.url.rsplit(":", 1)[1]
        rx_before = pair.rx_packets()
        sender = await asyncio.create_subprocess_exec(
            *pair.in_ns(sys.executable, "-m", "kpvid.sender.cli", "--synthetic", "faces",
                        "--checkpoint", str(EDGE_TEST_CHECKPOINT),
                        "--to", f"{pair.outer_ip}:{port}", "--insecure", "--token", TOKEN,
                        "--stream", name, "--frames", str(frames), "--predict", "0",
                        "--codec", "delta"),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        output = asyncio.create_task(sender.communicate())
        try:
            await wait_for(lambda: name in edge.edge.streams or sender.returncode is not None,
                           SENDER_TIMEOUT)
            session = edge.edge.streams.get(name)
            if session is not None:
                for command in impair or []:
                    _must(command)
                await asyncio.wait_for(session.ended.wait(), SENDER_TIMEOUT)
            await asyncio.wait_for(asyncio.shield(output), SENDER_TIMEOUT)
        finally:
            if sender.returncode is None:
                sender.kill()
            stdout, _ = await output
        log = stdout.decode(errors="replace")
        assert session is not None, f"the stream never reached the edge:\n{log}"
        assert session.playout.clock.first_index is not None
        return Played(counts=asdict(session.counts), first_index=session.playout.clock.first_index,
                      end=session.end,
                      packets=session.packets, rx_packets=pair.rx_packets() - rx_before,
                      sender_rc=sender.returncode or 0, sender_log=log)


def test_a_sender_in_a_network_namespace_streams_over_a_veth(tmp_path, veth):
    """The plumbing: the sender's only way to the edge is the veth pair, and the stream plays
    through it, every frame of the stream's clock given."""
    played = asyncio.run(play_from_namespace(tmp_path, veth, "netns", FRAMES))
    print(f"netns: {played.counts}, first index {played.first_index}, {played.packets} "
          f"keypoint packets, {played.rx_packets} packets in over the veth")
    counts = played.counts
    assert played.sender_rc == 0, played.sender_log
    assert played.end is not None and played.end.reason is EndReason.SENDER_FINISHED
    ticks = FRAMES - played.first_index
    assert counts["out"] + counts["dropped"] == ticks, (counts, ticks)
    assert counts["observed"] + counts["lost"] + counts["predicted"] == ticks, (counts, ticks)
    assert counts["predicted"] == 0 and counts["observed"] > 0
    # every keypoint packet, and all the signalling and SCTP around them, crossed the veth
    assert played.rx_packets >= played.packets > 0


def _netem_available(pair: VethPair) -> None:
    """Skip unless netem can be put on the veth (the kernel may not have sch_netem)."""
    if shutil.which("tc") is None:
        pytest.skip("no `tc` command (iproute2) for netem")
    probe = _run(["tc", "qdisc", "add", "dev", pair.outer, "root", "netem", "delay", "1ms"])
    if probe.returncode != 0:
        error = probe.stderr.strip()
        if "unknown" in error.lower():
            pytest.skip(f"the kernel has no sch_netem qdisc: tc says {error!r}")
        pytest.skip(f"cannot add a netem qdisc here: tc says {error!r}")
    _must(["tc", "qdisc", "del", "dev", pair.outer, "root"])


def netem_args(rate: float = 0.2, burst_length: float = 3.0) -> list[str]:
    """netem's Gilbert-Elliott loss with the project's model's parameters (bad state: every
    packet lost, good state: none), 0-100 ms of delay (jitter reorders), 10 % duplicates."""
    model = GilbertElliott(rate, burst_length)
    return ["loss", "gemodel", f"{model.p_good_to_bad:.4%}", f"{model.p_bad_to_good:.4%}",
            "delay", "50ms", "50ms", "duplicate", "10%"]


def netem_drops(command: list[str]) -> int:
    """Packets a netem qdisc dropped, from `tc -s qdisc show`."""
    shown = _run(command)
    return sum(int(n) for n in re.findall(r"dropped (\d+)", shown.stdout))


def test_netem_on_the_veth_is_concealed(tmp_path, veth):
    """netem impairs the veth both ways once the stream has started: the playout goes on,
    losses are concealed."""
    _netem_available(veth)
    impair = [["tc", "qdisc", "add", "dev", veth.outer, "root", "netem", *netem_args()],
              veth.in_ns("tc", "qdisc", "add", "dev", veth.inner, "root", "netem",
                         *netem_args())]
    played = asyncio.run(play_from_namespace(tmp_path, veth, "netem", NETEM_FRAMES, impair))
    drops = (netem_drops(["tc", "-s", "qdisc", "show", "dev", veth.outer])
             + netem_drops(veth.in_ns("tc", "-s", "qdisc", "show", "dev", veth.inner)))
    print(f"netem: {played.counts}, first index {played.first_index}, {played.packets} "
          f"keypoint packets, netem dropped {drops}")
    counts = played.counts
    assert played.sender_rc == 0, played.sender_log
    assert played.end is not None and played.end.reason is EndReason.SENDER_FINISHED
    assert drops > 0
    # every tick gave a frame, from the first frame through at least the last one sent (a
    # bye delayed by SCTP's retransmission can let the edge play a little past it)
    ticks = counts["observed"] + counts["lost"] + counts["predicted"]
    assert counts["out"] + counts["dropped"] == ticks
    assert ticks >= NETEM_FRAMES - played.first_index
    assert counts["lost"] > 0 and counts["observed"] > 0
