"""The edge's HTTPS endpoints and its handling of senders: auth, bad requests, hostile
data-channel input, senders that vanish."""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict

import av
import msgpack
import numpy as np
import pytest
from aiortc import RTCIceServer

from kpvid.protocol import Bye, encode_message
from kpvid.receiver.stream_stats import EndReason
from tests.edge_harness import (
    RawSender,
    detect,
    f16_keypoints,
    running_edge,
    synthetic_clip,
    wait_for,
)


def run(coro):
    return asyncio.run(coro)


def test_endpoints_need_the_token(tmp_path):
    async def scenario():
        async with running_edge(tmp_path) as edge:
            for method, path in [("GET", "/api/streams"), ("GET", "/metrics"),
                                 ("GET", "/api/config"), ("POST", "/offer"),
                                 ("POST", "/view/offer")]:
                for token in (None, "wrong-token"):
                    status, body = await edge.request(method, path, token=token, json={})
                    assert status == 401, (path, token)
                    assert "token" in body["error"]
            status, page = await edge.request("GET", "/", token=None)
            assert status == 200 and "<video" in page
            assert await edge.request("GET", "/healthz", token=None) == (
                200, {"status": "ok", "streams": 0})
            status, body = await edge.request("GET", "/api/streams")
            assert status == 200 and body["streams"] == []
            status, text = await edge.request("GET", "/metrics")
            assert status == 200 and "kpvid_http_rejected_total" in text

    run(scenario())


def test_the_page_gets_the_viewer_ice_servers(tmp_path):
    turn = RTCIceServer(urls="turn:203.0.113.5:3478", username="kpvid", credential="pw")

    async def scenario():
        async with running_edge(tmp_path) as edge:
            assert await edge.request("GET", "/api/config") == (200, {"iceServers": []})
        async with running_edge(tmp_path, viewer_ice_servers=[turn]) as edge:
            assert await edge.request("GET", "/api/config") == (200, {"iceServers": [
                {"urls": ["turn:203.0.113.5:3478"], "username": "kpvid", "credential": "pw"}]})

    run(scenario())


@pytest.mark.parametrize("path", ["/offer", "/view/offer"])
def test_bad_offers_get_400_with_a_reason(tmp_path, path):
    async def scenario():
        async with running_edge(tmp_path) as edge:
            status, body = await edge.request("POST", path, data=b"{not json")
            assert status == 400 and "not JSON" in body["error"]
            status, body = await edge.request("POST", path, json={"type": "answer", "sdp": ""})
            assert status == 400 and "expected" in body["error"]
            status, body = await edge.request("POST", path, json=[1, 2])
            assert status == 400
            bad_sdp = ["v=0\r\nthis is not SDP\r\n"]
            if path == "/offer":  # (a viewer's SDP is read once its stream is found)
                bad_sdp.append("v=0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n"
                               "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=garbage\r\n")
            for sdp in bad_sdp:
                status, body = await edge.request("POST", path, json={"type": "offer",
                                                                     "sdp": sdp})
                assert status == 400 and "SDP" in body["error"], body
            status, _ = await edge.request("POST", path, data=b"x" * 200_000)
            assert status == 413

    run(scenario())


def test_viewer_gets_404_without_a_stream(tmp_path):
    async def scenario():
        async with running_edge(tmp_path) as edge:
            offer = {"type": "offer", "sdp": "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n"}
            status, body = await edge.request("POST", "/view/offer", json=offer)
            assert status == 404 and "no live stream" in body["error"]
            status, body = await edge.request("POST", "/view/offer",
                                              json={**offer, "stream": "nobody"})
            assert status == 404 and "nobody" in body["error"]

    run(scenario())


