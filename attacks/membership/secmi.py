"""``secmi``: Step-wise Error Comparing Membership Inference (Duan, Kong, Wang, Zhu,
Ye, ICML 2023, "Are Diffusion Models Vulnerable to Membership Inference Attacks?").

SecMI_stat: invert ``x0`` deterministically with DDIM to level ``t`` (using the
model's own predictions), take one more deterministic DDIM step up to ``t + k``,
denoise back to ``t`` with DDIM, and score the "t-error"
``-|x~_t - x_t|^2``: members are reconstructed more faithfully.

Adapted to the target's range (see :mod:`.model_attack`): the inversion starts at
the target's lowest step ``s = 0`` (server: global ``t_c``) from the deterministic
``x_0 = sqrt(abar_s[0]) data + sqrt(1-abar_s[0]) eps_theta(sqrt(abar_s[0]) data, 0)``
(the server cannot invert through the clients' steps), takes ``n_inv`` DDIM
inversion steps to ``s_att = round(fraction * (n-1))``, then the t-error with
step ``k = max(1, round(k_fraction * (n-1)))``.
"""

from __future__ import annotations

import math

import torch

from .base import register
from .model_attack import ModelAttack


def ddim_move(x_s: torch.Tensor, eps: torch.Tensor, a_from: float, a_to: float) -> torch.Tensor:
    """Deterministic DDIM (eta = 0) move from noise level ``a_from`` to ``a_to`` with noise ``eps``."""
    x0 = (x_s - math.sqrt(1 - a_from) * eps) / math.sqrt(a_from)
    return math.sqrt(a_to) * x0 + math.sqrt(1 - a_to) * eps


@register("secmi")
class SecMI(ModelAttack):
    min_steps = 2

    def __init__(self, target="server", device="cpu", fraction: float = 0.1, k_fraction: float = 0.05,
                 n_inv: int = 1, **kw):  # fmt: skip
        super().__init__(target, device, **kw)
        self.fraction, self.k_fraction, self.n_inv = float(fraction), float(k_fraction), max(1, int(n_inv))

    def _plan(self) -> tuple[list[int], int, int]:
        n = self.n_steps
        k = max(1, int(round(self.k_fraction * (n - 1))))
        s_att = min(max(0, int(round(self.fraction * (n - 1)))), max(0, n - 1 - k))
        k = min(k, n - 1 - s_att)
        path = sorted({int(round(s_att * i / self.n_inv)) for i in range(self.n_inv + 1)})
        return path, s_att, k

    def describe(self) -> dict:
        if self.model is None:
            return super().describe()
        path, s_att, k = self._plan()
        return {**super().describe(), "global_t": self.t_off + s_att, "k": k, "inversion_path": [self.t_off + s for s in path]}

    def error(self, x, labels):
        path, s_att, k = self._plan()
        if k < 1:  # a one-step range: no room for a t-error step
            raise ValueError("secmi needs at least two timesteps in the target's range")
        data = self.clean_data(x)
        a0 = self.ab(0)
        x_s = math.sqrt(a0) * data + math.sqrt(1 - a0) * self.eps(math.sqrt(a0) * data, 0, labels)
        for s, s_next in zip(path[:-1], path[1:]):
            x_s = ddim_move(x_s, self.eps(x_s, s, labels), self.ab(s), self.ab(s_next))
        a_t, a_k = self.ab(s_att), self.ab(s_att + k)
        x_k = ddim_move(x_s, self.eps(x_s, s_att, labels), a_t, a_k)
        x_back = ddim_move(x_k, self.eps(x_k, s_att + k, labels), a_k, a_t)
        return ((x_back - x_s) ** 2).flatten(1).mean(1)
