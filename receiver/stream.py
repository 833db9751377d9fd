"""One sender's stream on the edge: messages in, a frame out on every tick of its playout clock.

The session is independent of WebRTC: it receives decoded protocol messages from its
`SenderPeer` and answers through callables, `send_ctrl` (the reliable channel) and `send_kp`
(the unreliable one, for IntraRequests), so it can be tested on its own. It puts together:

- `KeypointIntake` (keypoint_intake.py): each ``Keypoints`` message decoded, which frames the
  sender skipped, and when to ask for an intra payload (sent here on the channels it names);
- `Playout` (playout.py): the jitter buffer and playout clock. A frame plays as soon as its set
  is in, or at its deadline (which follows the stream's arrival jitter) from a prediction; a
  set that comes after that is *late* and corrects the predictor (`SynthesisEngine.correct`).
  It says whether each frame is observed, predicted, lost or late, and whether it is rendered
  (not when the edge is ``max_lag`` behind, nor, while the synthesis is overloaded, for all
  but every k-th frame: `SynthesisEngine.render_every`, which the sender hears too);
- the shared `SynthesisEngine`, which steps the stream's predictor (it fills every frame without
  a set, open loop) and renders, batched with other streams;
- the feedback to the sender (every ``feedback_interval``: counts and the predictor's error at
  the sets that arrived, `PredictionErrorWindow`), source-image assembly, and the sinks each
  frame goes to: the stream name's video for its viewers (the edge's `StreamOutput`, which
  outlives the session) and, with `--record`, an mp4.
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
    Keypoints,
    Message,
    ProtocolError,
    RateLimitedLog,
    SourceImageAssembler,
    SourceImageChunk,
    SourceRequest,
    decode_source_image,
)

from .keypoint_intake import IntraRequestTiming, KeypointIntake
from .metrics import ReceiverMetrics
from .playout import Placed, Playout
from .prediction_error import PredictionErrorWindow
from .recorder import StreamRecorder
from .stream_stats import (
    EndReason,
    FrameCounts,
    LatencySummary,
    StreamEnd,
    StreamStats,
    Undrawn,
)
from .synthesis import EngineClosedError, SynthesisEngine, UnknownStreamError

log = logging.getLogger(__name__)

SendMessage = Callable[[Message], None]
# a frame out: its stream frame index, the picture (uint8 H x W x 3 RGB) and the sender's capture
# time of that frame (wall clock, seconds since the epoch; None until the stream's first set)
FrameSink = Callable[[int, np.ndarray, float | None], None]


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
    # how long a frame waits for its set beyond the fastest arrival, in seconds; None: a high
    # percentile of the stream's arrival jitter, at most max_playout_delay
    playout_delay: float | None = None
    max_playout_delay: float = 0.1
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


class StageTimes:
    """Where the time of observed frames goes on the way to the edge's output: the sender's
    detection and the channel (capture to arrival), the wait for the frame's turn (arrival to
    tick), and prediction and synthesis (tick to frame out); p50s in ms. Wall clock."""

    def __init__(self, keep: int = 600) -> None:
        self._stages: dict[str, deque[float]] = {
            name: deque(maxlen=keep) for name in ("capture_to_arrival", "wait", "synthesis")}

    def add(self, captured: float, arrived: float, ticked: float, out: float) -> None:
        for name, seconds in zip(self._stages, (arrived - captured, ticked - arrived,
                                                out - ticked)):
            self._stages[name].append(seconds)

    def summary(self) -> dict[str, float | None]:
        return {name: round(1000 * float(np.median(values)), 1) if values else None
                for name, values in self._stages.items()}


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
        self.intake = KeypointIntake(hello, IntraRequestTiming(
            kp_interval=options.intra_request_interval if send_kp is not None else None,
            ctrl_interval=options.intra_request_ctrl_interval))
        self.playout = Playout(hello.fps, options.playout_delay, options.max_lag,
                               self.intake.skipped, options.max_playout_delay)
        self.recorder: StreamRecorder | None = None
        self.recording_path: Path | None = None
        self.sinks: list[FrameSink] = []  # each frame out goes to every sink (viewers, mp4)
        self.viewers = 0
        self.kp_bytes = RateWindow()
        self.frames_out = RateWindow()
        self.latencies: deque[float] = deque(maxlen=600)
        self.stages = StageTimes()
        self.ended = asyncio.Event()
        self.end: StreamEnd | None = None  # set when it ends
        self._assembler = SourceImageAssembler()
        self._source_ready = asyncio.Event()
        self._first_packet = asyncio.Event()
        self._news = asyncio.Event()  # a set was queued, or the sender said bye
        self._bye_reason: str | None = None  # what the sender's bye said, once it has
        self._highest_index = -1
        self._last_index: int | None = None  # the stream's last frame, once the sender said so
        self._last_packet = time.monotonic()
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
            recorder = self.recorder
            self.sinks.append(lambda index, rgb, _capture_time: recorder.write(index, rgb))
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
        return self._bye_reason is not None

    # ------------------------------------------------------------------ messages in
    async def handle(self, message: Message, nbytes: int) -> None:
        """A decoded message from the sender (`nbytes` on the wire)."""
        if isinstance(message, Keypoints):
            self._on_keypoints(message, nbytes)
        elif isinstance(message, SourceImageChunk):
            await self._on_source_chunk(message)
        elif isinstance(message, Bye):
            log.info("stream %s: sender says bye (%s)", self.name, message.reason)
            self._bye_reason = message.reason
            self._news.set()
            if message.last_frame_index is not None:
                self._last_index = message.last_frame_index
            if self._highest_index < 0:
                await self.finish(StreamEnd(EndReason.BYE_BEFORE_KEYPOINTS, message.reason))
        elif isinstance(message, Hello):
            raise ProtocolError("a second hello on a live stream")
        else:
            raise ProtocolError(f"{type(message).__name__} is not a sender-to-edge message")

    def _on_keypoints(self, message: Keypoints, nbytes: int) -> None:
        now = time.monotonic()
        intake = self.intake.receive(message, nbytes, now)
        self._last_packet = now
        self.kp_bytes.add(nbytes, now)
        self.metrics.keypoint_bytes.labels(self.name).inc(nbytes)
        if intake.ask_intra_on:
            request = IntraRequest(f"keypoints of frame {message.frame_index} wait for a "
                                   "reference that has not come")
            for channel in intake.ask_intra_on:
                send = self._send_kp if channel == "kp" else self._send_ctrl
                assert send is not None  # the intake asks on kp only when there is one
                send(request)
        for decoded in intake.decoded:
            placed = self.playout.put(decoded, now)
            if placed is Placed.QUEUED:
                self._highest_index = max(self._highest_index, decoded.frame_index)
                self._first_packet.set()
                self._news.set()
            elif placed is Placed.LATE:
                self.metrics.late_sets.labels(self.name).inc()
                self.engine.correct(self.name, decoded.frame_index, decoded.kp6)

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
        if self.said_bye:  # no more packets are coming: play through the last frame
            last = self._highest_index if self._last_index is None else self._last_index
            return frame_index > last
        return time.monotonic() - self._last_packet > self.options.idle_timeout

    async def _playout(self) -> None:
        await self._source_ready.wait()
        await self._first_packet.wait()
        clock = self.playout.clock
        clock.lock()
        index = clock.first_index
        assert index is not None
        self._playing = True
        while await self._until_due(index):
            ticked_at = time.monotonic()
            tick = self.playout.tick(index, ticked_at, self.engine.render_every)
            self.engine.note_lag(tick.lag)
            if tick.kp6 is None:
                self.prediction_errors.gap()
            self.metrics.frames.labels(self.name, tick.origin.value).inc()
            if tick.undrawn is not None:  # the predictor advances, nothing is rendered
                (self.metrics.frames_thinned if tick.undrawn is Undrawn.THINNED
                 else self.metrics.frames_dropped).labels(self.name).inc()
            try:
                played = await self.engine.play(self.name, tick.kp6, draw=tick.draw, index=index)
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
                    self._emit(index, played.frame, tick.capture_time)
                    if tick.arrival is not None and tick.capture_time is not None:
                        wall = time.time() - time.monotonic()  # monotonic -> wall clock
                        self.stages.add(tick.capture_time, tick.arrival + wall,
                                        ticked_at + wall, time.monotonic() + wall)
            index += 1
        await self.finish(StreamEnd(EndReason.SENDER_SILENT) if self._bye_reason is None
                          else StreamEnd(EndReason.SENDER_FINISHED, self._bye_reason))

    async def _until_due(self, index: int) -> bool:
        """Wait until frame ``index`` is due: its set came, or its time to go without it
        (`Playout.due`). False: the stream ends before it."""
        while True:
            if self._finished(index):
                return False
            wait = self.playout.due(index) - time.monotonic()
            if wait <= 0:
                break
            self._news.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._news.wait(), wait)
        return True

    @property
    def counts(self) -> FrameCounts:
        """Where the frames played so far came from, and how many were rendered."""
        return self.playout.counts

    @property
    def packets(self) -> int:
        """Keypoints messages taken so far."""
        return self.intake.packets

    def _emit(self, index: int, frame: np.ndarray, capture_time: float | None) -> None:
        for sink in self.sinks:
            sink(index, frame, capture_time)
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
            self._send_ctrl(self.feedback())
            self.metrics.render_every.set(self.engine.render_every)
            if not self._playing and now - self._last_packet > self.options.idle_timeout:
                await self.finish(StreamEnd(EndReason.SENDER_SILENT_BEFORE_PLAYOUT))
                return

    # ------------------------------------------------------------------ reporting
    def feedback(self) -> Feedback:
        """The sender's Feedback: the stream's counts so far, and the prediction error since
        the last one."""
        return Feedback(received=self.packets, lost=self.counts.lost,
                        predicted=self.counts.predicted,
                        prediction_error=self.prediction_errors.take(), late=self.counts.late,
                        render_every=self.engine.render_every)

    def _seconds_played(self) -> float:
        """Stream time covered by the frames played so far, rendered or not (at least one
        frame's worth)."""
        return max(self.counts.ticks, 1) / self.hello.fps

    def stats(self) -> StreamStats:
        """The stream's live figures (and its end, once it has ended)."""
        latencies = np.array(self.latencies) * 1000
        percentile = (lambda q: round(float(np.percentile(latencies, q)), 1)) \
            if len(latencies) else (lambda q: None)
        return StreamStats(
            name=self.name, fps=self.hello.fps, frame_size=self.hello.frame_size,
            observe=self.hello.observe, predict=self.intake.skipped.predict, codec=self.hello.codec,
            predictor=self.engine.predictor_name, frames=dataclasses.replace(self.counts),
            packets=self.packets, undecodable=self.intake.decoder.undecodable,
            intra_requests=dataclasses.replace(self.intake.intra_requests),
            kbps=round(self.kp_bytes.rate() * 8 / 1000, 2),
            kbps_mean=round(self.intake.packet_bytes * 8 / 1000 / self._seconds_played(), 2),
            fps_out=round(self.frames_out.rate(), 2),
            latency_ms=LatencySummary(p50=percentile(50), p99=percentile(99)),
            stages_ms=self.stages.summary(), render_every=self.engine.render_every,
            viewers=self.viewers,
            recording=str(self.recording_path) if self.recording_path else None,
            ended=self.end)
