"""Shared base of the learned keypoint predictors: one causal step, open-loop training loss.

A :class:`KeypointSequenceModel` works on normalised, flattened keypoint sets ``x`` of size
``D = K * 6`` and keeps everything it knows about a stream's past in one state tensor
``(B, state_size)``, so states of several streams (or several Monte-Carlo particles of one
stream) stack along the batch. :meth:`KeypointSequenceModel.step` advances one frame: with an
observed ``x_t`` it conditions on it (teacher forcing); with ``None`` it predicts ``x_t`` from the
state alone and feeds that prediction back as if it had been observed (open loop).

:meth:`KeypointSequenceModel.sequence_loss` trains exactly that use: on the steps an
``observe_mask`` marks as predicted, the model's own outputs are its next inputs and the ground
truth appears only as the target. Schedules (:func:`schedule_mask`) follow the receiver's:
``m1`` observes the first 5 frames and predicts the rest, ``m2`` alternates observe 1 /
predict 1, and ``mixed`` draws one of m1, m2 or a random observe-M / predict-N pattern
(M, N in 1..5).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np
import torch
from torch import nn

SCHEDULES = ("m1", "m2", "mixed")
M1_OBSERVED = 5
MAX_GROUP = 5
LOG_2PI = math.log(2 * math.pi)


def gaussian_kl(mu_q: torch.Tensor, logvar_q: torch.Tensor, mu_p: torch.Tensor,
                logvar_p: torch.Tensor) -> torch.Tensor:
    """KL(N(mu_q, var_q) || N(mu_p, var_p)) of diagonal Gaussians, summed over the last dim."""
    return 0.5 * (logvar_p - logvar_q + (logvar_q.exp() + (mu_q - mu_p) ** 2) / logvar_p.exp()
                  - 1).sum(-1)


def standard_normal_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, var) || N(0, I)), summed over the last dim."""
    return 0.5 * (logvar.exp() + mu**2 - 1 - logvar).sum(-1)


