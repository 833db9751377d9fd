"""One sender's stream on the edge: messages in, a frame out on every tick of its playout clock.

The session is independent of WebRTC: it receives decoded protocol messages from its
`SenderPeer` and answers through callables, `send_ctrl` (the reliable channel) and `send_kp`
(the unreliable one, for IntraRequests), so it can be tested on its own.

Per frame index i of the stream, when the playout clock says i is due:
- the jitter buffer has i's keypoints: they are observed (and fed to the stream's predictor,
  which lives in the engine);
- it does not: the predictor fills the gap, open-loop. The gap counts as *predicted* when the
  sender's schedule skipped i on purpose, as *lost* when the sender sent it and it did not come
  (each set says how many frames the sender skips after it: `SkippedFrames`).
Before the predictor observes a set, the edge asks it for its forecast of that frame; the mean
error goes back to the sender in every ``Feedback``, with the loss counters.
While the newest ``delta`` payload waits for a lost reference, the edge asks for an intra
payload with an ``IntraRequest`` on ``kp`` (a lost one holds nothing up), again at the first
packet `intra_request_interval` after the last request, until a payload decodes; a copy goes on
``ctrl`` at a slower rate, for senders that read only ``ctrl`` (protocol/README.md,
IntraRequest).
Prediction and rendering run in the shared `SynthesisEngine` (batched with other streams) and the
frame goes to every sink: the stream name's video for its viewers (the edge's `StreamOutput`,
which outlives the session) and, with `--record`, an mp4. An edge too
slow for its load skips rendering frames that are already `max_lag` late, so the delay stays
bounded instead of growing.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from kpvid.protocol import (
    Bye,
    Feedback,
    Hello,
    IntraRequest,
    KeypointDecoder,
    Keypoints,
    Message,
    ProtocolError,
    RateLimitedLog,
    SourceImageAssembler,
    SourceImageChunk,
    SourceRequest,
    decode_source_image,
)
from kpvid.protocol.keypoint_set import to_kp6
from kpvid.protocol.keypoint_stream import MAX_PENDING

from .jitter import JitterBuffer, PlayoutClock
from .metrics import ReceiverMetrics
from .prediction_error import PredictionErrorWindow
from .recorder import StreamRecorder
from .skipped_frames import SkippedFrames
from .stream_stats import (
    EndReason,
    FrameCounts,
    FrameOrigin,
    IntraRequestCounts,
    LatencySummary,
    StreamEnd,
    StreamStats,
)
from .synthesis import EngineClosedError, SynthesisEngine, UnknownStreamError

log = logging.getLogger(__name__)

SendMessage = Callable[[Message], None]
FrameSink = Callable[[int, np.ndarray], None]


@dataclass(frozen=True)
class ModelInfo:
    """What a sender's hello must agree with."""

    model_id: str
    frame_size: int
    num_kp: int

    def check(self, hello: Hello) -> str | None:
        """Why this edge cannot play `hello`'s stream, or None."""
        if hello.model_id != self.model_id:
            return f"model mismatch: the edge runs {self.model_id!r}, the sender {hello.model_id!r}"
        if hello.num_kp != self.num_kp:
            return f"keypoint count mismatch: the edge's model has {self.num_kp}, the sender " \
                   f"sends {hello.num_kp}"
        if hello.frame_size != self.frame_size:
            return f"frame size mismatch: the edge's model is {self.frame_size}px, the sender " \
                   f"sends {hello.frame_size}px"
        return None


@dataclass(frozen=True)
class SessionOptions:
    playout_delay: float = 0.1      # seconds the playout clock runs behind the sender
    idle_timeout: float = 3.0       # no packet for this long: the sender is gone
    source_timeout: float = 2.0     # ask the sender for its source image again after this long
    feedback_interval: float = 1.0
    # while the newest payload waits for a lost reference: at most one IntraRequest this often
    # on kp (a lost one is asked again), and one this often on ctrl (senders that read only ctrl)
    intra_request_interval: float = 0.1
    intra_request_ctrl_interval: float = 0.5
    max_lag: float = 0.25           # a frame this late is skipped (still predicted), not rendered
    record_dir: Path | None = None


