"""Faults: the edge goes away and comes back (a real sender finds it again on its own); a
sender restarts (its stream plays on to the same viewers); a viewer leaves (the others do not
notice); the receiver process is stopped (every recording is finalised with every frame)."""

from __future__ import annotations

import ast
import asyncio
import re
import signal
import ssl
import subprocess
import sys
import time
from dataclasses import asdict

import aiohttp
import aioice.ice
import av

from kpvid.protocol import Bye, encode_message
from kpvid.receiver.local import free_port
from kpvid.receiver.stream_stats import EndReason
from kpvid.receiver.tls import CERT_FILE
from kpvid.sender.client import SenderOptions, run_sender
from kpvid.sender.keypoints import KeypointExtractor
from kpvid.sender.sources import SyntheticSource
from kpvid.sender.stats import SenderStats
from tests.edge_harness import (
    EDGE_TEST_CHECKPOINT,
    TOKEN,
    RawSender,
    running_edge,
    synthetic_clip,
    wait_for,
)
from tests.viewer_peer import ViewerPeer


def playing(edge, name: str, frames: int) -> bool:
    """Whether `edge` has a live stream `name` that has put out at least `frames` frames."""
    session = edge.edge.streams.get(name)
    return session is not None and session.counts.out >= frames


def test_a_sender_reconnects_to_a_restarted_edge_under_the_same_name(tmp_path):
    port = free_port()

    async def scenario() -> tuple[int, SenderStats, float]:
        extractor = KeypointExtractor.from_checkpoint(EDGE_TEST_CHECKPOINT)
        # 30 s of frames: longer than the test
        source = SyntheticSource("faces", seed=5, size=64, fps=30.0, length=900)
        stats, stop = SenderStats(), asyncio.Event()
        async with running_edge(tmp_path, port=port) as edge:
            options = SenderOptions(host="localhost", port=port, token=TOKEN,
                                    ca_file=str(edge.cert), stream="cam")
            sender = asyncio.create_task(run_sender(source, extractor, options, stats, stop))
            await wait_for(lambda: playing(edge, "cam", 30), 20)
        # the edge is gone (its peers closed, its port free); a new one on the same port
        gone_at = asyncio.get_running_loop().time()
        async with running_edge(tmp_path, port=port) as edge:
            await wait_for(lambda: playing(edge, "cam", 30), 20)
            resumed_after = asyncio.get_running_loop().time() - gone_at
            stop.set()
            code = await asyncio.wait_for(sender, 10)
        return code, stats, resumed_after

    code, stats, resumed_after = asyncio.run(scenario())
    assert code == 0
    assert stats.reconnects >= 1
    # the first retry comes 0.5 s after the loss; a new edge starts at once here
    assert resumed_after < 10, resumed_after


# ------------------------------------------------------------------ a sender restarts
class EdgeClock:
    """When the edge got each sender offer, each hello (a session opened) and each session's
    first frame out, in time.monotonic()."""

    def __init__(self, edge) -> None:
        self.offers: list[float] = []
        self.sessions: list[dict] = []
        accept = edge.edge.accept_sender

        async def timed_accept(offer, remote):
            self.offers.append(time.monotonic())
            return await accept(offer, remote)

        edge.edge.accept_sender = timed_accept
        edge.edge.stream_opened.append(self._opened)

    def _opened(self, session) -> None:
        record = {"session": session, "hello": time.monotonic(), "out": None}

        def first_out(frame_index, frame, capture_time) -> None:
            if record["out"] is None:
                record["out"] = time.monotonic()

        session.sinks.append(first_out)
        self.sessions.append(record)

    def offer_before(self, moment: float) -> float:
        return max(at for at in self.offers if at <= moment)


class Senders:
    """Real senders (`run_sender`) in this process, the keypoint model loaded once, so that a
    restart costs what it costs the edge and the network, not torch's start-up."""

    def __init__(self, edge, port: int) -> None:
        self.edge, self.port = edge, port
        self.extractor = KeypointExtractor.from_checkpoint(EDGE_TEST_CHECKPOINT)

    def start(self, name: str, seed: int) -> tuple[asyncio.Task, asyncio.Event]:
        options = SenderOptions(host="localhost", port=self.port, token=TOKEN,
                                ca_file=str(self.edge.cert), stream=name)
        source = SyntheticSource("faces", seed=seed, size=64, fps=30.0, length=120)
        stop = asyncio.Event()
        return asyncio.create_task(run_sender(source, self.extractor, options,
                                              stop=stop)), stop


