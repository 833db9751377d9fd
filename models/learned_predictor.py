"""Streaming adapter and checkpoints of the learned keypoint predictors (vrnn, rnn, vae).

:class:`LearnedPredictor` wraps a :class:`~.sequence_model.KeypointSequenceModel` behind the
receiver's :class:`~.predictors.Predictor` interface: ``kp6`` sets in and out in the keypoint
detector's own units, normalised inside with the statistics the checkpoint carries. Its state is
one tensor of shape ``(samples, state_size)``, one row per Monte-Carlo particle, so states of many
streams stack along the batch for :meth:`KeypointSequenceModel.step`.

A predictor checkpoint (:func:`save_predictor`) is a ``torch.save`` dict: ``format``, ``kind``,
``hparams``, ``state_dict``, ``normalisation`` (``mean``/``std`` lists of 6), ``num_kp``,
``model_id`` (the FOMM checkpoint whose keypoints it learnt) and ``meta`` (training record).

A recurrent network's state carries motion, and after a gap it can carry the wrong one: a head
that stopped while the network was predicting keeps drifting in its state, and the next gaps
drift again although every set that arrives says it is still (in one synthetic call traced by
hand, a still phase after a lively one: 5-12 px errors where holding the last set erred 0.5 px).
So a
set that ends a gap is checked first: when the forecast for it is more than
:data:`REWIND_FACTOR` times further off than the last received set (and over 1 px), the
predictor rewinds to its state after that set and replays the gap as the straight line between
the two sets, then observes. Fixed schedules seldom trigger it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kpvid.protocol.keypoint_set import check_kp6, position_error

from .checkpoint import CheckpointError, load_file
from .predictors import Predictor, train_predictor_hint
from .rnn_predictor import KeypointRNN
from .sequence_model import KeypointSequenceModel
from .vae_predictor import KeypointVAE
from .vrnn import KeypointVRNN

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "kpvid-predictor/1"
NETWORKS: dict[str, type[KeypointSequenceModel]] = {
    cls.kind: cls for cls in (KeypointVRNN, KeypointRNN, KeypointVAE)}
MIN_STD = 1e-4
# a set that ends a gap with a forecast this many times further off than the last received set,
# and at least REWIND_MIN_ERROR off, rewinds the predictor (see the module docstring)
REWIND_FACTOR = 2.0
REWIND_MIN_ERROR = 1 / 128  # keypoint units: 1 px of a 256 x 256 frame


def build_network(kind: str, **hparams: object) -> KeypointSequenceModel:
    """A fresh network by kind (``vrnn``, ``rnn``, ``vae``); ValueError naming the choices."""
    try:
        cls = NETWORKS[kind]
    except KeyError:
        raise ValueError(f"unknown predictor network {kind!r}; choose one of: "
                         f"{', '.join(sorted(NETWORKS))}") from None
    return cls(**hparams)


@dataclass(frozen=True)
class Normalisation:
    """Per-column statistics of kp6 sets (over all keypoints): ``x_norm = (kp6 - mean) / std``."""

    mean: np.ndarray
    std: np.ndarray

    def __post_init__(self) -> None:
        for name in ("mean", "std"):
            value = np.asarray(getattr(self, name), dtype=np.float32)
            if value.shape != (6,) or not np.all(np.isfinite(value)):
                raise ValueError(f"normalisation {name} must be 6 finite numbers, got {value!r}")
            object.__setattr__(self, name, value)
        if np.any(self.std <= 0):
            raise ValueError(f"normalisation std must be positive, got {self.std}")

    @classmethod
    def fit(cls, kp: np.ndarray) -> Normalisation:
        """Statistics of kp6 sets ``(..., 6)``; a constant column gets a tiny std, not zero."""
        flat = np.asarray(kp, dtype=np.float64).reshape(-1, 6)
        return cls(flat.mean(axis=0), np.maximum(flat.std(axis=0), MIN_STD))

    def apply(self, kp: np.ndarray) -> np.ndarray:
        """kp6 sets ``(..., K, 6)`` -> normalised float32, flattened to ``(..., K * 6)``."""
        kp = np.asarray(kp, dtype=np.float32)
        return ((kp - self.mean) / self.std).reshape(*kp.shape[:-2], -1)

    def invert(self, x: np.ndarray) -> np.ndarray:
        """Flattened normalised sets ``(..., K * 6)`` -> kp6 float32 ``(..., K, 6)``."""
        x = np.asarray(x, dtype=np.float32).reshape(*np.shape(x)[:-1], -1, 6)
        return x * self.std + self.mean

    def to_dict(self) -> dict[str, list[float]]:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}


class LearnedPredictor(Predictor):
    """One stream's learned predictor (see the module docstring).

    ``samples == 1``: deterministic mode (latent means). ``samples > 1`` (stochastic networks
    only): that many particles, each feeding back its own sampled rollout; :meth:`predict`
    returns their mean. ``seed`` makes sampled mode repeatable."""

    def __init__(self, network: KeypointSequenceModel, norm: Normalisation, *, samples: int = 1,
                 seed: int | None = None, rewind: bool = True) -> None:
        if samples < 1:
            raise ValueError(f"samples must be >= 1, got {samples}")
        self.name = network.kind
        self.network = network.eval()
        self.norm = norm
        self.num_kp = network.num_kp
        self.samples = samples if network.stochastic else 1
        self.seed = seed
        self.rewind = rewind  # replay gaps the forecast got wrong (the module docstring)
        self.reset()

    def reset(self) -> None:
        self.state: torch.Tensor | None = None
        self.rewinds = 0  # gaps replayed (see the module docstring)
        # the state right after the last observed set, and that set
        self._anchor: tuple[torch.Tensor, np.ndarray] | None = None
        self._gap = 0  # sets predicted since
        self._forecast: np.ndarray | None = None  # forecast() of the current state
        self._generator = torch.Generator()
        if self.seed is None:
            self._generator.seed()
        else:
            self._generator.manual_seed(self.seed)

    def snapshot(self) -> object:
        """The attributes, and the random stream's position (sampled mode draws from it)."""
        return dict(vars(self)), self._generator.get_state()

    def restore(self, snapshot: object) -> None:
        assert isinstance(snapshot, tuple)
        attributes, generator_state = snapshot
        vars(self).update(attributes)
        self._generator.set_state(generator_state)

    def _commit(self, state: torch.Tensor, observed: np.ndarray | None) -> None:
        """The state after a step that observed ``observed`` (None: predicted)."""
        self.state = state
        self._forecast = None
        if observed is None:
            self._gap += 1
        else:
            self._anchor, self._gap = (state, observed.copy()), 0

    def _step(self, x: torch.Tensor | None, state: torch.Tensor,
              observed: np.ndarray | None = None) -> torch.Tensor:
        with torch.inference_mode():
            out, state = self.network.step(x, state, sample=self.samples > 1,
                                           generator=self._generator)
        self._commit(state, observed)
        return out

    def _observe_checked(self, kp6: np.ndarray) -> None:
        x = torch.from_numpy(self.norm.apply(kp6)).unsqueeze(0).expand(self.samples, -1)
        state = self.network.init_state(self.samples) if self.state is None else self.state
        self._step(x, state, kp6)

    def _rewind_if_lost(self, kp6: np.ndarray) -> None:
        """Before observing ``kp6`` after a gap: rewind and replay the gap when the forecast is
        off by more than :data:`REWIND_FACTOR` times the last set's distance."""
        if not self.rewind or not self._gap or self._anchor is None:
            return
        state, last = self._anchor
        error = position_error(self.forecast(), kp6)
        if error <= max(REWIND_FACTOR * position_error(last, kp6), REWIND_MIN_ERROR):
            return
        frames = self._gap + 1  # from the last set to kp6
        self.state = state
        for k in range(1, frames):
            self._observe_checked(last + (kp6 - last) * np.float32(k / frames))
        self.rewinds += 1

    def _checked(self, kp6: np.ndarray) -> np.ndarray:
        kp6 = check_kp6(kp6)
        if kp6.shape[0] != self.num_kp:
            raise ValueError(f"{self.name} predictor expects {self.num_kp} keypoints per set, "
                             f"got {kp6.shape[0]}")
        return kp6

    def observe(self, kp6: np.ndarray) -> None:
        kp6 = self._checked(kp6)
        self._rewind_if_lost(kp6)
        self._observe_checked(kp6)

    def predict(self) -> np.ndarray:
        if self.state is None:
            raise RuntimeError(f"{self.name}: predict() before any observe()")
        out = self._step(None, self.state)
        return self.norm.invert(out.mean(dim=0).numpy())

    def forecast(self) -> np.ndarray:
        """The deterministic step's prediction (the latent means, whatever ``samples``), the
        state and random stream untouched."""
        if self.state is None:
            raise RuntimeError(f"{self.name}: forecast() before any observe()")
        if self._forecast is None:
            with torch.inference_mode():
                out, _ = self.network.step(None, self.state)
            self._forecast = self.norm.invert(out.mean(dim=0).numpy())
        return self._forecast.copy()

    @classmethod
    def step_many(cls, predictors: Sequence[Predictor], kp6: Sequence[np.ndarray | None]
                  ) -> list[np.ndarray]:
        """Deterministic predictors that share a network and normalisation advance in at most
        two batched network calls (the observing streams, the predicting ones); sampled-mode
        predictors keep their own random streams and step one by one."""
        out: list[np.ndarray | None] = [None] * len(predictors)
        groups: dict[tuple[int, int], list[int]] = {}
        loose: list[int] = []
        for i, predictor in enumerate(predictors):
            assert isinstance(predictor, LearnedPredictor)
            if predictor.samples == 1:
                groups.setdefault((id(predictor.network), id(predictor.norm)), []).append(i)
            else:
                loose.append(i)
        for rows in groups.values():
            observing = [i for i in rows if kp6[i] is not None]
            predicting = [i for i in rows if kp6[i] is None]
            if observing:
                sets = [predictors[i]._checked(kp6[i]) for i in observing]  # type: ignore
                for i, kp in zip(observing, sets):
                    predictors[i]._rewind_if_lost(kp)  # type: ignore[attr-defined]
                _step_batch([predictors[i] for i in observing], np.stack(sets))
                for i, kp in zip(observing, sets):
                    out[i] = kp
            if predicting:
                predicted = _step_batch([predictors[i] for i in predicting], None)
                for i, kp in zip(predicting, predicted):
                    out[i] = kp
        if loose:
            results = super().step_many([predictors[i] for i in loose], [kp6[i] for i in loose])
            for i, result in zip(loose, results):
                out[i] = result
        return out  # type: ignore[return-value]  # every row filled above

    @classmethod
    def forecast_many(cls, predictors: Sequence[Predictor]) -> list[np.ndarray]:
        """Deterministic predictors that share a network and normalisation forecast in one
        batched network call; sampled-mode ones one by one."""
        out: list[np.ndarray | None] = [None] * len(predictors)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, predictor in enumerate(predictors):
            assert isinstance(predictor, LearnedPredictor)
            if predictor.samples == 1 and predictor.state is not None:
                groups.setdefault((id(predictor.network), id(predictor.norm)), []).append(i)
            else:
                out[i] = predictor.forecast()
        for rows in groups.values():
            sets = _step_batch([predictors[i] for i in rows], None,  # type: ignore[misc]
                               commit=False)
            for i, kp in zip(rows, sets):
                predictors[i]._forecast = kp  # type: ignore[attr-defined]
                out[i] = kp.copy()
        return out  # type: ignore[return-value]  # every row filled above


