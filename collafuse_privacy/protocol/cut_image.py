"""``cut-image``: the CollaFuse journal version's code, made exact for DDPM (DESIGN.md §1, protocol 2).

The client sends only the hand-over image
``h = sqrt(abar_h) x0 + sqrt(1 - abar_h) eps1`` at the hand-over level's
``abar_h`` (``Cut.abar_handover``). The server trains an
ordinary DDPM whose *data* are the ``h``'s on the tail schedule ``betas[t_c:]``: it
draws its own ``s`` and ``eps2``, forms ``x_t = sqrt(abar'[s]) h + sqrt(1 - abar'[s]) eps2``
at global ``t = t_c + s`` and predicts ``eps2``; given ``x0`` this ``x_t`` has exactly
the marginal ``q(x_t | x0)``, and the server never sees ``x0`` or ``eps1``.

``fixed_noise``: ``eps1`` is fixed per image (a function of the client's secret and the
image's id, both client-side), so every epoch re-sends the same ``h``: one release per
image instead of one per epoch (DESIGN.md §4).

One release is a Gaussian mechanism: ``h / sqrt(1 - a)`` has mean ``sqrt(a / (1 - a)) x0``
and unit noise, so with sensitivity ``D = 2 sqrt(d)`` it is ``mu``-GDP with
``mu = sqrt(a / (1 - a)) D``; ``R`` independent releases give ``sqrt(R) mu``.
"""

from __future__ import annotations

import math
from functools import cached_property

import torch

from ..defenses.accounting import release_mu
from ..diffusion import q_sample
from ..rng import generator, randint, randn
from .base import ModelRange, Protocol, register
from .messages import CutImageMessage


def fixed_handover_noise(ids: torch.Tensor, shape, secret: int) -> torch.Tensor:
    """``eps1`` ``[n, *shape]`` fixed per image: a function of the client's ``secret`` and the ids."""
    out = torch.empty((len(ids), *shape))
    for i, image_id in enumerate(ids.tolist()):
        out[i] = torch.randn(shape, generator=generator(secret, 0xF1ED, image_id))
    return out


@register("cut-image")
class CutImage(Protocol):
    @classmethod
    def check_config(cls, cfg) -> None:
        pass  # fixed_noise and target_epsilon both apply

    message_type = CutImageMessage

    def handover(self, x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """``h = sqrt(abar_h) x0 + sqrt(1-abar_h) noise`` (``x0`` if ``t_c = 0``; ``Cut.handover``)."""
        return self.cut.handover(x0, noise)

    def encode(self, client, x0, t, eps, *, ids, secret, labels=None):
        if self.fixed_noise:
            eps = fixed_handover_noise(ids, x0.shape[1:], secret).to(x0.device)
        return CutImageMessage(client, self.message_labels(labels), h=self.handover(x0, eps))

    def server_batch(self, msgs, gen, device):
        h = torch.cat([m.h for m in msgs])
        s = randint(self.cut.server_steps, h.shape[0], gen)
        target = randn(h.shape, gen).to(device)
        x_t = q_sample(h, s.to(device), target, self.cut.tail_abar)
        t = (s + self.cut.t_c).to(device)  # the model is told the global timestep
        return x_t, t, target

    def full_chain_eps(self, eps, t):
        """``eps_full = sqrt((1 - abar_t) / (1 - abar_t / abar_h)) eps_tail`` (DESIGN.md §5).

        The server's model predicts the tail DDPM's noise ``eps2`` of
        ``x_t = sqrt(abar'_t) h + sqrt(1 - abar'_t) eps2``, ``abar'_t = abar_t / abar_h``. Given
        ``x0``, ``x_t - sqrt(abar_t) x0 = sqrt(abar'_t (1 - abar_h)) eps1 + sqrt(1 - abar'_t) eps2``
        is Gaussian with variance ``1 - abar_t``, so ``E[eps2 | x_t, x0] = sqrt(1 - abar'_t)
        (x_t - sqrt(abar_t) x0) / (1 - abar_t) = sqrt((1 - abar'_t) / (1 - abar_t)) E[eps | x_t, x0]``
        with ``eps`` the full chain's noise; averaging over ``x0 | x_t`` gives the same factor
        between the Bayes-optimal predictors, so the mapped prediction steps the full chain."""
        return eps * self._eps_scale.to(eps.device, eps.dtype)[t].view(-1, *([1] * (eps.dim() - 1)))

    @cached_property
    def _eps_scale(self) -> torch.Tensor:
        """``sqrt((1 - abar_t) / (1 - abar_t / abar_h))`` float64 ``[T]`` (1 below ``t_c``, unused)."""
        cut = self.cut
        ab = cut.abar
        scale = torch.ones_like(ab)
        if not cut.sends_nothing:
            tail = ab[cut.t_c :]
            scale[cut.t_c :] = ((1 - tail) / (1 - tail / cut.abar_handover)).sqrt()
        return scale

    def level_range(self):
        return self.cut.handover_level, self.cut.handover_level

    def row_levels(self, messages):
        return torch.full((len(messages["x"]),), self.cut.handover_level, dtype=torch.long)

    def _server_range(self):
        cut = self.cut
        return ModelRange(cut.t_c, cut.tail_abar, 0.0 if cut.sends_clean else cut.abar_handover)

    def release_mu(self, image_shape, releases=1, sensitivity_l2=None):
        if self.cut.sends_nothing or releases <= 0:
            return 0.0
        if self.sends_labels:  # the label crosses in the clear: a replaced label is seen exactly
            return math.inf
        return release_mu(self.cut.abar_handover, image_shape, releases, sensitivity_l2)
