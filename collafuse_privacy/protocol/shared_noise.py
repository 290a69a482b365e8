"""``shared-noise``: the CollaFuse short paper's code (DESIGN.md §1, protocol 1).

Each client draws ``t`` and ``eps`` per image; the images with ``t >= t_c`` go to the
server as ``(x_t, t, eps)`` and it minimises ``|eps_theta(x_t, t) - eps|^2``. Because
``eps`` travels with ``x_t`` the server recovers
``x0 = (x_t - sqrt(1 - abar[t]) eps) / sqrt(abar[t])`` exactly: the view's epsilon is
infinite for every cut below 1. The server's model predicts the full chain's noise, so at
inference it steps the one sampler with its prediction as it is (``T-1 .. t_c``).
"""

from __future__ import annotations

import math

import torch

from ..diffusion import q_sample
from ..errors import UserError
from .base import ModelRange, Protocol, register
from .messages import SharedNoiseMessage


@register("shared-noise")
class SharedNoise(Protocol):
    sends_noise = True
    message_type = SharedNoiseMessage

    @classmethod
    def check_config(cls, cfg) -> None:
        super().check_config(cfg)
        if cfg.protocol.target_epsilon is not None:
            raise UserError(
                "config key 'protocol.target_epsilon' applies to protocol.kind=cut-image only "
                "(shared-noise sends eps beside x_t: epsilon is infinite for every cut below 1)"
            )

    def encode(self, client, x0, t, eps, *, ids, secret, labels=None):
        return SharedNoiseMessage(client, self.message_labels(labels), x_t=q_sample(x0, t, eps, self.cut.abar), t=t, eps=eps)

    def server_batch(self, msgs, gen, device):
        x_t = torch.cat([m.x_t for m in msgs])
        t = torch.cat([m.t for m in msgs]).to(device)
        target = torch.cat([m.eps for m in msgs])
        return x_t, t, target

    def level_range(self):
        return self.cut.t_c, self.cut.T - 1

    def row_levels(self, messages):
        return messages["t"].long()

    def recover_x0(self, messages, rows=None):
        sel = slice(None) if rows is None else rows
        x = messages["x"][sel].double()
        eps = messages["eps"][sel].double()
        a = self.cut.abar_at(messages["t"][sel].long()).view(-1, *([1] * (x.dim() - 1)))
        return (x - (1 - a).sqrt() * eps) / a.sqrt()

    def _server_range(self):
        return ModelRange(self.cut.t_c, self.cut.abar[self.cut.t_c :], 0.0)

    def release_mu(self, image_shape, releases=1, sensitivity_l2=None):
        return 0.0 if self.cut.sends_nothing or releases <= 0 else math.inf
