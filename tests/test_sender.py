"""Sender: schedule, crops, sources, keypoint extraction, options and CLI argument errors.

No network: the client's WebRTC session is exercised against a real receiver elsewhere.
"""

from __future__ import annotations

import io
import itertools
import re
import time
from collections.abc import Callable
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from kpvid.models import build_networks
from kpvid.protocol import (
    Bye,
    Feedback,
    Hello,
    IntraRequest,
    InvalidField,
    KeypointDecoder,
    Keypoints,
    SourceRequest,
    decode_message,
    encode_message,
)
from kpvid.protocol.schedule import Schedule
from kpvid.sender import cli, sources
from kpvid.sender.client import (
    DEFAULT_CODEC,
    SenderClient,
    SenderOptions,
    make_hello,
    parse_ice_server,
    parse_target,
    sanitize_stream_name,
)
from kpvid.sender.edge_connection import Captured, EdgeConnection
from kpvid.sender.frame_pipeline import FramePipeline
from kpvid.sender.keypoints import KeypointExtractor
from kpvid.sender.sources import (
    CameraSource,
    Crop,
    SourceError,
    SyntheticSource,
    VideoFileSource,
    centre_crop,
    crop_and_resize,
    parse_crop,
    pingpong_index,
    resolve_crop,
)
from kpvid.sender.stats import FeedbackSnapshot, SenderStats

CLIP_FRAMES, CLIP_FPS, CLIP_W, CLIP_H = 20, 25, 320, 240


