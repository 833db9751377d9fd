"""Prometheus metrics of one receiver.

Every receiver has its own registry (so several can live in one process, as in the tests).
Per-stream series are removed when the stream ends, so names seen once do not pile up.
"""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

FRAME_KINDS = ("observed", "predicted", "lost")


class ReceiverMetrics:
    """The receiver's counters, gauges and histograms."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.frames = Counter(
            "kpvid_frames", "Frames played out, by where their keypoints came from "
            "(observed: received; predicted: scheduled gap; lost: concealed loss)",
            ["stream", "kind"], registry=self.registry)
        self.frames_dropped = Counter(
            "kpvid_frames_dropped", "Frames not rendered because the edge ran too late",
            ["stream"], registry=self.registry)
        self.frames_thinned = Counter(
            "kpvid_frames_thinned", "Frames not rendered because the overloaded edge renders "
            "only every k-th frame", ["stream"], registry=self.registry)
        self.late_sets = Counter(
            "kpvid_late_sets", "Keypoint sets that came after their frame was played from a "
            "prediction (counted in kpvid_frames_total as lost; they correct the predictor)",
            ["stream"], registry=self.registry)
        self.render_every = Gauge(
            "kpvid_render_every", "The edge renders every k-th frame (1: all; more while its "
            "synthesis is overloaded)", registry=self.registry)
        self.keypoint_bytes = Counter(
            "kpvid_keypoint_bytes", "Bytes of keypoint messages received", ["stream"],
            registry=self.registry)
        self.bad_messages = Counter(
            "kpvid_bad_messages", "Data-channel messages dropped, by reason", ["reason"],
            registry=self.registry)
        self.latency = Histogram(
            "kpvid_latency_seconds", "Capture on the sender to frame out of the receiver "
            "(every frame out; assumes synchronised clocks)",
            buckets=(0.01, 0.02, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0),
            registry=self.registry)
        self.batch_size = Histogram(
            "kpvid_synthesis_batch_frames", "Frames synthesised per batched model call",
            buckets=(1, 2, 4, 8, 16, 32), registry=self.registry)
        self.streams = Gauge("kpvid_streams", "Live sender streams", registry=self.registry)
        self.viewers = Gauge("kpvid_viewers", "Connected viewers", registry=self.registry)
        self.sessions = Counter("kpvid_sender_sessions", "Sender sessions accepted",
                                registry=self.registry)
        self.rejected = Counter("kpvid_http_rejected", "HTTP requests refused, by status",
                                ["status"], registry=self.registry)
        self.offers_refused = Counter(
            "kpvid_offers_refused", "Signaling offers refused before any peer connection was "
            "made, by reason (rate_limited, max_streams, max_viewers, too_many_pending)",
            ["reason"], registry=self.registry)
        self.handshakes_timed_out = Counter(
            "kpvid_handshakes_timed_out", "Peers closed for not getting going in time "
            "(sender: no hello; viewer: not connected), by role", ["role"],
            registry=self.registry)

    def forget_stream(self, stream: str) -> None:
        """Drop a finished stream's series."""
        for kind in FRAME_KINDS:
            with contextlib.suppress(KeyError):
                self.frames.remove(stream, kind)
        for counter in (self.keypoint_bytes, self.frames_dropped, self.frames_thinned,
                        self.late_sets):
            with contextlib.suppress(KeyError):
                counter.remove(stream)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
