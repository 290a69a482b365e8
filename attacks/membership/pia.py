"""``pia``: Proximal Initialization Attack (Kong, Li, Ning, Song, Zhu, ICLR 2024, "An Efficient
Membership Inference Attack for the Diffusion Model by Proximal Initialization").

The paper, on a DDPM with ``T = 1000``: take the model's own output at the start of the
chain, ``eps_0 = eps_theta(x_0, 0)`` (the "proximal initialisation"), as the noise of one
deterministic forward jump ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps_0`` and score
``|eps_theta(x_t, t) - eps_0|_p^p``; members are fitted better, so the model is more
self-consistent on them. Defaults: ``t = 200``, ``p = 4``.

Here, in the target's own coordinates (:mod:`.model_attack`): ``eps_0`` is the model's output
at its lowest level ``s = 0`` on the candidate placed there on the distribution it was trained
on (``ModelAttack.start``; for a client model the paper's ``eps_theta(x_0, 0)`` up to one step of
noise), the jump ``x_s = sqrt(abar_s) data + sqrt(1 - abar_s) eps_0`` starts from the
candidate's own clean data (``x``, or the hand-over image the cut-image server trained on), as
the paper's does, to the target's step at the noise level of the paper's ``t`` for each ``t``
in ``ts`` (default ``(200,)``; ``ModelAttack.level_of``), and the error is averaged over those
steps. Higher score = member: ``-error``.
"""

from __future__ import annotations

import math

from .base import register
from .model_attack import ModelAttack
from collafuse_privacy.options import BATCH, PRESET, SEED, Opt  # noqa: F401


@register("pia")
class PIA(ModelAttack):
    min_steps = 2

    OPTIONS = {"ts": Opt(list, 1, 999, item=int), "p": Opt(float, 0.0, 1e6, lo_open=True)}

    def __init__(self, target="server", device="cpu", ts=(200,), p: float = 4.0, **kw):
        super().__init__(target, device, **kw)
        self.ts, self.p = tuple(int(t) for t in ts), float(p)
        if not self.ts or not all(0 < t < 1000 for t in self.ts) or self.p <= 0:
            raise ValueError(f"pia needs the papers' timesteps ts in (0, 1000) and p > 0, got {ts}, {p}")

    def _steps(self) -> list[int]:
        return sorted({max(1, min(self.level_of(t), self.n_steps - 1)) for t in self.ts})

    def describe(self) -> dict:
        steps = self._steps() if self.model is not None else []
        return {**super().describe(), "paper_t": list(self.ts), "global_t": [self.t_off + s for s in steps],
                "p": self.p, "start": "the target's lowest level, on-distribution"}  # fmt: skip

    def error(self, x, labels):
        data = self.data(x)
        eps0 = self.eps(self.start(x), 0, labels)  # the model's noise at its lowest level, on-distribution
        steps = self._steps()
        total = 0.0
        for s in steps:
            a = self.ab(s)
            x_s = math.sqrt(a) * data + math.sqrt(1 - a) * eps0  # the paper's jump from the candidate itself
            total = total + (self.eps(x_s, s, labels) - eps0).abs().pow(self.p).flatten(1).mean(1)
        return total / len(steps)
