"""What the edge plays for a clip's keypoints, without a network: the sender's schedule and
keypoint codec, then the edge's predictor in the gaps. Used by ``kpvid-eval reconstruct`` and
``kpvid-bench bandwidth`` to count bytes and to rebuild the frames a stream would show, and with
a packet loss model (:mod:`kpvid.training.loss_models`) by ``kpvid-bench loss``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from kpvid.models.predictors import Predictor
from kpvid.protocol import KeypointDecoder, KeypointEncoder, Keypoints, encode_message
from kpvid.protocol.keypoint_set import from_kp6, to_kp6
from kpvid.protocol.schedule import Schedule, ScheduleTimeline
from kpvid.receiver.prediction_error import PredictionErrorWindow
from kpvid.sender.adaptation import ScheduleController

from .loss_models import LossModel

UNCODED = "none"  # no codec: the detector's float keypoints, no bytes counted
# A typical frame index of a running call (two LEB128 bytes) for message sizes; 0..127 would
# flatter the first four seconds.
FRAME_INDEX_BASE = 1000


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
    # (T,) bool: sent but not played as decoded (lost, or a delta payload whose reference was
    # lost): predicted like a skipped frame
    concealed: np.ndarray
    intra_requests: int  # IntraRequests the edge sent
    predict: np.ndarray  # (T,) int: the schedule's N at each frame

    @property
    def packets(self) -> int:
        return int(self.observed.sum())

    @property
    def undecodable(self) -> np.ndarray:
        """(T,) bool: received but not decodable (its delta reference was lost)."""
        return self.concealed & ~self.lost


@dataclass(frozen=True)
class FeedbackLoop:
    """An adapting sender and the edge's feedback to it, in frames: the controller picks each
    group's N at its start from the sender's keypoints; a ``Feedback`` every ``interval`` frames
    (the receiver's 1 s at 30 fps) reaches it ``delay`` frames later."""

    controller: ScheduleController
    interval: int = 30
    delay: int = 3


def transmit(kp6: np.ndarray, schedule: Schedule, codec: str,
             new_predictor: Callable[[], Predictor],
             intra_interval: int | None = None, loss: LossModel | None = None,
             intra_request_delay: int = 1, intra_request_interval: int = 1,
             source_kp6: np.ndarray | None = None,
             feedback: FeedbackLoop | None = None) -> TransmittedClip:
    """Send the observed frames of ``kp6`` (T, K, 6) in ``codec`` (or :data:`UNCODED`), decode
    them as the edge does and fill the other frames with a fresh predictor, open loop.

    With a ``loss`` model the packets it drops (in sending order) never reach the decoder. The
    edge conceals a lost frame, and one whose ``delta`` payload waits for a lost reference,
    with the predictor exactly like a skipped frame. The encoder does not know of the loss and
    keeps coding against the last set it sent, until the edge's IntraRequest reaches it: the
    edge asks when a payload waits for its reference (as the receiver does, at most once every
    ``intra_request_interval`` packets), and the ``intra_request_delay``-th packet after the
    one that waited is intra (the default 1, the next packet, is a round trip shorter than the
    gap between packets: optimistic). Requests travel on the reliable channel and are never
    lost. Frames before the first decoded set (the first packets lost) show the source image:
    they are played with ``source_kp6`` (default ``kp6[0]``: the source image is the first
    frame, and the edge detects its keypoints itself).

    With ``feedback`` the sender's controller chooses every group's schedule as the group
    starts, and the edge measures its predictor's error at the sets that arrive (as the
    receiver does, :class:`PredictionErrorWindow`) for the feedback."""
    if intra_request_delay < 1 or intra_request_interval < 1:
        raise ValueError("intra_request_delay and intra_request_interval must be >= 1 packet")
    frames, num_kp = kp6.shape[:2]
    coded = codec != UNCODED
    encoder = decoder = None
    if coded:
        encoder = (KeypointEncoder(codec) if intra_interval is None
                   else KeypointEncoder(codec, intra_interval))
        decoder = KeypointDecoder(codec, num_kp)
    predictor = new_predictor()
    out = np.empty((frames, num_kp, 6), np.float32)
    observed = np.zeros(frames, bool)
    payload_bytes = np.zeros(frames, np.int64)
    message_bytes = np.zeros(frames, np.int64)
    lost = np.zeros(frames, bool)
    concealed = np.zeros(frames, bool)
    predict = np.zeros(frames, np.int64)
    fallback = kp6[0] if source_kp6 is None else source_kp6
    intra_due: set[int] = set()  # packet numbers an IntraRequest makes intra
    requests, last_request = 0, None
    started = False  # the predictor has a set
    packet = -1
    errors = PredictionErrorWindow()
    received = lost_count = 0
    # feedback on its way: (frame it reaches the sender, received, lost, prediction error)
    in_flight: list[tuple[int, int, int, float | None]] = []
    timeline = ScheduleTimeline(schedule)
    for i in range(frames):
        if feedback is not None:
            while in_flight and in_flight[0][0] <= i:  # feedback that reached the sender
                feedback.controller.on_feedback(*in_flight.pop(0)[1:])
            if i % feedback.interval == feedback.interval - 1:
                in_flight.append((i + feedback.delay, received, lost_count, errors.take()))
            if timeline.at(i).position(i) == 0:
                changed = feedback.controller.on_group_start(i, kp6[i, :, :2])
                if changed is not None:
                    timeline.add(replace(changed, start=i))
        schedule = timeline.at(i)
        predict[i] = schedule.predict
        observed[i] = schedule.is_observed(i)
        if not observed[i]:
            out[i] = predictor.predict() if started else fallback
            errors.gap()
            continue
        packet += 1
        lost[i] = loss is not None and bool(loss.lost(1)[0])
        played: np.ndarray | None = None
        if encoder is None or decoder is None:
            played = None if lost[i] else kp6[i]
        else:
            index = FRAME_INDEX_BASE + i
            if packet in intra_due:
                encoder.request_intra()
            payload = encoder.encode(index, *from_kp6(kp6[i]))
            message = Keypoints(index, 0, schedule.skip_after(i), codec, payload)
            payload_bytes[i] = len(payload)
            message_bytes[i] = len(encode_message(message))
            if not lost[i]:
                decoded = decoder.decode(index, payload)
                played = next((to_kp6(d.value, d.jacobian) for d in decoded
                               if d.frame_index == index), None)
                if decoder.waiting and (last_request is None
                                        or packet - last_request >= intra_request_interval):
                    intra_due.add(packet + intra_request_delay)
                    requests, last_request = requests + 1, packet
        if played is None:
            concealed[i] = True
            lost_count += 1
            out[i] = predictor.predict() if started else fallback
            errors.gap()
            continue
        received += 1
        if started and feedback is not None:
            errors.add(predictor.forecast(), played)
        out[i] = played
        predictor.observe(out[i])
        started = True
    return TransmittedClip(out, observed, payload_bytes, message_bytes,
                           encoder.intra_payloads if encoder is not None else 0,
                           lost, concealed, requests, predict)

