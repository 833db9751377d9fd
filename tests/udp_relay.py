"""An impairing UDP relay between two aiortc peers: the packets themselves (ICE checks, DTLS
records carrying SCTP) are lost, delayed, reordered and duplicated on the way, below the data
channels.

The relay has two UDP sockets, one facing each peer. The offerer (the sender) sends to its
*offerer side* and the relay passes the datagram on, from its *answerer side*, to the answerer
(the edge), and back the same way. To make the peers talk through it, the signalling goes
through :meth:`UdpRelay.rewrite_offer` and :meth:`UdpRelay.rewrite_answer`: each description
reaches the other peer with its ICE candidates replaced by one host candidate, the relay side
facing that peer. Neither peer then knows any address of the other, so every packet (ICE
checks included) crosses the relay. The relay forwards to the first IPv4 host candidate of each
description, and once a peer has sent it a datagram, to the address that datagram came from.
aioice does not gather loopback addresses, so the relay binds to the host address that peer
uses by default (any local address works: both peers run on this machine).

Each direction has its own :class:`Impairment`: loss drawn per datagram from one of the
project's loss models (:mod:`kpvid.training.loss_models`; successive ``lost(1)`` calls walk
one Gilbert-Elliott chain), a delay drawn per datagram from ``[delay, delay + jitter]`` (so
datagrams overtake each other) and duplication (the copy gets its own delay). The relay counts
what it did per direction (:class:`DirectionStats`).

When impairment starts is the caller's choice: :attr:`UdpRelay.active` (given at
construction, switched at any time) turns both directions' impairment on or off, and a relay
that is not active forwards every datagram at once, unchanged. A real network impairs the
handshake too, so a relay made active from the start is the realistic case; but a lost
handshake packet costs seconds (aiortc's SCTP starts with a 3 s retransmission timeout, DTLS
retransmits after 1 s and more): with 20 % bursty loss each way from the first datagram, eight
seeds connected in 0.6 to 12.7 s. So the tests that measure the stream switch impairment on
once the data channels are open (the hello and the source image are impaired, and the
reliable channel has to recover), and one test impairs the handshake as well, with seeds that
connect in about 4 s and a generous timeout."""

from __future__ import annotations

import asyncio
import ipaddress
from dataclasses import dataclass, field
from types import TracebackType
from typing import cast

import numpy as np

from kpvid.training.loss_models import LossModel

Address = tuple[str, int]
RELAY_FOUNDATION = "kpvidrelay"
HOST_PRIORITY = 2130706431  # type preference 126, local preference 65535, component 1


@dataclass
class Impairment:
    """What one direction of the relay does to its datagrams while it is active."""

    loss: LossModel | None = None  # which datagrams are lost (None: none)
    delay: float = 0.0  # seconds every datagram is held at least
    jitter: float = 0.0  # plus a uniform random [0, jitter] seconds, so datagrams reorder
    duplicate: float = 0.0  # probability that a datagram that is not lost is sent twice
    seed: int = 0  # of the delays and duplicates (the loss model has its own)

    def __post_init__(self) -> None:
        if self.delay < 0 or self.jitter < 0:
            raise ValueError(f"delay and jitter must be >= 0, got {self.delay}, {self.jitter}")
        if not 0.0 <= self.duplicate <= 1.0:
            raise ValueError(f"duplicate must be a probability, got {self.duplicate}")


@dataclass
class DirectionStats:
    """What the relay did to one direction's datagrams."""

    received: int = 0  # datagrams that reached the relay
    dropped: int = 0  # of those, lost on purpose
    duplicated: int = 0  # of those, sent on twice
    forwarded: int = 0  # datagrams sent on, copies included
    reordered: int = 0  # sent on after a datagram that reached the relay later
    unroutable: int = 0  # received before the relay knew where to send them (discarded)
    held: int = 0  # datagrams (or copies) held now, waiting out their delay
    bytes_forwarded: int = 0
    max_delay: float = 0.0  # the longest hold drawn, seconds

    def as_dict(self) -> dict[str, float]:
        return dict(self.__dict__)


@dataclass
class _Direction:
    """One direction's impairment state: its random draws and the order of what it sent."""

    impairment: Impairment
    stats: DirectionStats = field(default_factory=DirectionStats)
    rng: np.random.Generator = field(init=False)
    arrivals: int = 0  # sequence number of the next datagram to reach the relay
    highest_sent: int = -1  # highest sequence number sent on so far

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.impairment.seed)

    def hold(self) -> float:
        """A delay for one datagram (or copy), seconds."""
        imp = self.impairment
        held = imp.delay + (float(self.rng.uniform(0, imp.jitter)) if imp.jitter else 0.0)
        self.stats.max_delay = max(self.stats.max_delay, held)
        return held


class _Side(asyncio.DatagramProtocol):
    """One of the relay's sockets; hands what it receives to the relay."""

    def __init__(self, relay: UdpRelay, name: str) -> None:
        self.relay = relay
        self.name = name
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's datagram transports do not subclass asyncio.DatagramTransport)
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        self.relay._received(self.name, data, (addr[0], addr[1]))

    def error_received(self, exc: Exception) -> None:  # e.g. ICMP port unreachable: ignore
        pass


