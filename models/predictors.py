"""Causal, open-loop keypoint predictors that fill the keypoint sets a receiver did not get.

A predictor serves one stream. The receiver calls :meth:`Predictor.observe` with every keypoint
set it received and :meth:`Predictor.predict` for every set it has to invent (scheduled by the
sender's observe-M / predict-N pattern, or lost). Prediction is open loop: a predictor's own
output is its next input, exactly as if it had been observed, and it never sees the ground truth
of a predicted step. Keypoint sets are ``kp6`` arrays: float32 ``(K, 6)`` rows of
``[x, y, j00, j01, j10, j11]`` (:mod:`kpvid.protocol.keypoint_set`).

Interface for new predictors: subclass :class:`Predictor`, set a class attribute ``name``,
implement the three methods, and register the class in :data:`PREDICTORS`. The learned
predictors (vrnn, rnn, vae; :mod:`kpvid.models.learned_predictor`) need a checkpoint and are
built by :func:`predictor_factory` from one. An edge steps all its streams' predictors at once
with :func:`step_predictors`; a class whose instances can share one batched call overrides
:meth:`Predictor.step_many`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np

from kpvid.protocol.keypoint_set import check_kp6

from .checkpoint import SHIPPED_CHECKPOINT, WEIGHTS_DIR, CheckpointError


class Predictor(ABC):
    """One stream's keypoint predictor: causal (past sets only) and open loop."""

    name: ClassVar[str]

    @abstractmethod
    def reset(self) -> None:
        """Forget the stream's history (a new sender, or a new source image)."""

    @abstractmethod
    def observe(self, kp6: np.ndarray) -> None:
        """Record a received keypoint set ``(K, 6)``; K must stay the same until :meth:`reset`."""

    @abstractmethod
    def predict(self) -> np.ndarray:
        """The next set ``(K, 6)`` float32, which then counts as the latest set (fed back).

        Raises RuntimeError before any :meth:`observe` since the last :meth:`reset`."""

    @abstractmethod
    def forecast(self) -> np.ndarray:
        """What :meth:`predict` would return now, without advancing: the receiver compares it
        with a set that did arrive to measure how well the gaps are predicted. RuntimeError
        before any :meth:`observe`."""

    def snapshot(self) -> object:
        """The predictor's state, for :meth:`restore` (the edge replays a gap from a set that
        came late). The default copies the instance's attributes shallowly: right for a
        predictor that replaces its attributes rather than changing them in place (all of
        kpvid's); override otherwise."""
        return dict(vars(self))

    def restore(self, snapshot: object) -> None:
        """Go back to a :meth:`snapshot` of this predictor."""
        assert isinstance(snapshot, dict)
        vars(self).update(snapshot)

    @classmethod
    def forecast_many(cls, predictors: Sequence[Predictor]) -> list[np.ndarray]:
        """:meth:`forecast` of several streams' predictors of this class. Subclasses batch."""
        return [predictor.forecast() for predictor in predictors]

    @classmethod
    def step_many(cls, predictors: Sequence[Predictor], kp6: Sequence[np.ndarray | None]
                  ) -> list[np.ndarray]:
        """One frame for several streams' predictors of this class: observe ``kp6[i]`` where
        given, predict where None. Returns each stream's set for the frame. Subclasses batch."""
        out = []
        for predictor, kp in zip(predictors, kp6, strict=True):
            if kp is None:
                out.append(predictor.predict())
            else:
                predictor.observe(kp)
                out.append(check_kp6(kp))
        return out


class HoldLast(Predictor):
    """Repeats the latest set (observed or predicted): the zero-motion baseline."""

    name = "hold-last"

    def __init__(self) -> None:
        self._last: np.ndarray | None = None

    def reset(self) -> None:
        self._last = None

    def observe(self, kp6: np.ndarray) -> None:
        self._last = _checked_next(kp6, self._last)

    def predict(self) -> np.ndarray:
        return self.forecast()

    def forecast(self) -> np.ndarray:
        if self._last is None:
            raise RuntimeError(f"{self.name}: predict() before any observe()")
        return self._last.copy()


