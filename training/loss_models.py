"""Packet loss models for :func:`kpvid.training.transmission.transmit`: which of a stream's
packets, in sending order, the channel drops. :class:`Bernoulli` loses each packet on its own;
:class:`GilbertElliott` loses them in bursts (a two-state Markov chain). Both draw from a seeded
numpy Generator, so a model built with the same arguments loses the same packets."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar

import numpy as np

Seed = int | Sequence[int]
DEFAULT_BURST_LENGTH = 3.0  # packets, Gilbert-Elliott's mean burst


def _check_rate(rate: float, upper: float = 1.0) -> float:
    rate = float(rate)
    if not 0.0 <= rate <= upper:
        raise ValueError(f"loss rate must be in [0, {upper:g}], got {rate}")
    return rate


class LossModel(ABC):
    """A lossy channel: :meth:`lost` says which of the next packets it drops. Successive calls
    continue one sequence (a burst may span two calls)."""

    name: ClassVar[str]
    rate: float  # the mean share of packets lost

    @abstractmethod
    def lost(self, packets: int) -> np.ndarray:
        """``(packets,)`` bool: True for each of the next ``packets`` packets that is lost."""


class Bernoulli(LossModel):
    """Each packet is lost with probability ``rate``, independently of the others."""

    name = "bernoulli"

    def __init__(self, rate: float, seed: Seed = 0) -> None:
        self.rate = _check_rate(rate)
        self._rng = np.random.default_rng(seed)

    def lost(self, packets: int) -> np.ndarray:
        return self._rng.random(packets) < self.rate

    def __repr__(self) -> str:
        return f"Bernoulli(rate={self.rate:g})"


class GilbertElliott(LossModel):
    """Bursty loss: a two-state Markov chain, one step per packet. The *good* state loses no
    packet, the *bad* state every one, so a burst of losses is a stay in the bad state.

    Parametrised by the mean loss rate ``rate`` (the bad state's stationary probability) and the
    mean burst length in packets ``burst_length`` (>= 1): the chain leaves the bad state with
    probability ``1 / burst_length`` and enters it with ``rate / (1 - rate) / burst_length``,
    which needs ``rate <= burst_length / (1 + burst_length)``. The first packet's state is drawn
    from the stationary distribution."""

    name = "gilbert-elliott"

    def __init__(self, rate: float, burst_length: float = DEFAULT_BURST_LENGTH,
                 seed: Seed = 0) -> None:
        if burst_length < 1:
            raise ValueError(f"burst_length must be >= 1 packet, got {burst_length}")
        self.burst_length = float(burst_length)
        self.rate = _check_rate(rate, burst_length / (1 + burst_length))
        self.p_bad_to_good = 1 / self.burst_length
        self.p_good_to_bad = self.rate / (1 - self.rate) / self.burst_length
        self._rng = np.random.default_rng(seed)
        self._bad: bool | None = None  # state of the last packet drawn

    def lost(self, packets: int) -> np.ndarray:
        draws = self._rng.random(packets)
        out = np.empty(packets, bool)
        bad = self._bad
        for i, u in enumerate(draws):
            if bad is None:
                bad = bool(u < self.rate)
            else:
                bad = bool(u >= self.p_bad_to_good) if bad else bool(u < self.p_good_to_bad)
            out[i] = bad
        self._bad = bad
        return out

    def __repr__(self) -> str:
        return f"GilbertElliott(rate={self.rate:g}, burst_length={self.burst_length:g})"


LOSS_MODELS: dict[str, type[LossModel]] = {
    Bernoulli.name: Bernoulli,
    GilbertElliott.name: GilbertElliott,
}


def make_loss_model(name: str, rate: float, seed: Seed = 0,
                    burst_length: float = DEFAULT_BURST_LENGTH) -> LossModel:
    """A loss model by name (:data:`LOSS_MODELS`); ``burst_length`` is Gilbert-Elliott's."""
    if name == Bernoulli.name:
        return Bernoulli(rate, seed)
    if name == GilbertElliott.name:
        return GilbertElliott(rate, burst_length, seed)
    raise ValueError(f"unknown loss model {name!r}; choose one of: {', '.join(LOSS_MODELS)}")