def gaussian_nll(x: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood of ``x`` under N(mean, exp(logvar)), summed over the last dim."""
    return 0.5 * (LOG_2PI + logvar + (x - mean) ** 2 / logvar.exp()).sum(-1)


def sample_gaussian(mu: torch.Tensor, logvar: torch.Tensor, sample: bool,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """A reparameterised sample of N(mu, exp(logvar)), or the mean when ``sample`` is False."""
    if not sample:
        return mu
    noise = torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device=mu.device)
    return mu + noise * (0.5 * logvar).exp()


def mlp(sizes: list[int], final_activation: bool = True) -> nn.Sequential:
    """Linear layers of the given sizes with ReLU between (and after, if ``final_activation``)."""
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(fan_in, fan_out))
        if final_activation or i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def zero_init(layer: nn.Linear) -> nn.Linear:
    """Zero weights and bias: a residual head starts as 'no change' (hold-last)."""
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class DecoderLogVar(nn.Module):
    """Per-dimension log-variance of a Gaussian decoder: learned, or fixed at 0 (unit variance,
    so the NLL is half the squared error plus a constant)."""

    def __init__(self, dim: int, learned: bool) -> None:
        super().__init__()
        if learned:
            self.logvar = nn.Parameter(torch.zeros(dim))
        else:
            self.register_buffer("logvar", torch.zeros(dim))

    def forward(self) -> torch.Tensor:
        return self.logvar.clamp(-12.0, 4.0)


def select_rows(rows: torch.Tensor, when_true: torch.Tensor, when_false: torch.Tensor
                ) -> torch.Tensor:
    """Per-row choice between two (B, ...) tensors by a (B,) bool mask."""
    return torch.where(rows.view(-1, *([1] * (when_true.dim() - 1))), when_true, when_false)


def schedule_mask(schedule: str, length: int, rng: np.random.Generator | None = None
                  ) -> np.ndarray:
    """Boolean ``(length,)`` observe mask of one sequence (True = observed, False = predicted).

    ``m1``: observe the first 5 frames, predict the rest. ``m2``: observe even frames, predict
    odd ones. ``mixed`` (needs ``rng``): m1, m2 or observe-M / predict-N groups with M, N drawn
    from 1..5, each with probability 1/3."""
    if schedule == "mixed":
        if rng is None:
            raise ValueError("the mixed schedule needs a random generator")
        choice = int(rng.integers(3))
        if choice < 2:
            return schedule_mask(SCHEDULES[choice], length)
        observe, predict = (int(v) for v in rng.integers(1, MAX_GROUP + 1, size=2))
        return np.arange(length) % (observe + predict) < observe
    if schedule == "m1":
        return np.arange(length) < M1_OBSERVED
    if schedule == "m2":
        return np.arange(length) % 2 == 0
    raise ValueError(f"unknown schedule {schedule!r}; choose one of: {', '.join(SCHEDULES)}")


class KeypointSequenceModel(nn.Module, ABC):
    """A causal keypoint-sequence network with a tensor state; see the module docstring.

    Subclasses set ``kind`` and ``stochastic``, keep their constructor arguments in
    ``self.hparams`` (a checkpoint rebuilds the network with ``cls(**hparams)``), and implement
    :meth:`state_size`, :meth:`step` and :meth:`step_loss`."""

    kind: ClassVar[str]
    stochastic: ClassVar[bool]

    def __init__(self, input_dim: int) -> None:
        super().__init__()
        if input_dim < 1 or input_dim % 6:
            raise ValueError(f"input_dim must be K * 6 for K >= 1 keypoints, got {input_dim}")
        self.input_dim = input_dim
        self.hparams: dict[str, object] = {}

    @property
    def num_kp(self) -> int:
        return self.input_dim // 6

    @abstractmethod
    def state_size(self) -> int:
        """Width of the state tensor."""

    def init_state(self, batch: int) -> torch.Tensor:
        """The state of ``batch`` streams that have seen nothing yet."""
        return torch.zeros(batch, self.state_size(), device=next(self.parameters()).device)

    @abstractmethod
    def step(self, x: torch.Tensor | None, state: torch.Tensor, sample: bool = False,
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One frame for a batch: ``x`` (B, D) observed, or None to predict it open loop.

        Returns ``(x_t, state)``: the frame's set (the input when observed, the prediction
        otherwise) and the state after it. ``sample`` draws latents instead of taking means."""

    @abstractmethod
    def step_loss(self, x: torch.Tensor, observed: torch.Tensor, state: torch.Tensor
                  ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Training step for a batch: target ``x`` (B, D) and ``observed`` (B,) bool.

        Observed rows condition on ``x``; the other rows predict open loop and use ``x`` only
        as the target. Returns per-row terms (``nll``, ``kl``, ``sq_err``; (B,) each, sampled
        latents) and the next state. ``nll`` is the reconstruction / prediction term (squared
        error for deterministic models), ``sq_err`` the squared error of the open-loop
        prediction on predicted rows (zero on observed rows). The first frame of a stream has
        no prediction to score: its ``nll`` and ``sq_err`` are zero."""

    def sequence_loss(self, x: torch.Tensor, observe_mask: torch.Tensor, beta: float = 1.0,
                      valid: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Open-loop training loss of sequences ``x`` (B, T, D) under ``observe_mask`` (B, T).

        ``valid`` (B, T) masks padding. Returns ``loss`` = (sum of NLL + beta * KL) per valid
        frame, and per-frame means ``nll``, ``kl`` and ``mse`` (squared error per number of
        the predicted steps, normalised units)."""
        batch, length, dim = x.shape
        if observe_mask.shape != (batch, length):
            raise ValueError(f"observe_mask must be {(batch, length)}, got "
                             f"{tuple(observe_mask.shape)}")
        if valid is None:
            valid = torch.ones(batch, length, dtype=torch.bool, device=x.device)
        weights = valid.to(x.dtype)
        predicted = (~observe_mask).to(x.dtype) * weights
        state = self.init_state(batch)
        nll = kl = sq_err = x.new_zeros(())
        for t in range(length):
            terms, state = self.step_loss(x[:, t], observe_mask[:, t], state)
            nll = nll + (terms["nll"] * weights[:, t]).sum()
            kl = kl + (terms["kl"] * weights[:, t]).sum()
            sq_err = sq_err + (terms["sq_err"] * predicted[:, t]).sum()
        frames = weights.sum().clamp(min=1)
        return {"loss": (nll + beta * kl) / frames, "nll": nll / frames, "kl": kl / frames,
                "mse": sq_err / (predicted.sum().clamp(min=1) * dim)}

    @torch.no_grad()
    def rollout(self, x: torch.Tensor, observe_mask: torch.Tensor, sample: bool = False,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """Sets (B, T, D) the model produces for ``x`` under ``observe_mask`` (B, T): observed
        rows are copied, the others predicted open loop (never reading ``x`` there)."""
        state = self.init_state(x.shape[0])
        out = []
        for t in range(x.shape[1]):
            obs = observe_mask[:, t]
            if bool(obs.all()):
                frame, state = self.step(x[:, t], state, sample, generator)
            else:
                predicted, pred_state = self.step(None, state, sample, generator)
                if bool(obs.any()):
                    seen, seen_state = self.step(x[:, t], state, sample, generator)
                    frame = torch.where(obs[:, None], seen, predicted)
                    state = torch.where(obs[:, None], seen_state, pred_state)
                else:
                    frame, state = predicted, pred_state
            out.append(frame)
        return torch.stack(out, dim=1)