class ConstantVelocity(Predictor):
    """Linear extrapolation of all six numbers per keypoint from the last two *observed* sets.

    Every ``observe`` or ``predict`` call is one frame step. The velocity is the difference of
    the last two observations divided by the steps between them, so a schedule that observes
    every other frame gives the per-frame velocity, not twice it; predictions continue from the
    last observation in a straight line. With a single observation it holds that set."""

    name = "constant-velocity"

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._step = -1
        self._last: np.ndarray | None = None
        self._last_step = 0
        self._velocity: np.ndarray | None = None

    def observe(self, kp6: np.ndarray) -> None:
        kp6 = _checked_next(kp6, self._last)
        self._step += 1
        if self._last is not None:
            self._velocity = (kp6 - self._last) / np.float32(self._step - self._last_step)
        self._last, self._last_step = kp6, self._step

    def predict(self) -> np.ndarray:
        predicted = self.forecast()
        self._step += 1
        return predicted

    def forecast(self) -> np.ndarray:
        if self._last is None:
            raise RuntimeError(f"{self.name}: predict() before any observe()")
        if self._velocity is None:
            return self._last.copy()
        return self._last + self._velocity * np.float32(self._step + 1 - self._last_step)


def _checked_next(kp6: np.ndarray, last: np.ndarray | None) -> np.ndarray:
    """A private float32 copy of ``kp6``, checked against the shape of the previous set."""
    kp6 = check_kp6(kp6).copy()
    if last is not None and kp6.shape != last.shape:
        raise ValueError(f"keypoint set shape changed from {last.shape} to {kp6.shape}; "
                         "reset() the predictor first")
    return kp6


PREDICTORS: dict[str, type[Predictor]] = {
    HoldLast.name: HoldLast,
    ConstantVelocity.name: ConstantVelocity,
}


def step_predictors(predictors: Sequence[Predictor], kp6: Sequence[np.ndarray | None]
                    ) -> list[np.ndarray]:
    """One frame for many streams (:meth:`Predictor.step_many`), one call per predictor class,
    results in the order given."""
    if len(predictors) != len(kp6):
        raise ValueError(f"{len(predictors)} predictors but {len(kp6)} keypoint entries")
    return _per_class(predictors, lambda cls, rows: cls.step_many(
        [predictors[i] for i in rows], [kp6[i] for i in rows]))


def forecast_predictors(predictors: Sequence[Predictor]) -> list[np.ndarray]:
    """:meth:`Predictor.forecast` of many streams' predictors, one call per predictor class
    (:meth:`Predictor.forecast_many`), results in the order given."""
    return _per_class(predictors, lambda cls, rows: cls.forecast_many(
        [predictors[i] for i in rows]))


def _per_class(predictors: Sequence[Predictor],
               call: Callable[[type[Predictor], list[int]], list[np.ndarray]]
               ) -> list[np.ndarray]:
    """``call(cls, rows)`` once per predictor class with the indices of its predictors; the
    results put back in the predictors' order."""
    out: list[np.ndarray | None] = [None] * len(predictors)
    groups: dict[type[Predictor], list[int]] = {}
    for i, predictor in enumerate(predictors):
        groups.setdefault(type(predictor), []).append(i)
    for cls, rows in groups.items():
        for i, result in zip(rows, call(cls, rows), strict=True):
            out[i] = result
    return out  # type: ignore[return-value]  # every row filled above


