"""What the edge plays for a clip's keypoints, on a simulated clock and channel, without WebRTC.

The clip goes through the same objects as a live stream: the sender's
:class:`~kpvid.sender.frame_pipeline.FramePipeline` (schedule, adaptation, keypoint encoder), a
:class:`SimulatedChannel` (loss, delay, jitter: reordering), the edge's
:class:`~kpvid.receiver.keypoint_intake.KeypointIntake` (decoding, skipped frames, intra
requests) and :class:`~kpvid.receiver.playout.Playout` (jitter buffer, playout clock), and a
predictor for every frame the edge plays without a set. Events run in time order: frame ``i``
is captured at ``i / fps``, a message arrives after the channel's delay, the edge's
IntraRequests and Feedback reach the sender after the same delay (they are never lost), and
frame ``i`` plays at its due time. Used by ``kpvid-eval reconstruct`` and ``kpvid-bench
bandwidth``, ``loss`` and ``adapt`` to count bytes and to rebuild the frames a stream would
show."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from kpvid.models.predictors import Predictor
from kpvid.protocol import Hello, Keypoints, encode_message
from kpvid.protocol.keypoint_set import from_kp6
from kpvid.protocol.schedule import Schedule
from kpvid.receiver.keypoint_intake import DecodedSet, IntraRequestTiming, KeypointIntake
from kpvid.receiver.playout import Playout
from kpvid.receiver.prediction_error import PredictionErrorWindow
from kpvid.sender.adaptation import AdaptationOptions
from kpvid.sender.frame_pipeline import FramePipeline

from .loss_models import LossModel

UNCODED = "none"  # no codec: the detector's float keypoints, no bytes counted
# A typical frame index of a running call (two LEB128 bytes) for message sizes; 0..127 would
# flatter the first four seconds.
FRAME_INDEX_BASE = 1000
FPS = 30.0
PLAYOUT_DELAY = 0.1  # the receiver's default --playout-delay
FEEDBACK_INTERVAL = 1.0  # the receiver sends a Feedback every second


@dataclass(frozen=True)
class SimulatedChannel:
    """The path from sender to edge: ``loss`` drops packets in sending order, each packet takes
    ``delay`` seconds plus a uniform share of ``jitter`` (packets that overtake each other arrive
    reordered), drawn with ``seed``. The way back (IntraRequest, Feedback) takes ``delay``."""

    loss: LossModel | None = None
    delay: float = 0.0
    jitter: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not (self.delay >= 0 and self.jitter >= 0):
            raise ValueError(f"delay and jitter must be >= 0 s, got {self.delay}, {self.jitter}")


@dataclass(frozen=True)
class TransmittedClip:
    """A clip as the edge plays it."""

    kp6: np.ndarray  # (T, K, 6) float32: decoded keypoints, or predicted ones in the gaps
    observed: np.ndarray  # (T,) bool: the frame's keypoints were sent
    payload_bytes: np.ndarray  # (T,) int: codec payload per frame (0 when not sent)
    message_bytes: np.ndarray  # (T,) int: whole Keypoints message per frame (0 when not sent)
    intra_payloads: int
    # (T,) bool: the frame's keypoints were sent but lost on the way (all False without loss)
    lost: np.ndarray
    # (T,) bool: sent but not played as decoded (lost, late, or a delta payload whose reference
    # was lost): predicted like a skipped frame
    concealed: np.ndarray
    intra_requests: int  # times the edge asked for an intra payload
    predict: np.ndarray  # (T,) int: the schedule's N at each frame

    @property
    def packets(self) -> int:
        return int(self.observed.sum())

    @property
    def undecodable(self) -> np.ndarray:
        """(T,) bool: received but not decodable (its delta reference was lost)."""
        return self.concealed & ~self.lost


@dataclass(order=True)
class _Event:
    time: float
    order: int  # at equal times: arrivals, then the sender's messages, captures, playout
    seq: int
    action: Callable[[], None] = field(compare=False)


ARRIVAL, AT_SENDER, CAPTURE, PLAY = range(4)


def transmit(kp6: np.ndarray, schedule: Schedule, codec: str,
             new_predictor: Callable[[], Predictor], intra_interval: int | None = None,
             channel: SimulatedChannel | None = None,
             intra_timing: IntraRequestTiming | None = None,
             adapt: AdaptationOptions | None = None, source_kp6: np.ndarray | None = None,
             fps: float = FPS) -> TransmittedClip:
    """Stream the clip's keypoint sets ``kp6`` (T, K, 6), detected on every frame, at ``fps``
    under ``schedule`` in ``codec`` (:data:`UNCODED`: the float sets themselves, sizes of
    ``f16``'s messages), and return what the edge plays for every frame.

    Frames before the first set that reaches the edge show the source image: they are played
    with ``source_kp6`` (default ``kp6[0]``: the source image is the first frame, and the edge
    detects its keypoints itself). ``channel`` defaults to a perfect one, ``intra_timing`` to
    the receiver's. ``adapt`` makes the sender adapt N to the motion and the edge's
    feedback."""
    channel = channel or SimulatedChannel()
    frames, num_kp = kp6.shape[:2]
    exact = codec == UNCODED
    hello = Hello(stream="simulated", fps=fps, observe=schedule.observe,
                  predict=schedule.predict, frame_size=256, num_kp=num_kp, model_id="simulated",
                  codec="f16" if exact else codec, start_time=0.0)
    pipeline = FramePipeline(hello, **({} if intra_interval is None
                                       else {"intra_interval": intra_interval}), adapt=adapt)
    intake = KeypointIntake(hello, intra_timing or IntraRequestTiming())
    playout = Playout(fps, PLAYOUT_DELAY, float("inf"), intake.skipped)
    predictor = new_predictor()
    errors = PredictionErrorWindow()
    rng = np.random.default_rng(channel.seed)
    events: list[_Event] = []
    sequence = itertools.count()

    def at(time: float, order: int, action: Callable[[], None]) -> None:
        heapq.heappush(events, _Event(time, order, next(sequence), action))

    out = np.empty((frames, num_kp, 6), np.float32)
    observed = np.zeros(frames, bool)
    payload_bytes = np.zeros(frames, np.int64)
    message_bytes = np.zeros(frames, np.int64)
    lost = np.zeros(frames, bool)
    played_observed = np.zeros(frames, bool)
    predict = np.zeros(frames, np.int64)
    fallback = kp6[0] if source_kp6 is None else source_kp6
    requests = 0
    started = False  # the predictor has a set
    next_play = 0  # the next frame to play, once the clock has started
    clock = [0.0]  # the simulated time of the event being run
    end = frames / fps + PLAYOUT_DELAY + channel.delay + channel.jitter

    def capture(i: int) -> None:
        observed[i] = pipeline.is_observed(i)
        if observed[i]:
            send(i)
        predict[i] = pipeline.schedules.at(i).predict  # after a group start's adaptation

    def send(i: int) -> None:
        now = i / fps
        value, jacobian = from_kp6(kp6[i])
        pipeline.adapt(i, value)
        message = pipeline.keypoints(i, value, jacobian, now)
        if not exact:
            payload_bytes[i] = len(message.payload)
            message_bytes[i] = len(encode_message(
                replace(message, frame_index=FRAME_INDEX_BASE + i)))
        lost[i] = channel.loss is not None and bool(channel.loss.lost(1)[0])
        if not lost[i]:
            at(now + channel.delay + channel.jitter * rng.random(), ARRIVAL,
               lambda: arrive(message))

    def arrive(message: Keypoints) -> None:
        nonlocal requests, next_play
        now = clock[0]
        result = intake.receive(message, len(message.payload), now)
        if result.ask_intra_on:
            requests += 1
            at(now + channel.delay, AT_SENDER, pipeline.on_intra_request)
        starting = not playout.clock.started
        for decoded in result.decoded:
            if exact:
                decoded = DecodedSet(decoded.frame_index, kp6[decoded.frame_index],
                                     decoded.capture_time)
            playout.put(decoded, now)
        if starting and playout.clock.started:  # the first set: playout begins
            playout.clock.lock()
            next_play = playout.clock.first_index or 0
            at(playout.clock.due(next_play), PLAY, play)

    def play() -> None:
        nonlocal started, next_play
        i = next_play
        tick = playout.tick(i, clock[0])
        if tick.kp6 is not None:
            played_observed[i] = True
            if started:
                errors.add(predictor.forecast(), tick.kp6)
            predictor.observe(tick.kp6)
            out[i] = tick.kp6
            started = True
        else:
            errors.gap()
            out[i] = predictor.predict() if started else fallback
        next_play += 1
        if next_play < frames:
            at(playout.clock.due(next_play), PLAY, play)

    def feedback() -> None:  # every FEEDBACK_INTERVAL, as the receiver's housekeeping
        report = (intake.packets, playout.counts.lost, errors.take())
        at(clock[0] + channel.delay, AT_SENDER, lambda: pipeline.on_feedback(*report))
        if clock[0] + FEEDBACK_INTERVAL < end:
            at(clock[0] + FEEDBACK_INTERVAL, PLAY, feedback)

    for i in range(frames):
        at(i / fps, CAPTURE, lambda i=i: capture(i))
    at(FEEDBACK_INTERVAL, PLAY, feedback)
    while events and next_play < frames:
        event = heapq.heappop(events)
        clock[0] = event.time
        event.action()
    out[:playout.clock.first_index if playout.clock.started else frames] = fallback
    return TransmittedClip(out, observed, payload_bytes, message_bytes,
                           pipeline.encoder.intra_payloads, lost, observed & ~played_observed,
                           requests, predict)
