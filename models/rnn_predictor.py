"""Deterministic GRU baseline (the papers' "RNN"): a GRU over the sets, a linear head for the next.

State ``h_{t-1}`` has read x_1..x_{t-1}; the prediction is ``x_{t-1} + head(h_{t-1})`` (the head
starts at zero, so an untrained model holds the last set), and ``h_t = GRU(x_t, h_{t-1})`` with
x_t observed or, open loop, the prediction itself. Training minimises the squared error of every
prediction made before seeing its frame: teacher forced on observed frames, from the model's own
outputs on predicted ones. It has no latent variable, so sampled mode equals deterministic mode.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from .sequence_model import KeypointSequenceModel, select_rows, zero_init


class KeypointRNN(KeypointSequenceModel):
    """GRU next-set predictor on normalised keypoint sets; state = [h, x_{t-1}, started]."""

    kind: ClassVar[str] = "rnn"
    stochastic: ClassVar[bool] = False

    def __init__(self, input_dim: int, hidden: int = 128) -> None:
        super().__init__(input_dim)
        self.hparams = {"input_dim": input_dim, "hidden": hidden}
        self.hidden = hidden
        self.rnn = nn.GRUCell(input_dim, hidden)
        self.head = zero_init(nn.Linear(hidden, input_dim))

    def state_size(self) -> int:
        return self.hidden + self.input_dim + 1

    def _predict(self, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h, prev, started = state.split([self.hidden, self.input_dim, 1], dim=-1)
        return prev + self.head(h), h, started.squeeze(-1)

    def _next_state(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.rnn(x, h), x, torch.ones_like(x[:, :1])], dim=-1)

    def step(self, x: torch.Tensor | None, state: torch.Tensor, sample: bool = False,
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        predicted, h, _ = self._predict(state)
        if x is None:
            x = predicted
        return x, self._next_state(x, h)

    def step_loss(self, x: torch.Tensor, observed: torch.Tensor, state: torch.Tensor
                  ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        predicted, h, started = self._predict(state)
        sq_err = ((predicted - x) ** 2).sum(-1) * started
        terms = {"nll": sq_err, "kl": torch.zeros_like(sq_err),
                 "sq_err": torch.where(observed, torch.zeros_like(sq_err), sq_err)}
        return terms, self._next_state(select_rows(observed, x, predicted), h)
