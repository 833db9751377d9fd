"""One connection to the edge, from the sender's side: its data channels and what goes over them.

An :class:`EdgeConnection` lives exactly as long as one peer connection, so that a reconnect
starts from nothing, with no state to reset: the ``kp`` and ``ctrl`` channels, the session's
:class:`~kpvid.sender.frame_pipeline.FramePipeline` (from the hello on), what the edge has said
(its last word, a request for the source image) and the messages both ways. The edge answers on
``ctrl`` (Feedback, SourceRequest, IntraRequest, Bye) and sends IntraRequests on ``kp`` as well;
anything else, or anything that does not decode, is counted, logged (rate-limited) and dropped.
:class:`~kpvid.sender.client.SenderClient` does the signalling, the reconnects and the paced
frame loop around it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

import numpy as np
from aiortc import RTCDataChannel

from kpvid.protocol import (
    Bye,
    Feedback,
    Hello,
    IntraRequest,
    ProtocolError,
    RateLimitedLog,
    SourceRequest,
    decode_message,
    encode_message,
    split_source_image,
)

from .frame_pipeline import FramePipeline
from .stats import FeedbackSnapshot, SenderStats

log = logging.getLogger(__name__)

BAD_MESSAGE_LOG_INTERVAL_S = 5.0
DRAIN_TIMEOUT_S = 2.0           # at the end: wait this long at most for the channels to empty
# then this long at most for the edge's own bye (it plays the stream out first, then sends its
# final Feedback and says bye; until then the last chunks may still be on their way)
EDGE_BYE_TIMEOUT_S = 2.0
# Once an edge has sent a Feedback (kpvid's does every second), this long without a word from
# it means it is gone, even if no packet said so (a crashed host): reconnect.
EDGE_SILENCE_S = 5.0


@dataclass
class Captured:
    """An observed frame: the picture, when it was read, and its keypoints."""

    rgb: np.ndarray
    capture_time: float
    value: np.ndarray
    jacobian: np.ndarray


class EdgeConnection:
    """One connection's channels, frame pipeline and what the edge said; see the module
    docstring. Register :meth:`on_ctrl_message` and :meth:`on_kp_message` on the channels, set
    ``lost`` when the connection goes, and call :meth:`start` once both channels are open."""

    def __init__(self, kp_channel: RTCDataChannel, ctrl_channel: RTCDataChannel,
                 stats: SenderStats, kp_buffer_limit: int) -> None:
        self.kp_channel = kp_channel
        self.ctrl_channel = ctrl_channel
        self.lost = asyncio.Event()
        self.edge_said_bye = asyncio.Event()
        self.stats = stats
        self.kp_buffer_limit = kp_buffer_limit
        self.pipeline: FramePipeline | None = None  # the session's, from start()
        self.source_wanted = False  # the edge asked for the source image (again)
        self._heard_at: float | None = None  # its last word, once it has sent a Feedback
        self._image_ids = 0
        self._bad_messages = RateLimitedLog(log, BAD_MESSAGE_LOG_INTERVAL_S)

    @property
    def open(self) -> bool:
        return not self.lost.is_set() and self.ctrl_channel.readyState == "open"

    def gone(self, now: float | None = None) -> str | None:
        """Why the edge is gone (the connection closed, or silence), or None while it is there."""
        if not self.open:
            return "connection to the edge lost"
        now = time.monotonic() if now is None else now
        if self._heard_at is not None and now - self._heard_at > EDGE_SILENCE_S:
            return f"no word from the edge for {EDGE_SILENCE_S:.0f} s"
        return None

    # ------------------------------------------------------------------ sender to edge
    def start(self, hello: Hello, pipeline: FramePipeline) -> None:
        """Send the session's hello; its frames go through ``pipeline`` from now on."""
        self.pipeline = pipeline
        self.ctrl_channel.send(encode_message(hello))

    def send_source_image(self, image: bytes, image_format: str) -> None:
        """The source image in chunks on ``ctrl``; it answers any request for it so far."""
        self._image_ids += 1
        chunks = split_source_image(self._image_ids, image, image_format)
        for chunk in chunks:
            self.ctrl_channel.send(encode_message(chunk))
        self.source_wanted = False
        self.stats.source_images += 1
        log.info("sent the source image (%d bytes, %d chunk%s)", len(image), len(chunks),
                 "" if len(chunks) == 1 else "s")

    def send_keypoints(self, index: int, captured: Captured) -> None:
        """Observed frame ``index``'s message on ``kp``, or a counted drop when the channel is
        not open or congested (decided before coding: a delta payload refers to the last one
        sent)."""
        if self.pipeline is None:
            raise RuntimeError("keypoints before the hello: call start() first")
        channel = self.kp_channel
        if channel.readyState != "open" or channel.bufferedAmount > self.kp_buffer_limit:
            self.stats.record_drop()
            return
        data = encode_message(self.pipeline.keypoints(index, captured.value, captured.jacobian,
                                                      captured.capture_time))
        self.kp_channel.send(data)
        self.stats.record_packet(len(data))

    async def goodbye(self, reason: str, last_frame_index: int | None = None) -> None:
        """Bye on ``ctrl`` (with the stream's last frame index, so the edge plays through it),
        then let both channels drain (at most DRAIN_TIMEOUT_S) and wait for the edge's bye, which
        follows its final Feedback (at most EDGE_BYE_TIMEOUT_S)."""
        if self.ctrl_channel.readyState != "open":
            return
        last = last_frame_index if last_frame_index is not None and last_frame_index >= 0 \
            else None
        self.ctrl_channel.send(encode_message(Bye(reason, last_frame_index=last)))
        log.info("said bye to the edge (%s)", reason)
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while (self.ctrl_channel.bufferedAmount or self.kp_channel.bufferedAmount) \
                and self.ctrl_channel.readyState == "open" and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.edge_said_bye.wait(), EDGE_BYE_TIMEOUT_S)

    # ------------------------------------------------------------------ edge to sender
    def on_ctrl_message(self, data: bytes | str) -> None:
        if isinstance(data, str):
            self._bad_messages.warning("text", "ignored a text message on ctrl (%d chars)",
                                       len(data))
            return
        try:
            message = decode_message(data)
        except ProtocolError as exc:
            self._bad_messages.warning("bad", "ignored a bad message from the edge: %s", exc)
            return
        if isinstance(message, Feedback) or self._heard_at is not None:
            self._heard_at = time.monotonic()
        if isinstance(message, SourceRequest):
            log.info("edge asks for the source image (%s)", message.reason)
            self.source_wanted = True
        elif isinstance(message, IntraRequest):
            self._on_intra_request(message)
        elif isinstance(message, Feedback):
            self.stats.feedback = FeedbackSnapshot(message.received, message.lost,
                                                   message.predicted, message.prediction_error,
                                                   message.late, message.render_every)
            if self.pipeline is not None:
                if message.render_every != self.pipeline.render_every:
                    log.info("edge renders %s", "every frame again" if message.render_every == 1
                             else f"1 frame in {message.render_every}: it is overloaded, so "
                             "this sender detects fewer frames")
                self.pipeline.on_feedback(message.received, message.lost,
                                          message.prediction_error, message.render_every)
        elif isinstance(message, Bye):
            log.info("edge said bye: %s", message.reason)
            self.edge_said_bye.set()
        else:
            self._bad_messages.warning("unexpected", "ignored an unexpected %s from the edge",
                                       type(message).__name__)

    def on_kp_message(self, data: bytes | str) -> None:
        """IntraRequests, the only message the edge sends on ``kp``; anything else there is
        counted and dropped."""
        try:
            message = decode_message(data) if isinstance(data, bytes) else None
        except ProtocolError:
            message = None
        if isinstance(message, IntraRequest):
            if self._heard_at is not None:
                self._heard_at = time.monotonic()
            self._on_intra_request(message)
            return
        self.stats.kp_ignored += 1
        self._bad_messages.warning("kp", "ignored a message on kp that is not an IntraRequest "
                                   "(%s)", type(message).__name__ if message else "undecodable")

    def _on_intra_request(self, message: IntraRequest) -> None:
        """Make the next keypoint payload intra (on either channel, or both: once). Before the
        hello there is nothing to do: a session's first payload is intra anyway."""
        log.debug("edge asks for an intra keypoint payload (%s)", message.reason)
        if self.pipeline is not None:
            self.pipeline.on_intra_request()

