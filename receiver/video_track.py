"""The aiortc video track that carries one stream's synthesized frames to its viewers."""

from __future__ import annotations

import asyncio
import fractions
from collections import deque

import av
import numpy as np
from aiortc import VideoStreamTrack
from aiortc.mediastreams import MediaStreamError

VIDEO_CLOCK_RATE = 90000
VIDEO_TIME_BASE = fractions.Fraction(1, VIDEO_CLOCK_RATE)


class SynthesizedVideoTrack(VideoStreamTrack):
    """Frames pushed by the receiver's playout loop, handed to aiortc as they come.

    ``push`` never blocks and keeps only the ``max_frames`` newest frames (older unread frames
    are dropped and counted in ``dropped``); ``recv`` waits for the next one. Frame indices must
    increase: the pts is ``round(frame_index * 90000 / fps)`` at a 90 kHz clock. Give the track
    to viewers through one ``MediaRelay`` (one ``subscribe(track, buffered=False)`` each)."""

    def __init__(self, fps: float, max_frames: int = 2) -> None:
        super().__init__()
        if not fps > 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        self.fps = float(fps)
        self.dropped = 0
        self._frames: deque[tuple[int, np.ndarray]] = deque(maxlen=max_frames)
        self._ready = asyncio.Event()

    def push(self, frame_index: int, rgb: np.ndarray) -> None:
        """Queue uint8 H x W x 3 RGB ``rgb`` as frame ``frame_index`` (call on the loop)."""
        if len(self._frames) == self._frames.maxlen:
            self.dropped += 1
        self._frames.append((frame_index, rgb))
        self._ready.set()

    async def recv(self) -> av.VideoFrame:
        """The oldest frame kept; MediaStreamError once the track is stopped."""
        while not self._frames:
            if self.readyState != "live":
                raise MediaStreamError
            self._ready.clear()
            await self._ready.wait()
        if self.readyState != "live":
            raise MediaStreamError
        frame_index, rgb = self._frames.popleft()
        # yuv420p here, once: with several viewers, MediaRelay hands this one frame to several
        # VP8 encoders, which would otherwise each convert it concurrently (aiortc #767: that
        # segfaults)
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        frame = frame.reformat(format="yuv420p")
        frame.pts = round(frame_index * VIDEO_CLOCK_RATE / self.fps)
        frame.time_base = VIDEO_TIME_BASE
        return frame

    def stop(self) -> None:
        super().stop()
        self._frames.clear()
        self._ready.set()  # wake a waiting recv so it raises MediaStreamError