def rollout(predictor: Predictor, kp6: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """Drive ``predictor`` over ``kp6`` ``(T, K, 6)`` as the receiver does: observe the sets
    marked in ``observed`` (T,), predict (open loop) the others. Returns the ``(T, K, 6)`` sets
    used."""
    predictor.reset()
    out = np.empty_like(kp6)
    for t, seen in enumerate(observed):
        if seen:
            predictor.observe(kp6[t])
            out[t] = kp6[t]
        else:
            out[t] = predictor.predict()
    return out


LEARNED_PREDICTORS = ("vrnn", "rnn", "vae")
PREDICTOR_NAMES = tuple(sorted([*PREDICTORS, *LEARNED_PREDICTORS]))  # what --predictor takes
DEFAULT_PREDICTOR = "vrnn"  # the receiver's; docs/prediction.md has how it compares
SHIPPED_PREDICTORS_DIR = WEIGHTS_DIR / "predictors"


def shipped_predictor(kind: str, model_id: str | None = None) -> Path:
    """Where the shipped weights of a learned predictor kind for a shipped FOMM model are
    (:data:`SHIPPED_PREDICTORS_DIR`, ``<kind>-<model>.pt``, e.g. ``vrnn-heads-256.pt`` for
    ``kpvid-heads-256``; default: the shipped default checkpoint's)."""
    return SHIPPED_PREDICTORS_DIR / f"{kind}-{_model(model_id).removeprefix('kpvid-')}.pt"


def _model(model_id: str | None) -> str:
    return model_id or SHIPPED_CHECKPOINT.name.removesuffix(".pth.tar")


def train_predictor_hint(kind: str, model_id: str) -> str:
    """What a user with no fitting learned predictor for a model can do."""
    return (f"train one on that model's keypoints (kpvid-extract --checkpoint {model_id}.pth.tar "
            f"--data DIR --out kp.npz, then kpvid-train predictor --kind {kind} --data kp.npz "
            "--out RUN) and pass --predictor-checkpoint RUN/predictor.pt, or use "
            "--predictor constant-velocity")


def predictor_factory(name: str, checkpoint: str | Path | None = None, *,
                      num_kp: int | None = None, model_id: str | None = None,
                      rewind: bool = True) -> Callable[[], Predictor]:
    """A maker of fresh predictors (one per stream) by registry name; ValueError listing the
    choices for unknown names.

    The learned ones (:data:`LEARNED_PREDICTORS`) load their weights once from ``checkpoint``
    (default: the ones shipped for ``model_id``, :func:`shipped_predictor`), which must hold
    that kind;
    ``num_kp`` / ``model_id`` are checked against it (see
    :func:`kpvid.models.learned_predictor.read_predictor_checkpoint`). Their predictors share
the network, so :func:`step_predictors` batches them; ``rewind=False`` turns off their replay
of gaps the forecast got wrong (:mod:`kpvid.models.learned_predictor`)."""
    if name in LEARNED_PREDICTORS:
        from .learned_predictor import LearnedPredictor, read_predictor_checkpoint

        if checkpoint is None:
            checkpoint = shipped_predictor(name, model_id)
            if not checkpoint.is_file():
                raise CheckpointError(f"no {name} predictor is shipped for model "
                                      f"{_model(model_id)!r}: "
                                      + train_predictor_hint(name, _model(model_id)))
        loaded = read_predictor_checkpoint(checkpoint, num_kp=num_kp, model_id=model_id)
        if loaded.kind != name:
            raise ValueError(f"{checkpoint} holds a {loaded.kind!r} predictor, not {name!r}")
        return lambda: LearnedPredictor(loaded.network, loaded.norm, rewind=rewind)
    try:
        return PREDICTORS[name]
    except KeyError:
        raise ValueError(f"unknown predictor {name!r}; choose one of: "
                         f"{', '.join(sorted([*PREDICTORS, *LEARNED_PREDICTORS]))}") from None


def make_predictor(name: str, checkpoint: str | Path | None = None, *, num_kp: int | None = None,
                   model_id: str | None = None) -> Predictor:
    """One fresh predictor by registry name (see :func:`predictor_factory`)."""
    return predictor_factory(name, checkpoint, num_kp=num_kp, model_id=model_id)()
