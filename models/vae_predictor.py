"""Per-frame VAE baseline (the 2024 paper's "VAE"): a latent per frame, no recurrence.

The 2024 paper compares the VRNN against an RNN (recurrence, no latent) and a VAE (latent, no
recurrence). This is that VAE as a predictor, a conditional VAE on a short window of previous
sets ``c_t = [x_{t-1}, ..., x_{t-C}]`` (C = ``context``, default 2 so it can see a velocity):

- prior    p(z_t) = N(0, I), fixed: the latent manifold has no temporal dynamics of its own
- encoder  q(z_t | x_t, c_t)
- decoder  p(x_t | z_t, c_t) = N(x_{t-1} + decoder([z_t, c_t]), sigma^2), sigma learned per
  dimension (or fixed at 1); the last layer starts at zero (an untrained model holds)

A predicted frame decodes z = 0 (deterministic mode) or z ~ N(0, I) (sampled mode) and shifts the
prediction into the window, so rollouts are open loop. Everything the model knows about the past
is the window: what separates the VRNN from it is the recurrent state and the learned,
state-dependent prior. Before the first set the window is empty; the first observed set fills
all C slots (a stream starts at rest). Training matches :class:`~.vrnn.KeypointVRNN`: ELBO
terms (NLL with z ~ q, KL to N(0, I)) on observed frames, the NLL of the open-loop prediction
(z ~ N(0, I)) on predicted frames.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from .sequence_model import (
    DecoderLogVar,
    KeypointSequenceModel,
    gaussian_nll,
    mlp,
    sample_gaussian,
    select_rows,
    standard_normal_kl,
    zero_init,
)


class KeypointVAE(KeypointSequenceModel):
    """Conditional per-frame VAE; state = [x_{t-1}, ..., x_{t-C}, started]."""

    kind: ClassVar[str] = "vae"
    stochastic: ClassVar[bool] = True

    def __init__(self, input_dim: int, hidden: int = 128, latent: int = 16, context: int = 2,
                 learned_std: bool = True) -> None:
        super().__init__(input_dim)
        if context < 1:
            raise ValueError(f"context must be >= 1, got {context}")
        self.hparams = {"input_dim": input_dim, "hidden": hidden, "latent": latent,
                        "context": context, "learned_std": learned_std}
        self.latent, self.context = latent, context
        window = context * input_dim
        self.encoder = nn.Sequential(mlp([input_dim + window, hidden, hidden]),
                                     nn.Linear(hidden, 2 * latent))
        self.decoder = nn.Sequential(mlp([latent + window, hidden, hidden]),
                                     zero_init(nn.Linear(hidden, input_dim)))
        self.decoder_logvar = DecoderLogVar(input_dim, learned_std)

    def state_size(self) -> int:
        return self.context * self.input_dim + 1

    def _split(self, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        window, started = state.split([self.context * self.input_dim, 1], dim=-1)
        return window, started

    def _decode(self, z: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
        return window[:, :self.input_dim] + self.decoder(torch.cat([z, window], dim=-1))

    def _next_state(self, x: torch.Tensor, window: torch.Tensor, started: torch.Tensor
                    ) -> torch.Tensor:
        shifted = torch.cat([x, window[:, :-self.input_dim]], dim=-1)
        window = torch.where(started > 0, shifted, x.repeat(1, self.context))
        return torch.cat([window, torch.ones_like(started)], dim=-1)

    def step(self, x: torch.Tensor | None, state: torch.Tensor, sample: bool = False,
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        window, started = self._split(state)
        if x is None:
            zeros = window.new_zeros(window.shape[0], self.latent)
            x = self._decode(sample_gaussian(zeros, zeros, sample, generator), window)
        return x, self._next_state(x, window, started)

    def step_loss(self, x: torch.Tensor, observed: torch.Tensor, state: torch.Tensor
                  ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        window, started_col = self._split(state)
        started = started_col.squeeze(-1)
        logvar = self.decoder_logvar()
        zeros = x.new_zeros(x.shape[0])
        mu_q, logvar_q = self.encoder(torch.cat([x, window], dim=-1)).chunk(2, dim=-1)
        logvar_q = logvar_q.clamp(-12.0, 6.0)
        reconstructed = self._decode(sample_gaussian(mu_q, logvar_q, True), window)
        nll_o = gaussian_nll(x, reconstructed, logvar) * started
        kl_o = standard_normal_kl(mu_q, logvar_q) * started
        prior = x.new_zeros(x.shape[0], self.latent)
        predicted = self._decode(sample_gaussian(prior, prior, True), window)
        nll_p = gaussian_nll(x, predicted, logvar) * started
        sq_p = ((predicted - x) ** 2).sum(-1) * started
        terms = {"nll": torch.where(observed, nll_o, nll_p),
                 "kl": torch.where(observed, kl_o, zeros),
                 "sq_err": torch.where(observed, zeros, sq_p)}
        return terms, self._next_state(select_rows(observed, x, predicted), window, started_col)
