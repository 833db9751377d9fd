"""Per-stream keypoint coding: :class:`KeypointEncoder` on the sender, :class:`KeypointDecoder`
on the receiver, for every codec. The stateless codecs (``f16``, ``q12``) code each set on its
own; ``delta`` codes a set against the previous one the sender sent, with an intra (self-
contained) payload every ``intra_interval`` packets and whenever the receiver asks for one.

On an unreliable, unordered channel the decoder keeps the recent sets as references and holds a
payload whose reference has not arrived yet; a lost reference makes the payloads after it
undecodable until the next intra one (protocol/README.md, "Loss")."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from . import delta_codec
from .errors import InvalidField
from .keypoint_codec import KEYPOINT_CODECS, checked_kp6
from .keypoint_set import from_kp6

DELTA = "delta"
CODEC_NAMES = (*KEYPOINT_CODECS, DELTA)
CODEC_IDS = {**{name: codec.wire_id for name, codec in KEYPOINT_CODECS.items()}, DELTA: 3}
CODECS_BY_ID = {wire_id: name for name, wire_id in CODEC_IDS.items()}
DEFAULT_INTRA_INTERVAL = 30  # delta: an intra payload at least every 30 packets (2 s at M2)
REFERENCE_HISTORY = 32  # decoded sets kept as references
MAX_PENDING = 16  # payloads waiting for their reference


def _check_codec(codec: str) -> str:
    if codec not in CODEC_IDS:
        raise ValueError(f"unknown keypoint codec {codec!r} (known: {', '.join(CODEC_NAMES)})")
    return codec


@dataclass(frozen=True)
class DecodedKeypoints:
    frame_index: int
    value: np.ndarray  # (K, 2) float32
    jacobian: np.ndarray  # (K, 2, 2) float32


class KeypointEncoder:
    """Payloads of one stream's keypoint sets, in sending order. Call :meth:`encode` only for
    a set that will be sent: a ``delta`` payload refers to the previous one."""

    def __init__(self, codec: str, intra_interval: int = DEFAULT_INTRA_INTERVAL) -> None:
        if intra_interval < 1:
            raise ValueError(f"intra_interval must be >= 1, got {intra_interval}")
        self.codec = _check_codec(codec)
        self.intra_interval = intra_interval
        self._reference: tuple[int, np.ndarray] | None = None
        self._since_intra = 0
        self.intra_payloads = 0

    def request_intra(self) -> None:
        """Make the next payload self-contained (the receiver lost a reference)."""
        self._reference = None

    def encode(self, frame_index: int, value: ArrayLike, jacobian: ArrayLike) -> bytes:
        if self.codec != DELTA:
            return KEYPOINT_CODECS[self.codec].encode(value, jacobian)
        q = delta_codec.quantise(checked_kp6(value, jacobian))
        reference = self._reference
        if (reference is None or self._since_intra + 1 >= self.intra_interval
                or not 1 <= frame_index - reference[0] <= delta_codec.MAX_REFERENCE_DISTANCE):
            payload = delta_codec.encode_payload(q, None, 0)
            self._since_intra = 0
            self.intra_payloads += 1
        else:
            payload = delta_codec.encode_payload(q, reference[1], frame_index - reference[0])
            self._since_intra += 1
        self._reference = (frame_index, q)
        return payload


class KeypointDecoder:
    """Keypoint sets from one stream's payloads, in any order. :meth:`decode` returns the sets
    it could decode now: none while a ``delta`` payload waits for its reference, several when
    a late reference unlocks waiting ones. ``undecodable`` counts payloads given up on."""

    def __init__(self, codec: str, num_kp: int, history: int = REFERENCE_HISTORY,
                 max_pending: int = MAX_PENDING) -> None:
        self.codec = _check_codec(codec)
        self.num_kp = num_kp
        self._history: dict[int, np.ndarray] = {}
        self._history_size = history
        self._pending: dict[int, delta_codec.DeltaPayload] = {}
        self._max_pending = max_pending
        self.undecodable = 0

    @property
    def waiting(self) -> int:
        """Payloads held for a reference that has not arrived."""
        return len(self._pending)

    @property
    def broken(self) -> bool:
        """The newest payload received waits for its reference: the chain is broken until an
        intra payload (an older one still waiting behind a newer decoded one is not)."""
        return bool(self._pending) and max(self._pending) > max(self._history, default=-1)

    def decode(self, frame_index: int, payload: bytes) -> list[DecodedKeypoints]:
        """InvalidField for a payload that is not a set of ``num_kp`` keypoints."""
        if self.codec != DELTA:
            value, jacobian = KEYPOINT_CODECS[self.codec].decode(payload)
            if len(value) != self.num_kp:
                raise InvalidField(f"{len(value)} keypoints, the stream has {self.num_kp}")
            return [DecodedKeypoints(frame_index, value, jacobian)]
        parsed = delta_codec.decode_payload(payload, self.num_kp)
        if frame_index in self._history or frame_index in self._pending:
            return []  # a duplicate
        if parsed.reference_distance and (frame_index - parsed.reference_distance
                                          not in self._history):
            self._hold(frame_index, parsed)
            return []
        if parsed.reference_distance == 0:  # the chain restarts: older held payloads are moot
            self._give_up([i for i in self._pending if i < frame_index])
        decoded: list[DecodedKeypoints] = []
        ready = [(frame_index, parsed)]
        while ready:
            index, parsed = ready.pop()
            reference = self._history.get(index - parsed.reference_distance)
            q = delta_codec.apply(parsed, reference)
            self._remember(index, q)
            kp6 = delta_codec.dequantise(q)
            decoded.append(DecodedKeypoints(index, *from_kp6(kp6)))
            ready += [(waiting, self._pending.pop(waiting)) for waiting in list(self._pending)
                      if waiting - self._pending[waiting].reference_distance == index]
        return decoded

    def _hold(self, frame_index: int, parsed: delta_codec.DeltaPayload) -> None:
        self._pending[frame_index] = parsed
        if len(self._pending) > self._max_pending:
            self._give_up([min(self._pending)])

    def _give_up(self, frame_indexes: list[int]) -> None:
        for index in frame_indexes:
            del self._pending[index]
        self.undecodable += len(frame_indexes)

    def _remember(self, frame_index: int, q: np.ndarray) -> None:
        self._history[frame_index] = q
        while len(self._history) > self._history_size:
            del self._history[min(self._history)]
        # a payload waiting for a reference older than every kept one will never decode
        oldest = min(self._history)
        self._give_up([i for i, p in self._pending.items() if i - p.reference_distance < oldest])
