"""Video track for viewers and the mp4 recorder."""

from __future__ import annotations

import asyncio
import fractions
import logging
import threading
import time

import av
import numpy as np
import pytest
from aiortc.mediastreams import MediaStreamError

from kpvid.receiver import recorder as recorder_module
from kpvid.receiver.recorder import StreamRecorder
from kpvid.receiver.video_track import SynthesizedVideoTrack


def frames(n: int, size: int = 64) -> list[np.ndarray]:
    """Smooth moving colour gradients (what H.264 at crf 17 keeps well)."""
    y, x = np.mgrid[0:size, 0:size] / (size - 1)
    out = []
    for t in range(n):
        phase = t / n * 2 * np.pi
        img = np.stack([0.5 + 0.4 * np.sin(2 * x + phase), 0.3 + 0.6 * y,
                        0.5 + 0.4 * np.cos(3 * y - x + phase)], -1)
        out.append((img * 255).astype(np.uint8))
    return out


def read_video(path) -> tuple[list[np.ndarray], str, fractions.Fraction]:
    """Decoded RGB frames, codec name and average frame rate of a video file."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        return decoded, stream.codec_context.name, stream.average_rate


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255**2 / max(mse, 1e-10)))


# ---- SynthesizedVideoTrack ----

def test_track_delivers_pushed_frames_with_90khz_pts():
    async def main():
        track = SynthesizedVideoTrack(fps=30)
        assert track.kind == "video"
        pending = asyncio.ensure_future(track.recv())
        await asyncio.sleep(0.01)
        assert not pending.done()  # waits for a frame
        track.push(0, frames(1)[0])
        frame = await asyncio.wait_for(pending, 1)
        # converted once for every viewer's encoder (see the track)
        assert (frame.width, frame.height, frame.format.name) == (64, 64, "yuv420p")
        assert frame.pts == 0 and frame.time_base == fractions.Fraction(1, 90000)
        back = frame.to_ndarray(format="rgb24").astype(float)
        assert 10 * np.log10(255**2 / np.mean((back - frames(1)[0]) ** 2)) > 30
        track.push(1, frames(1)[0])
        track.push(2, frames(1)[0])
        assert [(await track.recv()).pts for _ in range(2)] == [3000, 6000]

        fractional = SynthesizedVideoTrack(fps=30000 / 1001)
        fractional.push(30, frames(1)[0])
        assert (await fractional.recv()).pts == 90090

    asyncio.run(main())


def test_track_keeps_only_the_newest_frames():
    async def main():
        track = SynthesizedVideoTrack(fps=25)
        for i in range(5):
            track.push(i, frames(1)[0])
        assert track.dropped == 3
        assert [(await track.recv()).pts for _ in range(2)] == [3 * 3600, 4 * 3600]

    asyncio.run(main())


def test_stopped_track_raises_media_stream_error():
    async def main():
        track = SynthesizedVideoTrack(fps=30)
        waiting = asyncio.ensure_future(track.recv())
        await asyncio.sleep(0.01)
        track.stop()
        with pytest.raises(MediaStreamError):
            await asyncio.wait_for(waiting, 1)
        track.push(0, frames(1)[0])
        with pytest.raises(MediaStreamError):
            await track.recv()

    asyncio.run(main())


# ---- StreamRecorder ----

def test_recorder_writes_an_h264_mp4_that_reads_back(tmp_path):
    written = frames(30)
    path = tmp_path / "sub" / "stream.mp4"
    recorder = StreamRecorder(path, fps=30)
    for i, frame in enumerate(written):
        recorder.write(100 + i, frame)
    recorder.close()
    recorder.close()  # idempotent
    assert recorder.frames_written == 30 and recorder.dropped == 0 and recorder.error is None
    decoded, codec, rate = read_video(path)
    assert codec == "h264" and rate == 30
    assert len(decoded) == 30
    assert all(f.shape == (64, 64, 3) for f in decoded)
    quality = [psnr(a, b) for a, b in zip(decoded, written)]
    assert min(quality) > 30, quality
    with av.open(str(path)) as container:  # each frame at its own time, from 0 (no shift)
        times = [float(f.pts * f.time_base) for f in container.decode(video=0)]
    assert [round(t * 30) for t in times] == list(range(30))
    with pytest.raises(RuntimeError):
        recorder.write(200, written[0])


def test_recorder_fractional_fps_and_mpeg4_fallback(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(recorder_module.av, "codecs_available",
                        set(av.codecs_available) - {"libx264"})
    path = tmp_path / "fallback.mp4"
    recorder = StreamRecorder(path, fps=30000 / 1001)
    assert recorder.rate == fractions.Fraction(30000, 1001)
    with caplog.at_level(logging.WARNING):
        for i, frame in enumerate(frames(10)):
            recorder.write(i, frame)
        recorder.close()
    assert "mpeg4" in caplog.text
    decoded, codec, rate = read_video(path)
    assert codec == "mpeg4" and len(decoded) == 10
    assert rate == fractions.Fraction(30000, 1001)
    assert min(psnr(a, b) for a, b in zip(decoded, frames(10))) > 30


def test_recorder_rejects_bad_frames_and_leaves_no_empty_file(tmp_path):
    path = tmp_path / "empty.mp4"
    recorder = StreamRecorder(path, fps=30)
    with pytest.raises(ValueError, match="even"):
        recorder.write(0, np.zeros((63, 64, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        recorder.write(0, np.zeros((64, 64, 3), np.float32))
    recorder.close()
    assert not path.exists() and recorder.frames_written == 0

    recorder = StreamRecorder(tmp_path / "checked.mp4", fps=30)
    recorder.write(5, frames(1)[0])
    with pytest.raises(ValueError, match="size changed"):
        recorder.write(6, frames(1, size=32)[0])
    with pytest.raises(ValueError, match="not above"):
        recorder.write(5, frames(1)[0])
    recorder.close()
    assert recorder.frames_written == 1


def test_recorder_counts_frames_dropped_on_a_full_queue(tmp_path, monkeypatch, caplog):
    release = threading.Event()
    original = recorder_module.StreamRecorder._open

    def slow_open(self, width, height):
        release.wait(5)
        return original(self, width, height)

    monkeypatch.setattr(recorder_module.StreamRecorder, "_open", slow_open)
    recorder = StreamRecorder(tmp_path / "full.mp4", fps=30, max_queue=2)
    with caplog.at_level(logging.WARNING):
        recorder.write(0, frames(1)[0])
        deadline = time.monotonic() + 5
        while not recorder._queue.empty() and time.monotonic() < deadline:
            time.sleep(0.001)  # until the worker holds frame 0 (in the slow open)
        for i, frame in enumerate(frames(5), start=1):
            recorder.write(i, frame)  # two wait in the queue, three are dropped
    assert recorder.dropped == 3
    assert "dropped" in caplog.text
    release.set()
    recorder.close()
    assert recorder.frames_written == 3


KILLED_RECORDER = """
import os, signal, sys, time
import numpy as np
from kpvid.receiver.recorder import StreamRecorder
from tests.test_recorder import frames
recorder = StreamRecorder(sys.argv[1], 30.0)
for i, frame in enumerate(frames(150)):
    recorder.write(i, frame)
while recorder.frames_written < 150:
    time.sleep(0.01)
os.kill(os.getpid(), signal.SIGKILL)  # no close: the file is never finalised
"""


def test_a_killed_recorder_leaves_a_file_that_plays_to_its_last_fragment(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "killed.mp4"
    done = subprocess.run([sys.executable, "-c", KILLED_RECORDER, str(path)], timeout=120)
    assert done.returncode == -9
    decoded, codec, _ = read_video(path)
    # keyframes every 2 s: the first fragment (60 frames) is whole on disk; the encoder's
    # look-ahead still held the frames of the second when the process died
    assert len(decoded) >= 2 * 30 - 1, len(decoded)
    expected = frames(150)
    assert min(psnr(a, b) for a, b in zip(decoded, expected)) > 35
