"""``loss``: the target model's denoising loss on a candidate (Yeom et al. 2018 style,
as used against diffusion models by Carlini et al. 2023 and Matsumoto et al. 2023).

Score ``= -mean_{s, k} |eps_theta(x_s, t_off + s) - eps_k|^2`` over a few local steps
``s`` of the target's range (server: global ``t >= t_c``; released client model:
``t < t_c``) and ``n_noise`` fixed seeded noises per step, the same for every
candidate. In cut-image the server's inputs are built exactly as it trained
(``CutImage.server_batch``): ``h = sqrt(abar_h) x + sqrt(1-abar_h) eps1``,
``x_s = sqrt(abar'[s]) h + sqrt(1-abar'[s]) eps2``, target ``eps2``; this ``x_s``
has the marginal ``q(x_t | x)`` at global ``t = t_c + s``.
"""

from __future__ import annotations

import math

import torch

from .base import register
from .model_attack import ModelAttack, local_steps
from collafuse_privacy.options import BATCH, PRESET, SEED, Opt  # noqa: F401


@register("loss")
class LossAttack(ModelAttack):
    """``fractions``: where in the target's range to probe (0 = its lowest-noise step)."""

    OPTIONS = {"fractions": Opt(list, 0.0, 1.0, item=float), "n_noise": Opt(int, 1, 10_000)}

    def __init__(self, target="server", device="cpu", fractions=(0.0, 0.1, 0.25), n_noise: int = 1, **kw):
        super().__init__(target, device, **kw)
        self.fractions, self.n_noise = tuple(fractions), int(n_noise)

    def describe(self) -> dict:
        steps = local_steps(self.n_steps, self.fractions) if self.model is not None else []
        return {**super().describe(), "global_t": [self.t_off + s for s in steps], "n_noise": self.n_noise}

    def error(self, x, labels):
        shape = x.shape[1:]
        steps = local_steps(self.n_steps, self.fractions)
        total = torch.zeros(x.shape[0], device=x.device)
        for s in steps:
            a = self.ab(s)
            for k in range(self.n_noise):
                data = x
                if self.hand_a:
                    eps1 = self.noise(shape, 1, s, k).to(x.device)
                    data = self.range.data(x, eps1)
                eps = self.noise(shape, 2, s, k).to(x.device)
                x_s = math.sqrt(a) * data + math.sqrt(1 - a) * eps
                total += ((self.eps(x_s, s, labels) - eps) ** 2).flatten(1).mean(1)
        return total / (len(steps) * self.n_noise)