def test_garbage_from_one_sender_does_not_disturb_another(tmp_path):
    clip = synthetic_clip(40)
    values, jacobians = detect(clip)

    async def scenario():
        async with running_edge(tmp_path, idle_timeout=2.0) as edge:
            good, bad = RawSender(edge), RawSender(edge)
            await good.connect()
            await bad.connect()
            await good.start_stream("good", clip[0])
            garbage = [
                b"\xc1 not msgpack",
                msgpack.packb([99, 1, "x"]),                  # a future version
                msgpack.packb({"what": "a map"}),
                b"\x00" * 20_000,                             # larger than any message may be
            ]
            start = time.time()
            for i in range(0, 40, 2):
                good.kp.send(f16_keypoints(i, values[i], jacobians[i]))
                bad.kp.send(garbage[i // 2 % len(garbage)])
                bad.ctrl.send("a text message")
                await asyncio.sleep(max(0.0, start + (i + 2) / 30 - time.time()))
            good.ctrl.send(encode_message(Bye("done", last_frame_index=39)))
            session = edge.edge.streams["good"]
            await asyncio.wait_for(session.ended.wait(), 10)
            counts = asdict(session.counts)
            assert (counts["observed"], counts["predicted"], counts["lost"]) == (20, 20, 0)
            # a loaded machine may skip rendering a late frame; none goes missing
            assert counts["out"] + counts["dropped"] == 40 and counts["out"] >= 20, counts
            assert session.end is not None and session.end.reason is EndReason.SENDER_FINISHED
            status, metrics = await edge.request("GET", "/metrics")
            for reason in ("MalformedMessage", "UnsupportedVersion", "MessageTooLarge"):
                assert f'kpvid_bad_messages_total{{reason="{reason}"}}' in metrics
            dropped = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                          if line.startswith("kpvid_bad_messages_total"))
            assert dropped >= 40  # 20 garbage keypoint packets and 20 text messages
            await good.close()
            await bad.close()

    run(scenario())


def stream_with_render(tmp_path, frames: int, wrap) -> dict:
    """Send every frame of a clip through an edge whose engine's play is `wrap(play)`; the
    stream's final figures."""
    clip = synthetic_clip(frames)
    values, jacobians = detect(clip)

    async def scenario():
        async with running_edge(tmp_path) as edge:
            edge.edge.engine.play = wrap(edge.edge.engine.play)
            sender = RawSender(edge)
            await sender.connect()
            await sender.start_stream("wrapped", clip[0], predict=0)
            await sender.send_keypoints(values, jacobians, range(frames), skip_after=0)
            sender.ctrl.send(encode_message(Bye("done", last_frame_index=frames - 1)))
            await wait_for(lambda: len(edge.edge.ended) == 1, 10)
            await sender.close()
            return edge.edge.ended[0].to_json()

    return asyncio.run(scenario())


def test_an_edge_too_slow_for_its_load_skips_frames_instead_of_lagging(tmp_path):
    def slow(play):
        async def slow_play(stream, kp6, draw=True, index=None):  # 12 fps for a 30 fps stream
            await asyncio.sleep(1 / 12)
            return await play(stream, kp6, draw, index)
        return slow_play

    final = stream_with_render(tmp_path, 60, slow)
    counts = final["frames"]
    assert counts["observed"] == 60 and counts["out"] + counts["dropped"] == 60
    assert counts["dropped"] > 10, counts
    assert final["latency_ms"]["p99"] < 600, final  # bounded by max_lag, not growing


def test_a_frame_the_model_fails_on_is_skipped_and_the_stream_goes_on(tmp_path):
    def flaky(play):
        calls = []

        async def flaky_play(stream, kp6, draw=True, index=None):
            calls.append(stream)
            if len(calls) == 5:
                raise RuntimeError("CUDA error: an illegal memory access (simulated)")
            return await play(stream, kp6, draw, index)
        return flaky_play

    final = stream_with_render(tmp_path, 20, flaky)
    assert final["ended"].startswith(EndReason.SENDER_FINISHED.value)
    assert final["frames"]["out"] == 19 and final["frames"]["dropped"] == 1, final


@pytest.mark.parametrize("change, words", [({"num_kp": 3}, "keypoint count mismatch"),
                                            ({"frame_size": 128}, "frame size mismatch"),
                                            ({"model_id": "vox-256"}, "model mismatch")])
def test_a_hello_for_another_model_is_refused_with_a_reason(tmp_path, change, words):
    clip = synthetic_clip(2)

    async def scenario():
        async with running_edge(tmp_path) as edge:
            sender = RawSender(edge)
            await sender.connect()
            await sender.start_stream("odd", clip[0], **change)
            await wait_for(lambda: any(isinstance(m, Bye) for m in sender.received), 5)
            bye = next(m for m in sender.received if isinstance(m, Bye))
            assert words in bye.reason
            assert "odd" not in edge.edge.streams
            await sender.close()

    run(scenario())


def test_a_vanished_sender_is_cleaned_up_and_its_recording_finalised(tmp_path):
    clip = synthetic_clip(12)
    values, jacobians = detect(clip)

    async def scenario():
        async with running_edge(tmp_path, record_dir=tmp_path / "rec", idle_timeout=0.5) as edge:
            sender = RawSender(edge)
            await sender.connect()
            await sender.start_stream("gone", clip[0])
            await sender.send_keypoints(values, jacobians, range(0, 12, 2))
            await wait_for(lambda: "gone" in edge.edge.streams, 5)
            session = edge.edge.streams["gone"]
            await sender.pc.close()  # no bye: the sender just disappears
            vanished = time.monotonic()
            await asyncio.wait_for(session.ended.wait(), 5)
            assert time.monotonic() - vanished < 3
            assert "gone" not in edge.edge.streams
            return session

    session = run(scenario())
    with av.open(str(session.recording_path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == session.counts.out > 0
    assert np.mean(frames[0]) > 10


def test_a_silent_sender_times_out(tmp_path):
    """A sender whose process hangs or whose network drops sends nothing and closes nothing."""
    clip = synthetic_clip(6)
    values, jacobians = detect(clip)

    async def scenario():
        async with running_edge(tmp_path, idle_timeout=0.5) as edge:
            sender = RawSender(edge)
            await sender.connect()
            await sender.start_stream("silent", clip[0])
            await sender.send_keypoints(values, jacobians, range(0, 6, 2))
            await wait_for(lambda: len(edge.edge.ended) == 1, 5)
            await wait_for(lambda: sender.pc.connectionState == "closed"
                           or any(isinstance(m, Bye) for m in sender.received), 5)
            await sender.close()
            return edge.edge.ended[0].to_json()

    final = asyncio.run(scenario())
    assert final["ended"] == EndReason.SENDER_SILENT.value
    assert final["frames"]["observed"] == 3