def _step_batch(predictors: list[LearnedPredictor], kp6: np.ndarray | None,
                commit: bool = True) -> np.ndarray:
    """One network step for deterministic predictors sharing a network: observe ``kp6``
    (B, K, 6), or predict when None. Returns the (B, K, 6) sets; ``commit=False`` leaves the
    predictors' states as they were (a forecast)."""
    first = predictors[0]
    if kp6 is None:
        if any(p.state is None for p in predictors):
            raise RuntimeError(f"{first.name}: predict() before any observe()")
        x = None
    else:
        x = torch.from_numpy(first.norm.apply(kp6))
    state = torch.cat([first.network.init_state(1) if p.state is None else p.state
                       for p in predictors])
    with torch.inference_mode():
        result, state = first.network.step(x, state)
    if commit:
        for i, (predictor, row) in enumerate(zip(predictors, state)):
            predictor._commit(row.unsqueeze(0), None if kp6 is None else kp6[i])
    return kp6 if kp6 is not None else first.norm.invert(result.numpy())


@dataclass(frozen=True)
class PredictorCheckpoint:
    """What a predictor checkpoint holds, with the network rebuilt (eval mode)."""

    network: KeypointSequenceModel
    norm: Normalisation
    model_id: str | None
    meta: dict

    @property
    def kind(self) -> str:
        return self.network.kind

    @property
    def num_kp(self) -> int:
        return self.network.num_kp


