"""Records one stream's synthesized frames to an mp4 file, encoding on its own thread.

Behaviour, all deliberate:

- Codec: H.264 (``libx264``, ``crf 17``, ``yuv420p``, preset ``veryfast``: a third of the CPU
  of the default ``medium`` on a 256x256 stream, which an edge needs for synthesis; no
  B-frames: a fragmented mp4 has no edit list to undo their reordering delay, so frame times
  would start two frames late); if
  this PyAV build lacks libx264 the recorder logs a warning and uses ``mpeg4`` at a high bit
  rate instead.
- Fragmented mp4 with a keyframe every ``FRAGMENT_SECONDS``: each fragment is on disk once the
  next keyframe starts, so a receiver that is killed (no chance to finalise) leaves a file that
  plays up to its last complete fragment, and the muxer's memory does not grow with the
  recording's length (a plain mp4 keeps its whole index in memory until it closes).
- Time base ``1 / fps`` (fractional rates via ``Fraction(fps).limit_denominator(1001)``, so
  29.97 and 30000/1001 both work); a frame's pts is ``frame_index - first_index``, so skipped
  indices show as gaps in time (the receiver writes every frame, so there are none).
- ``write`` never blocks: frames wait in a bounded queue (``max_queue`` frames). When it is full
  the frame is dropped, counted in ``dropped`` and logged; nothing is dropped silently.
- Caller errors raise ValueError in ``write`` at once: a frame that is not uint8 H x W x 3, odd
  width or height (yuv420p needs even sizes; no padding is done), a size different from the
  first frame's, or a frame index not above the previous one.
- The file (and its parent folders) are created with the first frame; a recorder that never
  got a frame leaves no file. An encoder or I/O error is logged once and kept in ``error``;
  later frames are dropped (counted).
- ``close`` encodes everything still queued, flushes the encoder and finalises the file; it is
  idempotent and blocks until done (call it through ``asyncio.to_thread`` from a busy loop).
"""

from __future__ import annotations

import logging
import queue
import threading
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

log = logging.getLogger(__name__)

_STOP = object()
FRAGMENT_SECONDS = 2.0
# an empty moov up front, then a moof + mdat per keyframe-led fragment
FRAGMENTED_MP4 = {"movflags": "frag_keyframe+empty_moov+default_base_moof", "flush_packets": "1"}


def pick_codec() -> str:
    """``libx264`` when this PyAV build has it, else ``mpeg4`` (with a warning)."""
    if "libx264" in av.codecs_available:
        return "libx264"
    log.warning("libx264 is not available in this PyAV build: recording with mpeg4 instead")
    return "mpeg4"


class StreamRecorder:
    """mp4 writer for one stream; see the module docstring for the exact behaviour."""

    def __init__(self, path: Path, fps: float, max_queue: int = 512) -> None:
        if not fps > 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        self.path = Path(path)
        self.rate = Fraction(fps).limit_denominator(1001)
        self.frames_written = 0
        self.dropped = 0
        self.error: Exception | None = None
        self._queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self._first_index: int | None = None
        self._last_index: int | None = None
        self._shape: tuple[int, ...] | None = None
        self._closed = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="kpvid-recorder", daemon=True)
        self._thread.start()

    def write(self, frame_index: int, rgb: np.ndarray) -> None:
        """Queue uint8 H x W x 3 RGB ``rgb`` as frame ``frame_index``; never blocks."""
        if self._closed:
            raise RuntimeError(f"recorder for {self.path} is closed")
        if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"expected a uint8 H x W x 3 frame, got {rgb.dtype} {rgb.shape}")
        if self._shape is None:
            if rgb.shape[0] % 2 or rgb.shape[1] % 2:
                raise ValueError(f"H.264 yuv420p needs even frame sizes, got {rgb.shape[:2]}")
            self._shape = rgb.shape
        elif rgb.shape != self._shape:
            raise ValueError(f"frame size changed from {self._shape} to {rgb.shape}")
        if self._last_index is not None and frame_index <= self._last_index:
            raise ValueError(f"frame index {frame_index} is not above the last one "
                             f"({self._last_index})")
        if self._first_index is None:
            self._first_index = frame_index
        self._last_index = frame_index
        try:
            self._queue.put_nowait((frame_index - self._first_index, rgb.copy()))
        except queue.Full:
            self._count_drop("the recording queue is full")

    def close(self) -> None:
        """Encode what is queued, flush and finalise the file (idempotent, blocking)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._queue.put(_STOP)
        self._thread.join()

    def _count_drop(self, why: str) -> None:
        self.dropped += 1
        if self.dropped == 1 or self.dropped % 100 == 0:
            log.warning("recorder %s: %s, %d frame(s) dropped so far", self.path, why,
                        self.dropped)

    # ---- worker thread ----

    def _run(self) -> None:
        container = None
        stream = None
        while True:
            item = self._queue.get()
            if item is _STOP:
                break
            if self.error is not None:
                self._count_drop("the recording failed")
                continue
            pts, rgb = item
            try:
                if container is None:
                    container, stream = self._open(rgb.shape[1], rgb.shape[0])
                frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
                frame.pts = pts
                frame.time_base = 1 / self.rate
                container.mux(stream.encode(frame))
                self.frames_written += 1
            except Exception as exc:
                self._fail(exc)
                self.dropped += 1
        if container is not None:
            try:
                if self.error is None:
                    container.mux(stream.encode(None))
                container.close()
            except Exception as exc:
                self._fail(exc)
            else:
                log.info("recorded %d frame(s) to %s", self.frames_written, self.path)

    def _open(self, width: int, height: int) -> tuple:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        codec = pick_codec()
        container = av.open(str(self.path), mode="w", options=FRAGMENTED_MP4)
        try:
            stream = container.add_stream(codec, rate=self.rate)
            stream.width = width
            stream.height = height
            stream.pix_fmt = "yuv420p"
            stream.codec_context.time_base = 1 / self.rate
            stream.codec_context.gop_size = max(1, round(float(self.rate) * FRAGMENT_SECONDS))
            if codec == "libx264":
                # bf 0: no reordering, so pts stay exact
                stream.options = {"crf": "17", "bf": "0", "preset": "veryfast"}
            else:
                stream.bit_rate = max(1_000_000, int(width * height * float(self.rate) * 2))
        except Exception:
            container.close()
            raise
        return container, stream

    def _fail(self, exc: Exception) -> None:
        self.error = exc
        log.error("recorder %s failed: %s", self.path, exc)
