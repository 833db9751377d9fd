"""The edge's IntraRequests, on a session driven by hand with a fake clock: they go on `kp`,
are asked again while the `delta` chain stays broken, stop once a payload decodes, keep to a
bounded rate whatever arrives, and a copy goes on `ctrl` at a slower rate."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import asdict
from types import SimpleNamespace
from typing import cast

import pytest

from kpvid.protocol import (
    DEFAULT_INTRA_INTERVAL,
    Hello,
    IntraRequest,
    KeypointEncoder,
    Keypoints,
    Message,
)
from kpvid.receiver import stream
from kpvid.receiver.metrics import ReceiverMetrics
from kpvid.receiver.stream import SessionOptions, StreamSession
from kpvid.receiver.synthesis import SynthesisEngine
from tests.test_keypoint_stream import motion

FPS = 30.0
HELLO = Hello(stream="s", fps=FPS, observe=1, predict=0, frame_size=64, num_kp=10,
              model_id="m", codec="delta", start_time=0.0)


class Session:
    """A StreamSession on a fake monotonic clock, its IntraRequests recorded per channel."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, loop: asyncio.AbstractEventLoop,
                 frames: int = 100, intra_interval: int = DEFAULT_INTRA_INTERVAL) -> None:
        self.loop = loop
        self.now = 100.0
        monkeypatch.setattr(stream, "time", SimpleNamespace(
            monotonic=lambda: self.now, time=time.time, strftime=time.strftime))
        self.sent: dict[str, list[Message]] = {"kp": [], "ctrl": []}
        self.session = StreamSession(HELLO, engine=cast(SynthesisEngine, None),
                                     metrics=ReceiverMetrics(),
                                     send_ctrl=self.sent["ctrl"].append,
                                     send_kp=self.sent["kp"].append, options=SessionOptions())
        self.value, self.jacobian = motion(frames)
        self.encoder = KeypointEncoder("delta", intra_interval)

    def payload(self, index: int) -> bytes:
        """Frame `index`'s payload, coded as the sender codes it (whether it arrives or not)."""
        return self.encoder.encode(index, self.value[index], self.jacobian[index])

    def arrive(self, index: int, payload: bytes, at: float) -> None:
        self.now = at
        message = Keypoints(index, 0, 0, "delta", payload)
        self.loop.run_until_complete(self.session.handle(message, len(payload)))

    def asked(self) -> tuple[int, int]:
        """IntraRequests sent so far: (on kp, on ctrl)."""
        assert all(isinstance(m, IntraRequest) for m in self.sent["kp"] + self.sent["ctrl"])
        assert asdict(self.session.intake.intra_requests) == {channel: len(messages)
                                               for channel, messages in self.sent.items()}
        return len(self.sent["kp"]), len(self.sent["ctrl"])


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def test_asked_on_kp_again_after_the_interval_until_a_payload_decodes(monkeypatch, loop):
    s = Session(monkeypatch, loop)
    options = s.session.options
    assert (options.intra_request_interval, options.intra_request_ctrl_interval) == (0.1, 0.5)
    start = s.now
    s.arrive(0, s.payload(0), start)
    s.payload(1)  # lost: every payload after it waits for it
    assert s.asked() == (0, 0)
    asked = []
    for i in range(2, 20):  # a packet every 35 ms, the chain broken throughout
        s.arrive(i, s.payload(i), start + i * 0.035)
        asked.append(s.asked())
    # on kp at once, then at the first packet 0.1 s or more after the last request; on ctrl
    # at once and again after 0.5 s
    assert asked[:7] == [(1, 1), (1, 1), (1, 1), (2, 1), (2, 1), (2, 1), (3, 1)]
    assert asked[-1] == (6, 2)
    s.encoder.request_intra()  # the sender got one: the chain restarts
    for i in range(20, 60):
        s.arrive(i, s.payload(i), start + i * 0.035)
    assert s.asked() == (6, 2)  # nothing more once a payload decodes
    assert s.session.packets == 59 and s.session.intake.decoder.waiting == 0


def test_a_straggler_behind_a_decoded_set_asks_for_nothing(monkeypatch, loop):
    s = Session(monkeypatch, loop)
    for i in range(4):
        s.arrive(i, s.payload(i), s.now + 1 / FPS)
    s.payload(4)  # lost
    late = s.payload(5)  # on 4: it comes after the intra payload below
    s.encoder.request_intra()
    for i in range(6, 40):  # 6 is intra, the others decode on it
        s.arrive(i, s.payload(i), s.now + 1 / FPS)
        if i == 7:
            s.arrive(5, late, s.now)
            assert s.session.intake.decoder.waiting == 1  # 5 waits for 4, which may yet come ...
    assert s.asked() == (0, 0)  # ... but the chain goes on: nothing to ask for
    assert s.session.intake.decoder.waiting == 0  # given up once 4 is older than every reference


def test_the_request_rate_is_bounded_whatever_arrives(monkeypatch, loop):
    s = Session(monkeypatch, loop, frames=1001, intra_interval=10**6)
    s.payload(0)  # lost: nothing will ever decode
    start = s.now
    for i in range(1, 1001):  # 2000 waiting payloads in 1 s, each one twice
        payload = s.payload(i)
        s.arrive(i, payload, start + i / 1000)
        s.arrive(i, payload, start + i / 1000 + 0.0005)
    assert s.session.packets == 2000
    kp, ctrl = s.asked()
    assert kp in (10, 11) and ctrl in (2, 3)  # at most one per 0.1 s, and per 0.5 s