class RateWindow:
    """Events and their sizes over the last `span` seconds (for kbps and fps)."""

    def __init__(self, span: float = 2.0) -> None:
        self.span = span
        self._events: deque[tuple[float, int]] = deque()

    def add(self, size: int = 1, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._events.append((now, size))
        self._trim(now)

    def rate(self, now: float | None = None) -> float:
        """Sum of sizes per second over the window."""
        now = time.monotonic() if now is None else now
        self._trim(now)
        return sum(size for _, size in self._events) / self.span

    def _trim(self, now: float) -> None:
        while self._events and self._events[0][0] < now - self.span:
            self._events.popleft()


class StreamSession:
    """The edge's side of one sender's stream, from its hello to its end."""

    def __init__(self, hello: Hello, *, engine: SynthesisEngine, metrics: ReceiverMetrics,
                 send_ctrl: SendMessage, send_kp: SendMessage | None = None,
                 options: SessionOptions = SessionOptions()) -> None:
        self.hello = hello
        self.name = hello.stream
        self.engine = engine
        self.metrics = metrics
        self.options = options
        self._send_ctrl = send_ctrl
        self._send_kp = send_kp  # None: IntraRequests go on ctrl only
        self.clock = PlayoutClock(hello.fps, options.playout_delay)
        self.jitter: JitterBuffer[tuple[np.ndarray, float]] = JitterBuffer()
        self.recorder: StreamRecorder | None = None
        self.recording_path: Path | None = None
        self.sinks: list[FrameSink] = []  # each frame out goes to every sink (viewers, mp4)
        self.viewers = 0
        self.counts = FrameCounts()
        self.packets = 0
        self.intra_requests = IntraRequestCounts()
        self.packet_bytes = 0
        self.decoder = KeypointDecoder(hello.codec, hello.num_kp)
        self._capture_times: dict[int, float] = {}  # of payloads not decoded yet
        self._intra_asked_at = {"kp": -float("inf"), "ctrl": -float("inf")}
        self.kp_bytes = RateWindow()
        self.frames_out = RateWindow()
        self.latencies: deque[float] = deque(maxlen=600)
        self.ended = asyncio.Event()
        self.end: StreamEnd | None = None  # set when it ends
        self._assembler = SourceImageAssembler()
        self._source_ready = asyncio.Event()
        self._first_packet = asyncio.Event()
        self._bye = False
        self._highest_index = -1
        self._last_index: int | None = None  # the stream's last frame, once the sender said so
        self._last_packet = time.monotonic()
        self.skipped = SkippedFrames(hello.observe, hello.predict)
        self.prediction_errors = PredictionErrorWindow()
        self._playing = False
        self._tasks: list[asyncio.Task] = []
        self._lock = asyncio.Lock()
        self._render_errors = RateLimitedLog(log)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        if self.options.record_dir is not None:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            path = self.options.record_dir / f"{self.name}-{stamp}.mp4"
            for n in itertools.count(2):  # a restart within the same second: never overwrite
                if not path.exists():
                    break
                path = path.with_name(f"{self.name}-{stamp}-{n}.mp4")
            self.recording_path = path
            self.recorder = StreamRecorder(self.recording_path, self.hello.fps)
            self.sinks.append(self.recorder.write)
        self._tasks = [
            asyncio.create_task(self._guarded(self._playout(), "playout"),
                                name=f"playout-{self.name}"),
            asyncio.create_task(self._guarded(self._housekeeping(), "housekeeping"),
                                name=f"ctrl-{self.name}")]
        log.info("stream %s: %.3g fps, observe %d predict %d, %dpx, %d keypoints, codec %s",
                 self.name, self.hello.fps, self.hello.observe, self.hello.predict,
                 self.hello.frame_size, self.hello.num_kp, self.hello.codec)

    async def _guarded(self, work: Coroutine[Any, Any, None], what: str) -> None:
        """Run one of the stream's tasks; a bug in it ends this stream, never the edge."""
        try:
            await work
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("stream %s: %s failed", self.name, what)
            await self.finish(StreamEnd(EndReason.FAILED, what))

    async def finish(self, end: StreamEnd) -> None:
        """Stop playing, free the stream's resources and finalise its recording (idempotent:
        the first end is the one kept)."""
        async with self._lock:
            if self.ended.is_set():
                return
            self.end = end
            current = asyncio.current_task()
            for task in self._tasks:
                if task is not current:
                    task.cancel()
            for task in self._tasks:
                if task is not current:
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            self.engine.drop(self.name)
            if self.recorder is not None:
                await asyncio.get_running_loop().run_in_executor(None, self.recorder.close)
                log.info("stream %s: recorded %d frames to %s", self.name,
                         self.recorder.frames_written, self.recording_path)
            self.metrics.forget_stream(self.name)
            self.ended.set()
            log.info("stream %s ended (%s): %s", self.name, end, dataclasses.asdict(self.counts))

    @property
    def said_bye(self) -> bool:
        """The sender has said bye: the stream plays out what it has, then ends by itself."""
        return self._bye

    # ------------------------------------------------------------------ messages in
    async def handle(self, message: Message, nbytes: int) -> None:
        """A decoded message from the sender (`nbytes` on the wire)."""
        if isinstance(message, Keypoints):
            self._on_keypoints(message, nbytes)
        elif isinstance(message, SourceImageChunk):
            await self._on_source_chunk(message)
        elif isinstance(message, Bye):
            log.info("stream %s: sender says bye (%s)", self.name, message.reason)
            self._bye = True
            if message.last_frame_index is not None:
                self._last_index = message.last_frame_index
            if self._highest_index < 0:
                await self.finish(StreamEnd(EndReason.BYE_BEFORE_KEYPOINTS, message.reason))
        elif isinstance(message, Hello):
            raise ProtocolError("a second hello on a live stream")
        else:
            raise ProtocolError(f"{type(message).__name__} is not a sender-to-edge message")

    def _on_keypoints(self, message: Keypoints, nbytes: int) -> None:
        hello = self.hello
        if message.codec != hello.codec:
            raise ProtocolError(f"keypoints in codec {message.codec!r}, hello said {hello.codec!r}")
        self._capture_times[message.frame_index] = hello.capture_time(message)
        try:
            decoded = self.decoder.decode(message.frame_index, message.payload)
        except ProtocolError as exc:
            del self._capture_times[message.frame_index]
            raise ProtocolError(f"keypoints of frame {message.frame_index}: {exc}") from None
        now = time.monotonic()
        self._last_packet = now
        self.packets += 1
        self.packet_bytes += nbytes
        self.kp_bytes.add(nbytes, now)
        self.metrics.keypoint_bytes.labels(self.name).inc(nbytes)
        self.skipped.add(message.frame_index, message.skip_after)
        if self.decoder.broken:
            self._ask_for_intra(message.frame_index, now)
        for keypoints in decoded:
            capture_time = self._capture_times.pop(keypoints.frame_index, None)
            if self.jitter.put(keypoints.frame_index,
                               (to_kp6(keypoints.value, keypoints.jacobian), capture_time)):
                self.clock.on_packet(keypoints.frame_index, now)
                self._highest_index = max(self._highest_index, keypoints.frame_index)
                self._first_packet.set()
        while len(self._capture_times) > 2 * MAX_PENDING:
            del self._capture_times[min(self._capture_times)]

    def _ask_for_intra(self, frame_index: int, now: float) -> None:
        """IntraRequests while the newest payload waits for its reference: on kp at most every
        `intra_request_interval` (fast: never held up behind a lost ctrl message), on ctrl at
        most every `intra_request_ctrl_interval`."""
        request = IntraRequest(f"keypoints of frame {frame_index} wait for a reference that "
                               "has not come")
        options = self.options
        asked = self._intra_asked_at
        if self._send_kp is not None and now - asked["kp"] >= options.intra_request_interval:
            self._send_kp(request)
            asked["kp"] = now
            self.intra_requests.kp += 1
        if now - asked["ctrl"] >= options.intra_request_ctrl_interval:
            self._send_ctrl(request)
            asked["ctrl"] = now
            self.intra_requests.ctrl += 1

    async def _on_source_chunk(self, chunk: SourceImageChunk) -> None:
        data = self._assembler.add(chunk)
        if data is None:
            return
        image = decode_source_image(data, chunk.format)
        size = self.hello.frame_size
        if image.shape[:2] != (size, size):
            log.warning("stream %s: source image %dx%d resized to %dx%d", self.name,
                        image.shape[1], image.shape[0], size, size)
            image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
        await self.engine.set_source(self.name, image)
        log.info("stream %s: source image %d (%s, %d bytes) ready", self.name, chunk.image_id,
                 chunk.format, len(data))
        self._source_ready.set()

    # ------------------------------------------------------------------ playout
    def _finished(self, frame_index: int) -> bool:
        if self._bye:  # no more packets are coming: play through the last frame
            last = self._highest_index if self._last_index is None else self._last_index
            return frame_index > last
        return time.monotonic() - self._last_packet > self.options.idle_timeout

    async def _playout(self) -> None:
        await self._source_ready.wait()
        await self._first_packet.wait()
        self.clock.lock()
        index = self.clock.first_index
        assert index is not None
        self._playing = True
        while not self._finished(index):
            wait = self.clock.due(index) - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            entry = self.jitter.take(index)
            capture_time = None
            if entry is not None:
                kp6, capture_time = entry
                origin = FrameOrigin.OBSERVED
            else:
                kp6 = None
                origin = FrameOrigin.PREDICTED if self.skipped.skipped(index) else FrameOrigin.LOST
                self.prediction_errors.gap()
            self.counts.add(origin)
            self.metrics.frames.labels(self.name, origin.value).inc()
            late = time.monotonic() - self.clock.due(index) > self.options.max_lag
            if late:  # too slow to keep up: the predictor advances, the frame is not rendered
                self.counts.dropped += 1
                self.metrics.frames_dropped.labels(self.name).inc()
            try:
                played = await self.engine.play(self.name, kp6, draw=not late)
            except (EngineClosedError, UnknownStreamError):
                await self.finish(StreamEnd(EndReason.SYNTHESIS_STOPPED))
                return
            except Exception as error:  # this frame broke a model: skip it
                self._render_errors.warning("render", "stream %s: frame %d not rendered: %s",
                                            self.name, index, error)
                self.counts.dropped += 1
            else:
                if played.forecast is not None:
                    self.prediction_errors.add(played.forecast, played.kp6)
                if played.frame is not None:
                    self._emit(index, played.frame, capture_time)
            index += 1
        await self.finish(StreamEnd(EndReason.SENDER_FINISHED if self._bye
                                    else EndReason.SENDER_SILENT))

    def _emit(self, index: int, frame: np.ndarray, capture_time: float | None) -> None:
        for sink in self.sinks:
            sink(index, frame)
        self.counts.out += 1
        self.frames_out.add()
        if capture_time is not None:
            latency = time.time() - capture_time
            self.latencies.append(latency)
            self.metrics.latency.observe(latency)

    async def _housekeeping(self) -> None:
        """Feedback to the sender, and source-image requests until one has arrived."""
        asked_at = time.monotonic()
        while True:
            await asyncio.sleep(self.options.feedback_interval)
            now = time.monotonic()
            if not self._source_ready.is_set() and now - asked_at > self.options.source_timeout:
                self._send_ctrl(SourceRequest("no complete source image yet"))
                asked_at = now
            self._send_ctrl(Feedback(received=self.packets, lost=self.counts.lost,
                                     predicted=self.counts.predicted,
                                     prediction_error=self.prediction_errors.take()))
            if not self._playing and now - self._last_packet > self.options.idle_timeout:
                await self.finish(StreamEnd(EndReason.SENDER_SILENT_BEFORE_PLAYOUT))
                return

    # ------------------------------------------------------------------ reporting
    def _seconds_played(self) -> float:
        """Stream time covered by the frames played so far (at least one frame's worth)."""
        return max(self.counts.out, 1) / self.hello.fps

    def stats(self) -> StreamStats:
        """The stream's live figures (and its end, once it has ended)."""
        latencies = np.array(self.latencies) * 1000
        percentile = (lambda q: round(float(np.percentile(latencies, q)), 1)) \
            if len(latencies) else (lambda q: None)
        return StreamStats(
            name=self.name, fps=self.hello.fps, frame_size=self.hello.frame_size,
            observe=self.hello.observe, predict=self.skipped.predict, codec=self.hello.codec,
            predictor=self.engine.predictor_name, frames=dataclasses.replace(self.counts),
            packets=self.packets, undecodable=self.decoder.undecodable,
            intra_requests=dataclasses.replace(self.intra_requests),
            kbps=round(self.kp_bytes.rate() * 8 / 1000, 2),
            kbps_mean=round(self.packet_bytes * 8 / 1000 / self._seconds_played(), 2),
            fps_out=round(self.frames_out.rate(), 2),
            latency_ms=LatencySummary(p50=percentile(50), p99=percentile(99)),
            viewers=self.viewers,
            recording=str(self.recording_path) if self.recording_path else None,
            ended=self.end)
