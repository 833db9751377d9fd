"""Variational recurrent neural network (Chung et al. 2015) over keypoint sets: the papers' model.

Per frame t, with GRU state ``h = h_{t-1}`` and feature extractors ``phi_x``, ``phi_z``:

- prior      p(z_t | h)         = N(prior(h))
- encoder    q(z_t | x_t, h)    = N(encoder([phi_x(x_t), h]))
- decoder    p(x_t | z_t, h)    = N(x_{t-1} + decoder([phi_z(z_t), h]), sigma^2), sigma learned
  per dimension (or fixed at 1); the decoder predicts the change from the previous set (its
  last layer starts at zero, so an untrained model holds the last set)
- recurrence h_t = GRU([phi_x(x_t), phi_z(z_t)], h)

An observed frame takes z_t from the encoder; a predicted frame takes z_t from the prior, decodes
the mean and feeds it back as x_t (deterministic mode: latent means; sampled mode: latent
samples, the decoder mean either way). Training (:meth:`step_loss`): observed frames give the
ELBO terms -log p(x_t | z_t ~ q) and KL(q || prior); predicted frames give -log p(x_t | z_t ~
prior) of the open-loop prediction, with no encoder and no ground truth fed back.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from .sequence_model import (
    DecoderLogVar,
    KeypointSequenceModel,
    gaussian_kl,
    gaussian_nll,
    mlp,
    sample_gaussian,
    select_rows,
    zero_init,
)

# The latent Gaussians start this narrow (standard deviation 0.14), not at the unit variance of
# a default layer. Latent samples feed the decoder and the recurrence: at unit variance their noise
# swamped both from the first step, the KL term pulled the posterior onto the prior before the
# (zero-initialised) decoder could use it, and every trained VRNN predicted no better than holding
# the last set (3 of 3 seeds on kpvid-heads-256's keypoints, 4 of 5 on kpvid-heads-64's). Started
# here it learns to predict as well as the RNN (models/weights/predictors/MANIFEST.md).
LATENT_LOGVAR_INIT = -4.0


def latent_head(hidden: int, latent: int) -> nn.Linear:
    """Last layer of a latent Gaussian's network: ``latent`` means, then ``latent``
    log-variances whose bias starts at :data:`LATENT_LOGVAR_INIT`."""
    layer = nn.Linear(hidden, 2 * latent)
    with torch.no_grad():
        layer.bias[latent:].fill_(LATENT_LOGVAR_INIT)
    return layer


class KeypointVRNN(KeypointSequenceModel):
    """VRNN on flattened normalised keypoint sets; state = [h, x_{t-1}, started]."""

    kind: ClassVar[str] = "vrnn"
    stochastic: ClassVar[bool] = True

    def __init__(self, input_dim: int, hidden: int = 128, latent: int = 16,
                 learned_std: bool = True) -> None:
        super().__init__(input_dim)
        self.hparams = {"input_dim": input_dim, "hidden": hidden, "latent": latent,
                        "learned_std": learned_std}
        self.hidden, self.latent = hidden, latent
        self.phi_x = mlp([input_dim, hidden, hidden])
        self.phi_z = mlp([latent, hidden])
        self.prior = nn.Sequential(mlp([hidden, hidden]), latent_head(hidden, latent))
        self.encoder = nn.Sequential(mlp([2 * hidden, hidden]), latent_head(hidden, latent))
        self.decoder = nn.Sequential(mlp([2 * hidden, hidden]),
                                     zero_init(nn.Linear(hidden, input_dim)))
        self.decoder_logvar = DecoderLogVar(input_dim, learned_std)
        self.rnn = nn.GRUCell(2 * hidden, hidden)

    def state_size(self) -> int:
        return self.hidden + self.input_dim + 1

    def _split(self, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h, prev, started = state.split([self.hidden, self.input_dim, 1], dim=-1)
        return h, prev, started

    def _gaussian(self, net: nn.Module, inputs: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = net(inputs).chunk(2, dim=-1)
        return mu, logvar.clamp(-12.0, 6.0)

    def _decode(self, fz: torch.Tensor, h: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
        return prev + self.decoder(torch.cat([fz, h], dim=-1))

    def _next_state(self, fx: torch.Tensor, fz: torch.Tensor, h: torch.Tensor, x: torch.Tensor
                    ) -> torch.Tensor:
        h = self.rnn(torch.cat([fx, fz], dim=-1), h)
        return torch.cat([h, x, torch.ones_like(x[:, :1])], dim=-1)

    def step(self, x: torch.Tensor | None, state: torch.Tensor, sample: bool = False,
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        h, prev, _ = self._split(state)
        if x is None:
            z = sample_gaussian(*self._gaussian(self.prior, h), sample, generator)
            fz = self.phi_z(z)
            x = self._decode(fz, h, prev)
            fx = self.phi_x(x)
        else:
            fx = self.phi_x(x)
            z = sample_gaussian(*self._gaussian(self.encoder, torch.cat([fx, h], dim=-1)),
                                sample, generator)
            fz = self.phi_z(z)
        return x, self._next_state(fx, fz, h, x)

    def step_loss(self, x: torch.Tensor, observed: torch.Tensor, state: torch.Tensor
                  ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        h, prev, started = self._split(state)
        started = started.squeeze(-1)
        logvar = self.decoder_logvar()
        mu_p, logvar_p = self._gaussian(self.prior, h)
        zeros = x.new_zeros(x.shape[0])
        any_observed, all_observed = bool(observed.any()), bool(observed.all())
        if any_observed:  # teacher-forced ELBO terms
            fx_o = self.phi_x(x)
            mu_q, logvar_q = self._gaussian(self.encoder, torch.cat([fx_o, h], dim=-1))
            fz_o = self.phi_z(sample_gaussian(mu_q, logvar_q, True))
            nll_o = gaussian_nll(x, self._decode(fz_o, h, prev), logvar) * started
            kl_o = gaussian_kl(mu_q, logvar_q, mu_p, logvar_p)
        if not all_observed:  # open loop: latent from the prior, own prediction fed back
            fz_p = self.phi_z(sample_gaussian(mu_p, logvar_p, True))
            predicted = self._decode(fz_p, h, prev)
            fx_p = self.phi_x(predicted)
            nll_p = gaussian_nll(x, predicted, logvar) * started
            sq_p = ((predicted - x) ** 2).sum(-1) * started
        if all_observed:
            terms = {"nll": nll_o, "kl": kl_o, "sq_err": zeros}
            return terms, self._next_state(fx_o, fz_o, h, x)
        if not any_observed:
            terms = {"nll": nll_p, "kl": zeros, "sq_err": sq_p}
            return terms, self._next_state(fx_p, fz_p, h, predicted)
        terms = {"nll": torch.where(observed, nll_o, nll_p),
                 "kl": torch.where(observed, kl_o, zeros),
                 "sq_err": torch.where(observed, zeros, sq_p)}
        state = self._next_state(select_rows(observed, fx_o, fx_p),
                                 select_rows(observed, fz_o, fz_p), h,
                                 select_rows(observed, x, predicted))
        return terms, state
