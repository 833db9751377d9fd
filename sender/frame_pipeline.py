"""The sender's decisions for each frame of a session, apart from any transport.

For every frame: is it observed (the schedule, which an adapting sender changes at group starts
from the keypoints' motion and the edge's feedback, and any sender stretches while the edge says
it is overloaded)? For every observed frame: its ``Keypoints``
message, the payload coded against the last one sent (intra when the edge asks). The live
sender (:mod:`kpvid.sender.client`) drives a :class:`FramePipeline` with captured frames and a
data channel; the offline evaluation (:mod:`kpvid.training.transmission`) drives the same class
with a clip's keypoints and a simulated channel.
"""

from __future__ import annotations

import numpy as np

from kpvid.protocol import DEFAULT_INTRA_INTERVAL, Hello, KeypointEncoder, Keypoints
from kpvid.protocol.messages import MAX_GROUP
from kpvid.protocol.schedule import Schedule, ScheduleTimeline

from .adaptation import AdaptationOptions, ScheduleController


class FramePipeline:
    """One session's schedule and keypoint encoder (a new session starts a new pipeline: the
    edge's decoder starts afresh too)."""

    def __init__(self, hello: Hello, intra_interval: int = DEFAULT_INTRA_INTERVAL,
                 adapt: AdaptationOptions | None = None) -> None:
        self.hello = hello
        schedule = Schedule(hello.observe, hello.predict)
        self.encoder = KeypointEncoder(hello.codec, intra_interval)
        self.schedules = ScheduleTimeline(schedule)
        self.controller = None if adapt is None else ScheduleController(schedule, adapt)
        self.wanted = schedule  # the hello's, or the controller's latest choice
        self.render_every = 1  # the edge's, from its latest Feedback

    def is_observed(self, index: int) -> bool:
        """Whether frame ``index`` is detected and sent."""
        return self.schedules.at(index).is_observed(index)

    def adapt(self, index: int, value: np.ndarray) -> Schedule | None:
        """Call with every observed frame's keypoint positions ``value`` (K, 2) before its
        message: at a group start an adapting sender picks the coming groups' N from their
        motion, and while the edge renders only every k-th frame each group is k times as long
        (observe M, predict k (M + N) - M: the edge has less to render from, the sender
        detects less). Returns the schedule adopted from ``index`` on, if it changed."""
        current = self.schedules.at(index)
        if current.position(index) != 0:
            return None
        if self.controller is not None:
            self.wanted = self.controller.on_group_start(index, value) or self.wanted
        observe, predict = self.wanted.observe, self.wanted.predict
        if self.render_every > 1:
            predict = min(self.render_every * (observe + predict), MAX_GROUP) - observe
        if (observe, predict) == (current.observe, current.predict):
            return None
        adopted = Schedule(observe, predict, index)
        self.schedules.add(adopted)
        return adopted

    def keypoints(self, index: int, value: np.ndarray, jacobian: np.ndarray,
                  capture_time: float) -> Keypoints:
        """The message of observed frame ``index`` (captured at ``capture_time``); it becomes
        the reference of the next payload, so call it only for a message that is sent."""
        payload = self.encoder.encode(index, value, jacobian)
        return Keypoints(frame_index=index,
                         capture_offset_ms=self.hello.capture_offset_ms(index, capture_time),
                         skip_after=self.schedules.at(index).skip_after(index),
                         codec=self.hello.codec, payload=payload)

    def on_intra_request(self) -> None:
        """The edge asks for a self-contained payload: the next one is intra."""
        self.encoder.request_intra()

    def on_feedback(self, received: int, lost: int, prediction_error: float | None,
                    render_every: int = 1) -> None:
        """The edge's ``Feedback``: an adapting sender weighs its loss and prediction error;
        any sender stretches its groups while the edge renders only every k-th frame."""
        self.render_every = render_every
        if self.controller is not None:
            self.controller.on_feedback(received, lost, prediction_error)
