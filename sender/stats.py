"""Sender counters, a live status line and the end-of-run summary."""

from __future__ import annotations

import logging
import statistics
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TextIO

from kpvid.protocol.keypoint_set import PX_PER_UNIT

if TYPE_CHECKING:
    from .face_crop import FaceCrop

log = logging.getLogger(__name__)

WINDOW_S = 2.0          # rates (fps, kbps) are measured over this sliding window
TTY_INTERVAL_S = 0.5    # live line refresh on a terminal
LOG_INTERVAL_S = 5.0    # status log line when stderr is not a terminal


@dataclass
class FeedbackSnapshot:
    """The receiver's latest Feedback, as it reported it."""

    received: int
    lost: int
    predicted: int
    prediction_error: float | None
    late: int = 0
    render_every: int = 1


@dataclass
class SenderStats:
    """Counts over the whole run (all sessions). ``bytes`` counts keypoint messages sent on the
    ``kp`` channel (encoded size); ``dropped`` are keypoint packets not sent because the channel
    was congested or not open."""

    frames: int = 0
    observed: int = 0
    skipped: int = 0
    packets: int = 0
    bytes: int = 0
    dropped: int = 0
    reconnects: int = 0
    connections: int = 0  # peer connections that opened
    source_images: int = 0
    schedule_changes: int = 0  # adaptive schedule: times N changed
    kp_ignored: int = 0  # messages from the edge on kp that were not an IntraRequest
    feedback: FeedbackSnapshot | None = None
    # the keypoint detector's time on each of the last observed frames, ms (appended on the
    # capture thread)
    detect_ms: deque = field(default_factory=lambda: deque(maxlen=600), repr=False)
    face_crop: FaceCrop | None = field(default=None, repr=False)  # --crop auto: its counts
    stream: TextIO = field(default_factory=lambda: sys.stderr, repr=False)
    _frame_times: deque = field(default_factory=deque, repr=False)
    _byte_times: deque = field(default_factory=deque, repr=False)
    first_frame: float | None = field(default=None, repr=False)
    last_frame: float | None = field(default=None, repr=False)
    _last_report: float = field(default_factory=time.monotonic, repr=False)
    _line_shown: bool = field(default=False, repr=False)

    def record_frame(self, observed: bool) -> None:
        now = time.monotonic()
        if self.first_frame is None:
            self.first_frame = now
        self.last_frame = now
        self.frames += 1
        if observed:
            self.observed += 1
        else:
            self.skipped += 1
        self._frame_times.append(now)
        self._trim(now)

    def record_packet(self, nbytes: int) -> None:
        now = time.monotonic()
        self.packets += 1
        self.bytes += nbytes
        self._byte_times.append((now, nbytes))
        self._trim(now)

    def record_drop(self) -> None:
        self.dropped += 1

    def _trim(self, now: float) -> None:
        while self._frame_times and now - self._frame_times[0] > WINDOW_S:
            self._frame_times.popleft()
        while self._byte_times and now - self._byte_times[0][0] > WINDOW_S:
            self._byte_times.popleft()

    def rates(self) -> tuple[float, float]:
        """(frames per second, keypoint kilobits per second) over the last few seconds."""
        now = time.monotonic()
        self._trim(now)
        span = min(WINDOW_S, max(now - (self.first_frame or now), 1e-3))
        fps = len(self._frame_times) / span
        kbps = sum(n for _, n in self._byte_times) * 8 / 1000 / span
        return fps, kbps

    def status_line(self) -> str:
        fps, kbps = self.rates()
        line = (f"{fps:5.1f} fps  {kbps:6.2f} kbps  {self.packets} packets  "
                f"observed/skipped {self.observed}/{self.skipped}")
        if self.dropped:
            line += f"  dropped {self.dropped}"
        if self.reconnects:
            line += f"  reconnects {self.reconnects}"
        if self.face_crop is not None and self.face_crop.misses:
            line += f"  no face {self.face_crop.misses}/{self.face_crop.checks}"
        return line

    def maybe_report(self) -> None:
        """Refresh the live line (terminal, ~2/s) or log a status line (otherwise, every 5 s)."""
        now = time.monotonic()
        tty = self.stream.isatty()
        if now - self._last_report < (TTY_INTERVAL_S if tty else LOG_INTERVAL_S):
            return
        self._last_report = now
        if tty:
            self.stream.write("\r\x1b[K" + self.status_line())
            self.stream.flush()
            self._line_shown = True
        else:
            log.info("%s", self.status_line())

    def end_line(self) -> None:
        """Finish the live line so that later output starts on a fresh line."""
        if self._line_shown:
            self.stream.write("\n")
            self.stream.flush()
            self._line_shown = False

    def summary(self) -> str:
        """Totals over the run; rates over the time from the first frame to the last."""
        span = (self.last_frame - self.first_frame) if self.first_frame is not None else 0.0
        fps = (self.frames - 1) / span if span > 0 else 0.0
        kbps = self.bytes * 8 / 1000 / span if span > 0 else 0.0
        per_packet = self.bytes / self.packets if self.packets else 0.0
        lines = [
            f"sent {self.frames} frames in {span:.1f} s ({fps:.1f} fps): "
            f"{self.observed} observed, {self.skipped} skipped",
            f"keypoints: {self.packets} packets, {self.bytes} bytes "
            f"({per_packet:.1f} B/packet, {kbps:.2f} kbps), {self.dropped} dropped",
            "keypoint detector: " + ("n/a" if not self.detect_ms else
                                     f"p50 {statistics.median(self.detect_ms):.1f} ms a frame"),
            f"source images: {self.source_images}, reconnects: {self.reconnects}, "
            f"schedule changes: {self.schedule_changes}",
        ]
        if not self.connections:
            attempts = self.reconnects + 1
            lines[-1] = (f"never connected to the edge ({attempts} attempt"
                         f"{'' if attempts == 1 else 's'})")
        if self.kp_ignored:
            lines[-1] += f", ignored on kp: {self.kp_ignored}"
        if self.face_crop is not None:
            lines.append(self.face_crop.summary())
        if self.feedback is not None:
            fb = self.feedback
            error = ("n/a" if fb.prediction_error is None
                     else f"{fb.prediction_error * PX_PER_UNIT:.2f} px at 256")
            lines.append(f"receiver: {fb.received} received, {fb.late} late, {fb.lost} lost, "
                         f"{fb.predicted} predicted, prediction error {error}")
        return "\n".join(lines)