def test_a_restarted_sender_resumes_within_2_s_to_the_same_viewer(tmp_path):
    """The sender stops (bye) and a new one of the same name starts at once; then a third
    takes over the live stream (as a sender whose old connection the edge still thinks live).
    The viewer's peer connection stays up throughout, and frames of each new session reach it
    within 2 s of the edge getting its hello."""
    port = free_port()
    RESUME_LIMIT = 2.0

    async def scenario() -> dict:
        async with running_edge(tmp_path, port=port, idle_timeout=3.0) as edge:
            clock = EdgeClock(edge)
            senders = Senders(edge, port)
            first, stop_first = senders.start("cam", seed=3)
            await wait_for(lambda: playing(edge, "cam", 10), 30)
            viewer = ViewerPeer(edge)
            assert await viewer.connect("cam") == 200
            await wait_for(lambda: len(viewer.arrivals) >= 30, 20)

            # 1. a graceful restart: bye, the stream ends, a new sender starts right away
            stopped_at = time.monotonic()
            stop_first.set()
            assert await asyncio.wait_for(first, 10) == 0
            second, stop_second = senders.start("cam", seed=4)
            await wait_for(lambda: len(clock.sessions) == 2 and clock.sessions[1]["out"]
                           and viewer.first_after(clock.sessions[1]["out"]), 20)
            restart = clock.sessions[1]
            seen = viewer.first_after(restart["out"])
            figures = {
                "restart_hello_to_viewer": seen - restart["hello"],
                "restart_offer_to_viewer": seen - clock.offer_before(restart["hello"]),
                "restart_stop_to_viewer": seen - stopped_at,
                "restart_viewer_gap": viewer.largest_gap(stopped_at, seen),
            }
            await wait_for(lambda: viewer.frames_since(seen) >= 30, 20)

            # 2. a takeover: a new sender of the same name while the stream is live
            # the old one stops when the new one says hello (else it would reconnect and take
            # the name back)
            edge.edge.stream_opened.append(lambda session: stop_second.set())
            takeover_at = time.monotonic()
            third, stop_third = senders.start("cam", seed=5)
            await wait_for(lambda: len(clock.sessions) == 3 and clock.sessions[2]["out"]
                           and viewer.first_after(clock.sessions[2]["out"]), 20)
            assert await asyncio.wait_for(second, 10) == 0
            takeover = clock.sessions[2]
            seen = viewer.first_after(takeover["out"])
            figures.update(
                takeover_hello_to_viewer=seen - takeover["hello"],
                takeover_offer_to_viewer=seen - clock.offer_before(takeover["hello"]),
                takeover_viewer_gap=viewer.largest_gap(takeover_at, seen))
            await wait_for(lambda: viewer.frames_since(seen) >= 30, 20)

            # one viewer connection all along, counted on whichever session is live
            assert not viewer.ended.is_set() and viewer.pc.connectionState == "connected"
            assert len(edge.edge._viewers) == 1
            assert edge.edge.streams["cam"].viewers == 1
            assert [e.ended.reason for e in edge.edge.ended] == [  # type: ignore[union-attr]
                EndReason.SENDER_FINISHED, EndReason.REPLACED]
            # the viewer's clock never went back
            pts = [p for _, p in viewer.arrivals]
            assert all(b > a for a, b in zip(pts, pts[1:], strict=False))
            stop_third.set()
            assert await asyncio.wait_for(third, 10) == 0
            await viewer.close()
        return figures

    figures = asyncio.run(scenario())
    print({name: round(value, 3) for name, value in figures.items()})
    # the promise: from the edge's hello of the new session to frames at the same viewer
    assert figures["restart_hello_to_viewer"] < RESUME_LIMIT, figures
    assert figures["takeover_hello_to_viewer"] < RESUME_LIMIT, figures


def test_viewers_of_a_stream_that_does_not_come_back_are_closed_after_the_grace(tmp_path):
    clip = synthetic_clip(2)

    async def scenario() -> None:
        async with running_edge(tmp_path, idle_timeout=10.0) as edge:
            edge.edge.options.resume_grace = 1.0
            sender = RawSender(edge)
            await sender.connect()
            await sender.start_stream("cam", clip[0])
            await wait_for(lambda: "cam" in edge.edge.streams, 10)
            viewer = ViewerPeer(edge)
            assert await viewer.connect("cam") == 200
            await wait_for(lambda: viewer.pc.connectionState == "connected", 10)
            sender.ctrl.send(encode_message(Bye("done")))
            await wait_for(lambda: "cam" not in edge.edge.streams, 5)
            ended = time.monotonic()
            _, listed = await edge.request("GET", "/api/streams")
            assert listed["streams"] == [] and listed["edge"] == edge.edge.instance
            [resuming] = listed["resuming"]
            assert resuming["name"] == "cam" and resuming["viewers"] == 1
            assert 0 < resuming["closes_in"] <= 1.0
            assert len(edge.edge._viewers) == 1 and not viewer.ended.is_set()
            # no sender of that name: the viewer is closed once the grace is over
            await asyncio.wait_for(viewer.ended.wait(), 10)
            assert time.monotonic() - ended >= 0.9
            assert not edge.edge._viewers and not edge.edge.outputs
            _, listed = await edge.request("GET", "/api/streams")
            assert listed["resuming"] == []
            await viewer.close()
            await sender.close()

    asyncio.run(scenario())