class UdpRelay:
    """An impairing UDP relay between an offerer and an answerer (see the module docstring).

    Use as ``async with UdpRelay(forward=..., backward=...) as relay:``; ``forward`` impairs
    the offerer's datagrams to the answerer, ``backward`` the answerer's to the offerer."""

    def __init__(self, forward: Impairment | None = None, backward: Impairment | None = None,
                 *, active: bool = True, host: str | None = None) -> None:
        self.forward = _Direction(forward or Impairment())
        self.backward = _Direction(backward or Impairment())
        self.active = active
        self.host = host  # None: the offerer's own IPv4 host address, learnt from its offer
        self.offerer_addr: Address | None = None  # where backward datagrams go
        self.answerer_addr: Address | None = None  # where forward datagrams go
        self._sides: dict[str, _Side] = {}
        self._timers: set[asyncio.TimerHandle] = set()
        self._closed = False

    # ------------------------------------------------------------------ lifecycle
    async def __aenter__(self) -> UdpRelay:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    async def open(self, host: str) -> None:
        """Bind both sides to `host` (ephemeral ports); :meth:`rewrite_offer` does this."""
        loop = asyncio.get_running_loop()
        for name in ("offerer", "answerer"):
            side = _Side(self, name)
            await loop.create_datagram_endpoint(lambda side=side: side, local_addr=(host, 0))
            self._sides[name] = side

    def close(self) -> None:
        """Close both sockets; datagrams still held are never sent."""
        self._closed = True
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        for side in self._sides.values():
            if side.transport is not None:
                side.transport.close()

    def side_address(self, name: str) -> Address:
        """The address of the relay's ``"offerer"`` or ``"answerer"`` side."""
        side = self._sides[name]
        assert side.transport is not None
        host, port = side.transport.get_extra_info("sockname")[:2]
        return host, port

    @property
    def stats(self) -> dict[str, DirectionStats]:
        """``{"forward": ..., "backward": ...}``: what the relay did each way."""
        return {"forward": self.forward.stats, "backward": self.backward.stats}

    # ------------------------------------------------------------------ signalling
    async def rewrite_offer(self, sdp: str) -> str:
        """The offer as the answerer must get it: the offerer's candidates replaced by the
        relay's answerer side. Opens the relay's sockets on first use."""
        self.offerer_addr = first_ipv4_host_candidate(sdp)
        if not self._sides:
            await self.open(self.host or self.offerer_addr[0])
        return replace_candidates(sdp, self.side_address("answerer"))

    def rewrite_answer(self, sdp: str) -> str:
        """The answer as the offerer must get it: the answerer's candidates replaced by the
        relay's offerer side."""
        if not self._sides:
            raise RuntimeError("rewrite the offer first: it opens the relay")
        self.answerer_addr = first_ipv4_host_candidate(sdp)
        return replace_candidates(sdp, self.side_address("offerer"))

    # ------------------------------------------------------------------ datagrams
    def _received(self, side: str, data: bytes, addr: Address) -> None:
        if side == "offerer":
            self.offerer_addr = addr  # the offerer's real source address, wherever it sends from
            direction, out, target = self.forward, "answerer", self.answerer_addr
        else:
            self.answerer_addr = addr
            direction, out, target = self.backward, "offerer", self.offerer_addr
        stats = direction.stats
        stats.received += 1
        sequence = direction.arrivals
        direction.arrivals += 1
        if target is None:
            stats.unroutable += 1
            return
        if not self.active:
            self._send(direction, out, data, target, sequence)
            return
        imp = direction.impairment
        if imp.loss is not None and bool(imp.loss.lost(1)[0]):
            stats.dropped += 1
            return
        copies = 1
        if imp.duplicate and direction.rng.random() < imp.duplicate:
            stats.duplicated += 1
            copies = 2
        for _ in range(copies):
            held = direction.hold()
            if held <= 0:
                self._send(direction, out, data, target, sequence)
            else:
                self._later(held, direction, out, data, target, sequence)

    def _later(self, held: float, direction: _Direction, out: str, data: bytes,
               target: Address, sequence: int) -> None:
        def fire() -> None:
            self._timers.discard(timer)
            direction.stats.held -= 1
            self._send(direction, out, data, target, sequence)

        timer = asyncio.get_running_loop().call_later(held, fire)
        self._timers.add(timer)
        direction.stats.held += 1

    def _send(self, direction: _Direction, out: str, data: bytes, target: Address,
              sequence: int) -> None:
        transport = self._sides[out].transport
        if self._closed or transport is None or transport.is_closing():
            return
        transport.sendto(data, target)
        stats = direction.stats
        stats.forwarded += 1
        stats.bytes_forwarded += len(data)
        if sequence < direction.highest_sent:
            stats.reordered += 1
        direction.highest_sent = max(direction.highest_sent, sequence)


# ---------------------------------------------------------------------- SDP
def candidate_lines(sdp: str) -> list[str]:
    """The ``a=candidate:`` lines of a description, as written."""
    return [line for line in sdp.splitlines() if line.startswith("a=candidate:")]


def first_ipv4_host_candidate(sdp: str) -> Address:
    """(address, port) of the first UDP host candidate with an IPv4 address in `sdp`."""
    for line in candidate_lines(sdp):
        parts = line[len("a=candidate:"):].split()
        # foundation component transport priority address port "typ" type ...
        if len(parts) < 8 or parts[2].lower() != "udp" or parts[7] != "host":
            continue
        try:
            if ipaddress.ip_address(parts[4]).version == 4:
                return parts[4], int(parts[5])
        except ValueError:  # an mDNS name, not an address
            continue
    raise ValueError("the description has no IPv4 UDP host candidate")


def replace_candidates(sdp: str, address: Address) -> str:
    """`sdp` with every media section's ICE candidates replaced by one host candidate at
    `address` (put where the section's first candidate was)."""
    host, port = address
    ours = f"a=candidate:{RELAY_FOUNDATION} 1 udp {HOST_PRIORITY} {host} {port} typ host"
    out: list[str] = []
    placed = False
    for line in sdp.splitlines():
        if line.startswith("m="):
            placed = False  # a new media section
        if line.startswith("a=candidate:"):
            if not placed:
                out.append(ours)
                placed = True
            continue
        out.append(line)
    return "\r\n".join(out) + "\r\n"