def save_predictor(path: str | Path, network: KeypointSequenceModel, norm: Normalisation,
                   meta: dict | None = None, *, model_id: str | None = None) -> Path:
    """Write a predictor checkpoint; ``model_id`` defaults to ``meta['model_id']``."""
    meta = dict(meta or {})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": CHECKPOINT_FORMAT, "kind": network.kind, "hparams": network.hparams,
                "state_dict": network.state_dict(), "normalisation": norm.to_dict(),
                "num_kp": network.num_kp, "model_id": model_id or meta.get("model_id"),
                "meta": meta}, path)
    return path


def read_predictor_checkpoint(path: str | Path, num_kp: int | None = None,
                              model_id: str | None = None) -> PredictorCheckpoint:
    """Load and check a predictor checkpoint (CheckpointError naming both values on a
    ``num_kp`` or ``model_id`` mismatch, or when the file is not a predictor checkpoint)."""
    path = Path(path)
    data = load_file(path, "predictor checkpoint")
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a kpvid predictor checkpoint "
                              f"(expected format {CHECKPOINT_FORMAT!r})")
    if num_kp is not None and data["num_kp"] != num_kp:
        raise CheckpointError(f"predictor {path} was trained on {data['num_kp']} keypoints per "
                              f"set, but the keypoint model has {num_kp}")
    stored_id = data.get("model_id")
    if model_id is not None and stored_id != model_id:
        if stored_id is None:
            log.warning("predictor %s does not say which keypoint model it was trained on; "
                        "using it with %s", path, model_id)
        else:
            raise CheckpointError(f"predictor {path} was trained on keypoints of model "
                                  f"{stored_id!r}, but the keypoint model is {model_id!r} "
                                  "(its normalisation and dynamics would not fit): "
                                  + train_predictor_hint(data.get("kind", "vrnn"), model_id))
    try:
        network = build_network(data["kind"], **data["hparams"])
        network.load_state_dict(data["state_dict"])
        norm = Normalisation(**data["normalisation"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"predictor checkpoint {path} is inconsistent: {exc}") from exc
    return PredictorCheckpoint(network.eval(), norm, stored_id, data.get("meta", {}))


def load_predictor(path: str | Path, num_kp: int | None = None, model_id: str | None = None,
                   *, samples: int = 1, seed: int | None = None) -> LearnedPredictor:
    """A :class:`LearnedPredictor` from a checkpoint (see :func:`read_predictor_checkpoint`)."""
    checkpoint = read_predictor_checkpoint(path, num_kp=num_kp, model_id=model_id)
    return LearnedPredictor(checkpoint.network, checkpoint.norm, samples=samples, seed=seed)
