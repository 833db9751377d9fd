"""What the edge plays for a clip's keypoints, without a network: the sender's schedule and
keypoint codec, then the edge's predictor in the gaps. Used by ``kpvid-eval reconstruct`` and
``kpvid-bench bandwidth`` to count bytes and to rebuild the frames a stream would show."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from kpvid.models.predictors import Predictor, from_kp6, to_kp6
from kpvid.protocol import KeypointDecoder, KeypointEncoder, Keypoints, encode_message
from kpvid.sender.schedule import Schedule

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

    @property
    def packets(self) -> int:
        return int(self.observed.sum())


def transmit(kp6: np.ndarray, schedule: Schedule, codec: str,
             new_predictor: Callable[[], Predictor],
             intra_interval: int | None = None) -> TransmittedClip:
    """Send the observed frames of ``kp6`` (T, K, 6) in ``codec`` (or :data:`UNCODED`), decode
    them as the edge does and fill the other frames with a fresh predictor, open loop."""
    frames, num_kp = kp6.shape[:2]
    coded = codec != UNCODED
    encoder = decoder = None
    if coded:
        encoder = (KeypointEncoder(codec) if intra_interval is None
                   else KeypointEncoder(codec, intra_interval))
        decoder = KeypointDecoder(codec, num_kp)
    predictor = new_predictor()
    out = np.empty((frames, num_kp, 6), np.float32)
    observed = np.array([schedule.is_observed(i) for i in range(frames)])
    payload_bytes = np.zeros(frames, np.int64)
    message_bytes = np.zeros(frames, np.int64)
    for i in range(frames):
        if not observed[i]:
            out[i] = predictor.predict()
            continue
        if encoder is None or decoder is None:
            out[i] = kp6[i]
        else:
            index = FRAME_INDEX_BASE + i
            payload = encoder.encode(index, *from_kp6(kp6[i]))
            message = Keypoints(index, 0, schedule.position(i), codec, payload)
            payload_bytes[i] = len(payload)
            message_bytes[i] = len(encode_message(message))
            (decoded,) = decoder.decode(index, payload)
            out[i] = to_kp6(decoded.value, decoded.jacobian)
        predictor.observe(out[i])
    return TransmittedClip(out, observed, payload_bytes, message_bytes,
                           encoder.intra_payloads if encoder is not None else 0)