def _write_clip(path: Path, codec: str, pix_fmt: str) -> None:
    """A 320x240 clip whose frame i has a bright bar i*16 pixels wide (frames differ)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=CLIP_FPS)
        stream.width, stream.height, stream.pix_fmt = CLIP_W, CLIP_H, pix_fmt
        for i in range(CLIP_FRAMES):
            image = np.full((CLIP_H, CLIP_W, 3), 40, np.uint8)
            image[:, : 16 * (i + 1)] = 220
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())


@pytest.fixture(scope="module")
def h264_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("clips") / "clip.mp4"
    _write_clip(path, "libx264", "yuv420p")
    return path


@pytest.fixture(scope="module")
def mjpeg_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("clips") / "clip.avi"
    _write_clip(path, "mjpeg", "yuvj420p")
    return path


def _read_all(source: VideoFileSource) -> list[np.ndarray]:
    frames = []
    while (frame := source.read()) is not None:
        frames.append(frame)
    return frames


# schedule

def test_schedule_default_is_m2_every_other_frame() -> None:
    schedule = Schedule()
    assert (schedule.observe, schedule.predict, schedule.period) == (1, 1, 2)
    assert [schedule.is_observed(i) for i in range(6)] == [True, False] * 3


def test_schedule_positions() -> None:
    schedule = Schedule(observe=2, predict=3)
    assert schedule.period == 5
    assert [schedule.position(i) for i in range(11)] == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0]
    assert [schedule.is_observed(i) for i in range(6)] == [True, True, False, False, False, True]
    assert all(Schedule(3, 0).is_observed(i) for i in range(10))


@pytest.mark.parametrize("observe, predict", [(0, 1), (1, -1), (True, 1), (1.5, 1)])
def test_schedule_rejects_bad_values(observe: object, predict: object) -> None:
    with pytest.raises(ValueError, match="observe|predict"):
        Schedule(observe, predict)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=">= 0"):
        Schedule().position(-1)


# crops

def test_parse_crop() -> None:
    assert parse_crop("10,20,30,40") == Crop(10, 20, 30, 40)
    assert parse_crop(" 0, 0 ,64,64 ") == Crop(0, 0, 64, 64)
    assert str(Crop(1, 2, 3, 4)) == "1,2,3,4"


@pytest.mark.parametrize("text, message", [
    ("1,2,3", "four integers"), ("a,b,c,d", "four integers"), ("1,2,3,4,5", "four integers"),
    ("-1,0,10,10", "x and y must be >= 0"), ("0,0,0,10", "width and height must be > 0"),
])
def test_parse_crop_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_crop(text)


def test_centre_crop_and_resize() -> None:
    assert centre_crop(320, 240) == Crop(40, 0, 240, 240)
    assert centre_crop(240, 320) == Crop(0, 40, 240, 240)
    assert resolve_crop(None, 320, 240) == Crop(40, 0, 240, 240)
    frame = np.zeros((240, 320, 3), np.uint8)
    frame[:, 160:] = 255
    out = crop_and_resize(frame, centre_crop(320, 240), 64)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8 and out.flags.c_contiguous
    assert out[:, :28].max() == 0 and out[:, 36:].min() == 255  # the centre stays centred
    assert crop_and_resize(frame, Crop(0, 0, 16, 16), 64).shape == (64, 64, 3)  # upscaling


def test_crop_outside_the_frame() -> None:
    with pytest.raises(SourceError, match=r"outside the 320x240 frame"):
        resolve_crop(Crop(100, 0, 240, 240), 320, 240)
    assert resolve_crop(Crop(80, 0, 240, 240), 320, 240) == Crop(80, 0, 240, 240)


# video files

def test_video_file_frames_and_fps(h264_clip: Path) -> None:
    with VideoFileSource(h264_clip, 32) as source:
        assert source.fps == pytest.approx(CLIP_FPS)
        assert source.crop == Crop(40, 0, 240, 240)
        assert not source.paced
        frames = _read_all(source)
        assert len(frames) == CLIP_FRAMES
        assert all(f.shape == (32, 32, 3) and f.dtype == np.uint8 for f in frames)
        assert source.read() is None and not source.skip()
        assert frames[0].mean() < frames[-1].mean()  # the bar grows


def test_video_file_loop(h264_clip: Path) -> None:
    with VideoFileSource(h264_clip, 32) as source:
        once = _read_all(source)
    with VideoFileSource(h264_clip, 32, loop=True) as source:
        looped = [source.read() for _ in range(2 * CLIP_FRAMES + 5)]
    assert all(f is not None for f in looped)
    for i, frame in enumerate(looped):
        np.testing.assert_array_equal(frame, once[i % CLIP_FRAMES])


@pytest.mark.parametrize("clip", ["h264_clip", "mjpeg_clip"])
def test_video_file_skip_advances_without_preparing(clip: str, request: pytest.FixtureRequest,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    path = request.getfixturevalue(clip)
    with VideoFileSource(path, 32) as source:
        reference = _read_all(source)
    prepared = []
    real = sources.crop_and_resize
    monkeypatch.setattr(sources, "crop_and_resize",
                        lambda *a: prepared.append(1) or real(*a))
    with VideoFileSource(path, 32) as source:
        decoded = []
        real_decode = source._decode
        source._decode = lambda packet: decoded.append(1) or real_decode(packet)
        got = []
        for i in range(CLIP_FRAMES):
            if i % 2:
                before = len(decoded)
                assert source.skip()
                if clip == "mjpeg_clip":  # intra-only: the packet is dropped undecoded
                    assert len(decoded) == before
            else:
                got.append(source.read())
        assert not source.skip()
    assert len(prepared) == CLIP_FRAMES // 2  # only read() converts, crops and resizes
    for frame, expected in zip(got, reference[::2]):
        np.testing.assert_array_equal(frame, expected)


def test_video_file_errors(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="video file not found"):
        VideoFileSource(tmp_path / "missing.mp4", 64)
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"this is not a video" * 10)
    with pytest.raises(SourceError, match="could not open"):
        VideoFileSource(junk, 64)
    audio = tmp_path / "audio.wav"
    with av.open(str(audio), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16",
                                           layout="mono")
        frame.sample_rate = 8000
        container.mux(stream.encode(frame))
        container.mux(stream.encode())
    with pytest.raises(SourceError, match="no video stream"):
        VideoFileSource(audio, 64)


def test_video_file_crop_outside(h264_clip: Path) -> None:
    with pytest.raises(SourceError, match="outside"):
        VideoFileSource(h264_clip, 32, crop=Crop(0, 0, 400, 400))


# camera (a stand-in for cv2.VideoCapture: no camera on test machines)

class _FakeCapture:
    """640x480 pure blue BGR frames at 15 fps; counts reads and grabs."""

    def __init__(self, index: int, opened: bool = True, working: bool = True):
        self.opened, self.working = opened, working
        self.reads = self.grabs = 0
        self.requested_fps: float | None = None

    def isOpened(self) -> bool:
        return self.opened

    def set(self, prop: int, value: float) -> bool:
        self.requested_fps = value
        return True

    def get(self, prop: int) -> float:
        return 15.0 if prop == cv2.CAP_PROP_FPS else 0.0

    def read(self) -> tuple[bool, np.ndarray | None]:
        self.reads += 1
        if not self.working:
            return False, None
        frame = np.zeros((480, 640, 3), np.uint8)
        frame[..., 0] = 255
        return True, frame

    def grab(self) -> bool:
        self.grabs += 1
        return self.working

    def release(self) -> None:
        self.opened = False


def test_camera_source(monkeypatch: pytest.MonkeyPatch) -> None:
    captures: list[_FakeCapture] = []
    monkeypatch.setattr(sources.cv2, "VideoCapture",
                        lambda index: captures.append(_FakeCapture(index)) or captures[-1])
    source = CameraSource(0, 32, fps=15.0)
    capture = captures[0]
    assert (source.fps, source.paced, source.crop) == (15.0, True, Crop(80, 0, 480, 480))
    assert capture.requested_fps == 15.0
    first = source.read()  # the frame read while opening
    assert first.shape == (32, 32, 3) and (first == [0, 0, 255]).all()  # BGR -> RGB
    assert source.skip() and source.skip() and source.read() is not None
    assert (capture.reads, capture.grabs) == (2, 2)  # skip grabs, never retrieves
    capture.working = False
    with pytest.raises(SourceError, match="camera 0 stopped delivering frames"):
        source.skip()
    with pytest.raises(SourceError, match="camera 0 stopped delivering frames"):
        source.read()
    source.close()
    assert not capture.opened


def test_camera_source_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources.cv2, "VideoCapture", lambda i: _FakeCapture(i, opened=False))
    with pytest.raises(SourceError, match="could not open camera 3"):
        CameraSource(3, 64)
    monkeypatch.setattr(sources.cv2, "VideoCapture", lambda i: _FakeCapture(i, working=False))
    with pytest.raises(SourceError, match="delivered no frame"):
        CameraSource(3, 64)
    monkeypatch.setattr(sources.cv2, "VideoCapture", _FakeCapture)
    with pytest.raises(SourceError, match="outside the 640x480 frame"):
        CameraSource(3, 64, crop=Crop(400, 0, 480, 480))


# synthetic

def test_pingpong_index() -> None:
    assert [pingpong_index(i, 4) for i in range(10)] == [0, 1, 2, 3, 2, 1, 0, 1, 2, 3]
    assert [pingpong_index(i, 2) for i in range(4)] == [0, 1, 0, 1]
    with pytest.raises(ValueError, match="at least 2"):
        pingpong_index(0, 1)


def test_synthetic_source_is_endless_and_deterministic() -> None:
    source = SyntheticSource("faces", seed=3, size=32, fps=20.0, length=5)
    assert (source.fps, source.size, source.paced) == (20.0, 32, False)
    frames = []
    for i in range(12):
        if i % 3 == 1:
            assert source.skip()
            frames.append(None)
        else:
            frames.append(source.read())
    assert source.position == 12
    for i, frame in enumerate(frames):
        if frame is not None:
            assert frame.shape == (32, 32, 3) and frame.dtype == np.uint8
            np.testing.assert_array_equal(frame, source.frame_at(i))
    np.testing.assert_array_equal(source.frame_at(8), source.frame_at(0))  # period 2*(5-1)
    np.testing.assert_array_equal(source.frame_at(5), source.frame_at(3))
    assert not np.array_equal(source.frame_at(0), source.frame_at(1))
    again = SyntheticSource("faces", seed=3, size=32, length=5)
    np.testing.assert_array_equal(again.read(), source.frame_at(0))
    source.close()


# keypoints

def test_keypoint_extractor_shapes(tiny_config: dict) -> None:
    kp_detector, _ = build_networks(tiny_config)
    extractor = KeypointExtractor(kp_detector, "cpu", model_id="tiny", frame_size=32)
    assert extractor.num_kp == 4
    frame = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    value, jacobian = extractor.detect(frame)
    assert value.shape == (4, 2) and value.dtype == np.float32
    assert jacobian.shape == (4, 2, 2) and jacobian.dtype == np.float32
    assert np.all(np.abs(value) <= 1)
    with pytest.raises(ValueError, match="uint8"):
        extractor.detect(frame.astype(np.float32))


# client helpers and options

def test_parse_target() -> None:
    assert parse_target("edge:8443") == ("edge", 8443)
    assert parse_target("edge") == ("edge", 8443)
    assert parse_target("[::1]:9000") == ("::1", 9000)
    for bad in ("https://edge:8443", "edge:0", "edge:x", "::1", ":8443", ""):
        with pytest.raises(ValueError):
            parse_target(bad)


def test_parse_ice_server() -> None:
    assert parse_ice_server("stun:stun.example.org:3478").urls == "stun:stun.example.org:3478"
    turn = parse_ice_server("turn:alice:s3cret@turn.example.org:3478?transport=udp")
    assert (turn.urls, turn.username, turn.credential) == (
        "turn:turn.example.org:3478?transport=udp", "alice", "s3cret")
    for bad in ("http://x", "turn:host:3478", "stun:u:p@host", "stun:"):
        with pytest.raises(ValueError):
            parse_ice_server(bad)


def test_sender_options() -> None:
    options = SenderOptions(host="edge", token="t")
    assert options.url == "https://edge:8443/offer"
    assert SenderOptions(host="::1", port=9000, token="t").url == "https://[::1]:9000/offer"
    assert options.codec == DEFAULT_CODEC == "delta" and options.intra_interval == 30
    assert options.ssl_context() is not False
    assert SenderOptions(host="edge", token="t", insecure=True).ssl_context() is False
    assert sanitize_stream_name("my clip (1)") == "my-clip-1"
    assert sanitize_stream_name("???") == "stream"
    for bad in (dict(stream="no spaces"), dict(codec="nope"), dict(token=""),
                dict(insecure=True, ca_file="x.pem"), dict(observe=0), dict(max_frames=0),
                dict(intra_interval=0), dict(source_format="png"),
                dict(ice_servers=["turn:nocreds"])):
        with pytest.raises(ValueError):
            SenderOptions(**{"host": "edge", "token": "t", **bad})


def test_hello_is_validated(tiny_config: dict) -> None:
    kp_detector, _ = build_networks(tiny_config)
    extractor = KeypointExtractor(kp_detector, model_id="tiny", frame_size=32)
    source = SyntheticSource(size=32, length=2)
    options = SenderOptions(host="edge", token="t", stream="s1")
    hello = make_hello(source, extractor, options, 1.7e9)
    assert (hello.stream, hello.num_kp, hello.frame_size, hello.model_id, hello.codec,
            hello.start_time) == ("s1", 4, 32, "tiny", "delta", 1.7e9)
    with pytest.raises(InvalidField, match="observe \\+ predict"):
        make_hello(source, extractor,
                   SenderOptions(host="edge", token="t", observe=40, predict=40), 1.7e9)
    with pytest.raises(InvalidField, match="start_time"):
        make_hello(source, extractor, options, -1.0)


class _FakeChannel:
    def __init__(self, state: str = "open", buffered: int = 0):
        self.readyState, self.bufferedAmount, self.sent = state, buffered, []

    def send(self, data: bytes) -> None:
        self.sent.append(data)


def _started_connection(hello: Hello, kp: _FakeChannel | None = None,
                        stats: SenderStats | None = None) -> EdgeConnection:
    """An EdgeConnection on fake channels that has sent ``hello``."""
    connection = EdgeConnection(kp or _FakeChannel(), _FakeChannel(), stats or SenderStats(),
                                kp_buffer_limit=1000)
    connection.start(hello, FramePipeline(hello))
    return connection


def test_a_connection_sends_keypoints_and_drops_when_congested(tiny_config: dict) -> None:
    kp_detector, _ = build_networks(tiny_config)
    extractor = KeypointExtractor(kp_detector, model_id="tiny", frame_size=32)
    source = SyntheticSource(size=32, length=2)
    options = SenderOptions(host="edge", token="t", observe=2, predict=1, codec="f16")
    hello = make_hello(source, extractor, options, 1000.0)
    frame = source.read()
    value, jacobian = extractor.detect(frame)
    captured = Captured(frame, hello.start_time + 0.2, value, jacobian)  # frame 4: at 0.133 s
    kp = _FakeChannel()
    connection = _started_connection(hello, kp)
    assert decode_message(connection.ctrl_channel.sent[0]) == hello
    with pytest.raises(RuntimeError, match="before the hello"):
        EdgeConnection(kp, _FakeChannel(), SenderStats(), 1000).send_keypoints(4, captured)
    connection.send_keypoints(4, captured)
    message = decode_message(kp.sent[0])
    assert isinstance(message, Keypoints)
    # observe 2 predict 1: frame 4 is the second observed frame of its group, one skipped after
    assert (message.frame_index, message.skip_after, message.capture_offset_ms) == (4, 1, 67)
    assert hello.capture_time(message) == pytest.approx(captured.capture_time, abs=1e-3)
    (decoded,) = KeypointDecoder("f16", extractor.num_kp).decode(4, message.payload)
    np.testing.assert_allclose(decoded.value, value, atol=1e-3)
    kp.bufferedAmount = connection.kp_buffer_limit + 1
    connection.send_keypoints(5, captured)
    kp.bufferedAmount, kp.readyState = 0, "connecting"
    connection.send_keypoints(6, captured)
    assert len(kp.sent) == 1
    assert (connection.stats.packets, connection.stats.bytes, connection.stats.dropped) == (
        1, len(kp.sent[0]), 2)
    with pytest.raises(ValueError, match="model takes 64x64"):
        SenderClient(source, KeypointExtractor(kp_detector, frame_size=64), options)


def _hello(codec: str = "delta") -> Hello:
    return Hello(stream="cam", fps=30.0, observe=1, predict=1, frame_size=32, num_kp=10,
                 model_id="tiny", codec=codec, start_time=1000.0)


def test_a_connection_handles_the_edges_messages() -> None:
    connection = _started_connection(_hello())
    connection.on_ctrl_message(encode_message(Feedback(received=9, lost=1, predicted=8,
                                                       prediction_error=0.5)))
    assert connection.stats.feedback == FeedbackSnapshot(9, 1, 8, 0.5)
    assert not connection.source_wanted
    connection.on_ctrl_message(encode_message(SourceRequest(reason="lost it")))
    assert connection.source_wanted
    connection.send_source_image(b"\xff\xd8 not really a jpeg", "jpeg")
    assert not connection.source_wanted and connection.stats.source_images == 1
    for junk in (b"\x00garbage", "text", encode_message(Bye(reason="bye")),
                 encode_message(_hello())):
        connection.on_ctrl_message(junk)  # logged (rate-limited) and ignored


def test_a_silent_edge_is_gone_once_it_has_given_feedback() -> None:
    connection = _started_connection(_hello())
    now = time.monotonic()
    assert connection.gone(now + 60) is None  # not armed: an edge that never sends feedback
    connection.on_ctrl_message(encode_message(Feedback(received=1, lost=0, predicted=0,
                                                       prediction_error=None)))
    assert connection.gone(time.monotonic() + 1) is None
    assert "no word from the edge" in connection.gone(time.monotonic() + 60)
    connection.on_kp_message(encode_message(IntraRequest("lost frame 3")))  # a word on kp too
    assert connection.gone(time.monotonic() + 1) is None
    connection.lost.set()
    assert connection.gone() == "connection to the edge lost"


def test_a_connection_takes_intra_requests_on_either_channel() -> None:
    connection = _started_connection(_hello("delta"))
    assert connection.pipeline is not None
    encoder = connection.pipeline.encoder
    value, jacobian = np.zeros((10, 2)), np.tile(np.eye(2), (10, 1, 1))
    frames = itertools.count()

    def intra_payloads_after(deliver: Callable[[], object]) -> int:
        """How many of two payloads coded after `deliver()` ran are intra (the first, or none)."""
        before = encoder.intra_payloads
        deliver()
        for _ in range(2):
            encoder.encode(next(frames), value, jacobian)
        return encoder.intra_payloads - before

    request = encode_message(IntraRequest("lost frame 3"))
    assert intra_payloads_after(lambda: None) == 1  # the stream's first payload
    assert intra_payloads_after(lambda: None) == 0
    assert intra_payloads_after(lambda: connection.on_kp_message(request)) == 1
    assert intra_payloads_after(lambda: connection.on_ctrl_message(request)) == 1
    assert intra_payloads_after(lambda: (connection.on_kp_message(request),
                                         connection.on_ctrl_message(request))) == 1  # once
    stats = connection.stats
    assert stats.kp_ignored == 0
    junk = (b"\x00garbage", "text", encode_message(Bye(reason="bye")),
            encode_message(Feedback(received=1, lost=0, predicted=0, prediction_error=None)),
            encode_message(Keypoints(0, 0, 0, "f16", bytes(120))))
    assert intra_payloads_after(lambda: [connection.on_kp_message(m) for m in junk]) == 0
    assert stats.kp_ignored == len(junk)  # counted, logged (rate-limited), dropped
    assert stats.feedback is None  # a Feedback counts on ctrl only
    assert f"ignored on kp: {len(junk)}" in stats.summary()


def test_stats_summary() -> None:
    stats = SenderStats()
    for i in range(4):
        stats.record_frame(observed=i % 2 == 0)
    stats.record_packet(100)
    stats.record_packet(110)
    stats.record_drop()
    stats.feedback = FeedbackSnapshot(received=2, lost=0, predicted=2, prediction_error=None,
                                      late=1)
    assert "keypoint detector: n/a" in stats.summary()
    stats.detect_ms.extend([7.0, 9.0, 8.0])
    line = stats.status_line()
    assert "packets" in line and "observed/skipped 2/2" in line and "dropped 1" in line
    stats.connections, stats.reconnects = 1, 2
    summary = stats.summary()
    assert "sent 4 frames" in summary and "2 observed, 2 skipped" in summary
    assert "2 packets, 210 bytes" in summary and "1 dropped" in summary
    assert "prediction error n/a" in summary and "1 late" in summary
    assert "keypoint detector: p50 8.0 ms a frame" in summary
    assert "reconnects: 2" in summary and "never" not in summary


def test_a_sender_that_never_reached_the_edge_says_so() -> None:
    stats = SenderStats(reconnects=6)
    assert "never connected to the edge (7 attempts)" in stats.summary()
    assert "reconnects" not in stats.summary()


def test_stats_live_line_on_a_terminal() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    stats = SenderStats(stream=Terminal())
    stats.record_frame(observed=True)
    stats.maybe_report()
    assert stats.stream.getvalue() == ""  # rate-limited: nothing in the first half second
    stats._last_report -= 1.0
    stats.maybe_report()
    stats.end_line()
    text = stats.stream.getvalue()
    assert text.startswith("\r") and "observed/skipped 1/0" in text and text.endswith("\n")


# command line

@pytest.mark.parametrize("argv, message", [
    (["--synthetic", "faces"], "--to"),
    (["--synthetic", "faces", "--video", "x.mp4", "--to", "e"], "not allowed with"),
    (["--synthetic", "faces", "--to", "e", "--observe", "0"], "argument --observe: must be >= 1"),
    (["--synthetic", "faces", "--to", "e", "--predict", "-1"], "argument --predict: must be >= 0"),
    (["--video", "x.mp4", "--to", "e", "--crop", "1,2,3"], "--crop: crop must be four"),
    (["--synthetic", "faces", "--to", "e", "--crop", "0,0,8,8"], "does not apply"),
    (["--synthetic", "faces", "--to", "e", "--loop"], "--loop only applies"),
    (["--video", "x.mp4", "--to", "e", "--fps", "10"], "--fps does not apply"),
    (["--synthetic", "faces", "--to", "e", "--fps", "0"], "argument --fps: must be > 0"),
    (["--synthetic", "faces", "--to", "http://e:1"], "HOST:PORT"),
    (["--synthetic", "faces", "--to", "e", "--stream", "a b"], "--stream"),
    (["--synthetic", "faces", "--to", "e", "--ice-server", "turn:h"], "credentials"),
    (["--synthetic", "faces", "--to", "e", "--insecure", "--ca", "c.pem"], "not allowed"),
    (["--synthetic", "faces", "--to", "e", "--device", "tpu"], "--device"),
    (["--synthetic", "faces", "--to", "e", "--observe", "40", "--predict", "40"],
     "observe \\+ predict"),
    (["--synthetic", "faces", "--to", "e", "--adapt", "0"], "argument --adapt: must be > 0"),
    (["--synthetic", "faces", "--to", "e", "--adapt", "--max-predict", "-1"],
     "argument --max-predict: must be >= 0"),
    (["--video", "/nonexistent/clip.mp4", "--to", "e"], "video file not found"),
    (["--camera", "97", "--to", "e"], "could not open camera 97"),
    (["--synthetic", "faces", "--to", "e", "--face", "grace_hopper"], "--face only applies"),
    (["--synthetic", "photos", "--to", "e", "--face", "nobody"],
     "no test face 'nobody' here; the test faces available are .*grace_hopper"),
])
def test_cli_argument_errors(argv: list[str], message: str, capsys: pytest.CaptureFixture,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cli.TOKEN_ENV, "t")
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    assert re.search(message, capsys.readouterr().err)


def test_cli_needs_a_token(capsys: pytest.CaptureFixture,
                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(cli.TOKEN_ENV, raising=False)
    with pytest.raises(SystemExit) as exc:
        cli.main(["--synthetic", "faces", "--to", "edge:8443"])
    assert exc.value.code == 2
    assert "no token: pass --token or set KPVID_TOKEN" in capsys.readouterr().err


def test_cli_help_states_the_defaults(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--camera", "--video", "--synthetic", "--loop", "--crop", "--to", "--token",
                 "--insecure", "--ca", "--observe", "--predict", "--ice-server", "--frames",
                 "--adapt", "--max-predict"):
        assert flag in text
    assert "M=1 and N=1" in text and "M2 protocol" in text and "KPVID_TOKEN" in text
