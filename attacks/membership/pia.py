"""``pia``: Proximal Initialization Attack (Kong, Li, Ning, Song, Zhu, ICLR 2024,
"An Efficient Membership Inference Attack for the Diffusion Model by Proximal
Initialization").

PIA takes the model's own output at the start of the chain, ``eps0 = eps_theta(x0, 0)``,
as the noise of a deterministic forward step ``x_t = sqrt(abar_t) x0 + sqrt(1-abar_t) eps0``
and scores ``-|eps_theta(x_t, t) - eps0|_p^p`` (``p = 4``, their best). Members are
fitted better, so the model is more self-consistent on them.

Adapted to the target's range (see :mod:`.model_attack`): the start is the target's
lowest step ``s = 0`` (server: global ``t_c``; client: ``t = 0``, the original),
fed the noise-free ``sqrt(abar_s[0]) data``, where ``data`` is ``x`` or, for the
cut-image server, the mean ``sqrt(abar_h) x`` of its hand-over images. The
error is averaged over the local steps given by ``fractions``.
"""

from __future__ import annotations

import math

from .base import register
from .model_attack import ModelAttack, local_steps


@register("pia")
class PIA(ModelAttack):
    min_steps = 2

    def __init__(self, target="server", device="cpu", fractions=(0.1, 0.25), p: float = 4.0, **kw):
        super().__init__(target, device, **kw)
        self.fractions, self.p = tuple(fractions), float(p)

    def describe(self) -> dict:
        steps = [s for s in local_steps(self.n_steps, self.fractions) if s > 0] if self.model is not None else []
        return {**super().describe(), "global_t": [self.t_off + s for s in steps], "p": self.p}

    def error(self, x, labels):
        data = self.clean_data(x)
        eps0 = self.eps(math.sqrt(self.ab(0)) * data, 0, labels)
        steps = [s for s in local_steps(self.n_steps, self.fractions) if s > 0] or [min(1, self.n_steps - 1)]
        total = 0.0
        for s in steps:
            a = self.ab(s)
            x_s = math.sqrt(a) * data + math.sqrt(1 - a) * eps0
            total = total + (self.eps(x_s, s, labels) - eps0).abs().pow(self.p).flatten(1).mean(1)
        return total / len(steps)