# ------------------------------------------------------------------ a viewer leaves
def vanish(viewer: ViewerPeer) -> None:
    """The viewer disappears without a word, as a killed browser does: its UDP sockets close
    and nothing (no DTLS alert, no RTCP bye) goes to the edge."""
    ice = viewer.pc.getTransceivers()[0].receiver.transport.transport._connection
    if ice._query_consent_task is not None:
        ice._query_consent_task.cancel()
    for protocol in ice._protocols:
        protocol.transport.close()


def test_a_viewer_leaving_does_not_disturb_the_others(tmp_path, monkeypatch):
    """Three viewers; one hangs up, one vanishes. The third gets the stream's frames at the
    same rate before and after, the stream drops nothing because of them, the one that hung
    up frees its slot at once and the one that vanished when ICE consent expires (here after
    about 1.5 s instead of aioice's 6 checks 5 s apart)."""
    WINDOW = 3.0
    monkeypatch.setattr(aioice.ice, "CONSENT_INTERVAL", 0.25)

    async def scenario() -> dict:
        async with running_edge(tmp_path, idle_timeout=3.0) as edge:
            port = int(edge.url.rsplit(":", 1)[1])
            sender, stop = Senders(edge, port).start("cam", seed=3)
            await wait_for(lambda: playing(edge, "cam", 10), 30)
            session = edge.edge.streams["cam"]
            leaver, ghost, stayer = ViewerPeer(edge), ViewerPeer(edge), ViewerPeer(edge)
            for viewer in (leaver, ghost, stayer):
                assert await viewer.connect("cam") == 200
            await wait_for(lambda: all(len(v.arrivals) >= 15 for v in (leaver, ghost, stayer)),
                           20)

            async def window() -> dict:
                start, counts = time.monotonic(), asdict(session.counts)
                await asyncio.sleep(WINDOW)
                end = time.monotonic()
                out = session.counts.out - counts["out"]
                return {"edge_fps": out / WINDOW, "viewer_fps": stayer.rate(start, end),
                        "dropped": session.counts.dropped - counts["dropped"],
                        "lost": session.counts.lost - counts["lost"]}

            before = await window()
            await leaver.close()  # hangs up: its slot is freed at once
            vanish(ghost)  # gone without a word
            vanished = time.monotonic()
            await wait_for(lambda: len(edge.edge._viewers) == 2, 5)
            assert session.viewers == 2
            after = await window()
            assert not stayer.ended.is_set() and stayer.pc.connectionState == "connected"
            assert "cam" in edge.edge.streams and edge.edge.streams["cam"] is session
            await wait_for(lambda: len(edge.edge._viewers) == 1, 10)
            ghost_freed_after = time.monotonic() - vanished
            assert session.viewers == 1
            stop.set()
            assert await asyncio.wait_for(sender, 10) == 0
            for viewer in (ghost, stayer):
                await viewer.close()
        return {"before": before, "after": after, "ghost_freed_after": ghost_freed_after}

    figures = asyncio.run(scenario())
    print(figures)
    before, after = figures["before"], figures["after"]
    # the stayer sees what the stream puts out, as much after as before
    assert after["viewer_fps"] >= 0.85 * after["edge_fps"], figures
    assert after["viewer_fps"] >= 0.8 * before["viewer_fps"], figures
    assert after["lost"] == 0, figures
    # fewer viewers to encode for: the edge falls no further behind than before (give or
    # take what the machine's other load does: a tenth of the frames)
    assert after["dropped"] <= before["dropped"] + 0.1 * WINDOW * 30, figures


# ------------------------------------------------------------------ graceful shutdown
def test_sigterm_finalises_every_recording_with_every_frame(tmp_path):
    """`kpvid-receive --record` with two streams playing gets SIGTERM: it exits 0 and each
    stream's mp4 reads back with every frame the stream put out up to the signal."""
    port, rec = free_port(), tmp_path / "rec"
    receiver = subprocess.Popen(
        [sys.executable, "-m", "kpvid.receiver.cli", "--cpu", "--host", "127.0.0.1", "--port",
         str(port), "--token", TOKEN, "--state-dir", str(tmp_path / "tls"), "--record",
         str(rec), "--threads", "1", "--checkpoint", str(EDGE_TEST_CHECKPOINT)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    cert = tmp_path / "tls" / CERT_FILE

    async def streams() -> dict:
        async with aiohttp.ClientSession() as http, http.get(
                f"https://localhost:{port}/api/streams",
                headers={"Authorization": f"Bearer {TOKEN}"},
                ssl=ssl.create_default_context(cafile=str(cert))) as response:
            return {s["name"]: s for s in (await response.json())["streams"]}

    async def scenario() -> dict:
        extractor = KeypointExtractor.from_checkpoint(EDGE_TEST_CHECKPOINT)
        deadline = time.monotonic() + 120
        while True:  # the receiver loads torch and the model: up to a minute when loaded
            assert receiver.poll() is None, receiver.stdout.read()
            assert time.monotonic() < deadline, "the receiver did not come up"
            try:
                await streams()
                break
            except (OSError, ssl.SSLError, aiohttp.ClientError):
                await asyncio.sleep(0.3)
        senders = []
        for name, seed in (("one", 3), ("two", 4)):
            options = SenderOptions(host="localhost", port=port, token=TOKEN,
                                    ca_file=str(cert), stream=name)
            source = SyntheticSource("faces", seed=seed, size=64, fps=30.0, length=120)
            stop = asyncio.Event()
            senders.append((asyncio.create_task(run_sender(source, extractor, options,
                                                           stop=stop)), stop))
        live: dict = {}
        while not (len(live) == 2 and all(s["frames"]["out"] >= 30 for s in live.values())):
            assert time.monotonic() < deadline, live
            await asyncio.sleep(0.3)
            live = await streams()
        receiver.send_signal(signal.SIGTERM)
        output, _ = await asyncio.get_running_loop().run_in_executor(
            None, lambda: receiver.communicate(timeout=60))
        for task, stop in senders:  # they were trying to reconnect
            stop.set()
            await asyncio.wait_for(task, 10)
        return {"live": live, "output": output}

    try:
        result = asyncio.run(scenario())
    finally:
        if receiver.poll() is None:
            receiver.kill()
            receiver.communicate()
    output = result["output"]
    assert receiver.returncode == 0, output
    for name in ("one", "two"):
        ended = re.search(rf"stream {name} ended \(edge shutting down\): (\{{.*\}})", output)
        recorded = re.search(rf"stream {name}: recorded (\d+) frames to (\S+)", output)
        assert ended and recorded, output
        out = ast.literal_eval(ended.group(1))["out"]
        [path] = rec.glob(f"{name}-*.mp4")
        assert recorded.group(2) == str(path)
        with av.open(str(path)) as container:
            frames = sum(1 for _ in container.decode(video=0))
        print(name, {"mp4": frames, "recorded": recorded.group(1), "out": out,
                     "out_at_last_look": result["live"][name]["frames"]["out"]})
        # every frame put out, the last ones after the last look included, is in the file
        assert frames == int(recorded.group(1)) == out >= result["live"][name]["frames"]["out"]


def test_a_sender_leaves_an_edge_that_falls_silent(tmp_path, monkeypatch):
    """An edge whose host dies sends nothing more, not even a close: the sender notices the
    missing Feedback and reconnects (here to the same edge, which is still up)."""
    monkeypatch.setattr("kpvid.sender.edge_connection.EDGE_SILENCE_S", 2.0)

    async def scenario() -> tuple[SenderStats, float]:
        extractor = KeypointExtractor.from_checkpoint(EDGE_TEST_CHECKPOINT)
        source = SyntheticSource("faces", seed=6, size=64, fps=30.0, length=900)
        stats, stop = SenderStats(), asyncio.Event()
        async with running_edge(tmp_path) as edge:
            port = int(edge.url.rsplit(":", 1)[1])
            options = SenderOptions(host="localhost", port=port, token=TOKEN,
                                    ca_file=str(edge.cert), stream="cam")
            sender = asyncio.create_task(run_sender(source, extractor, options, stats, stop))
            await wait_for(lambda: playing(edge, "cam", 30) and stats.feedback is not None, 20)
            silenced = edge.edge.streams["cam"]
            silenced._send_ctrl = lambda message: None  # the edge says nothing any more
            silenced._send_kp = None
            muted_at = time.monotonic()
            await wait_for(lambda: stats.reconnects >= 1, 15)
            noticed_after = time.monotonic() - muted_at
            await wait_for(lambda: edge.edge.streams.get("cam") not in (None, silenced)
                           and playing(edge, "cam", 15), 20)
            stop.set()
            assert await asyncio.wait_for(sender, 10) == 0
        return stats, noticed_after

    stats, noticed_after = asyncio.run(scenario())
    # silence counts from the last Feedback, up to a second before the edge was muted
    assert 1.0 <= noticed_after < 8.0, noticed_after
