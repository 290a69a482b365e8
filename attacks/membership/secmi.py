"""``secmi``: Step-wise Error Comparing Membership Inference (Duan, Kong, Wang, Zhu, Ye,
ICML 2023, "Are Diffusion Models Vulnerable to Membership Inference Attacks?"), SecMI_stat.

The paper, on a DDPM with ``T = 1000`` (linear betas 1e-4..0.02): invert the clean ``x_0``
deterministically with DDIM steps of ``k = 10`` (the model's own predictions) to
``t = t_sec - k = 90`` (``t_sec = 100``), take one more deterministic step to ``t + k`` and one
back to ``t``, and score the "t-error" ``|x~_t - x_t|^2``, lower for members, whose posterior the
model estimates more consistently (official code ``mia_evals/secmia.py``: ``t_sec = 100``,
``timestep = 10``).

Here, in the target's own coordinates (:mod:`.model_attack`: local steps ``s``, noise table
``abar_s``), the paper's timesteps are mapped to the target's steps at the same noise level
(``ModelAttack.level_of``). The round trip is taken between the mapped ``t_sec - k`` and
``t_sec`` (at least one step apart), after a deterministic inversion along the mapped
multiples of ``k`` from a start at the target's lowest level. Two departures from the paper,
both measured (table at the end of this file):

* **The start** is the candidate noised on-distribution at the target's lowest level
  (``ModelAttack.start``), and the t-error is averaged over ``n_noise`` seeded start noises
  shared by every candidate, instead of the clean ``x_0``. From the clean image the first
  step adopts the model's noise prediction at ``abar`` near 1, which carries almost no
  information (RMS 0.35 for members, 0.56 for non-members against 1.0 for real noise), so the
  inverted point is under-noised by a class-dependent amount and the sign of the t-error
  flips with the attack level.
* **The default step is ``k = t_sec``**: one round trip from the start to the level of the
  paper's ``t_sec = 100`` and back (the t-error "at t = 0 with step t_sec"). With the
  paper's ``k = 10`` the round trip spans one step of a small target's range, where the
  t-error measures the curvature of the noise field, which is not lower for members of the
  small memorising models of our positive control. ``k = 10`` keeps the paper's schedule.

Higher score = member: ``-t_error``.
"""

from __future__ import annotations

import math

import torch

from .base import register
from .model_attack import ModelAttack
from collafuse_privacy.options import BATCH, PRESET, SEED, Opt  # noqa: F401


def ddim_move(x_s: torch.Tensor, eps: torch.Tensor, a_from: float, a_to: float) -> torch.Tensor:
    """Deterministic DDIM (eta = 0) move from noise level ``a_from`` to ``a_to`` with noise ``eps``."""
    x0 = (x_s - math.sqrt(1 - a_from) * eps) / math.sqrt(a_from)
    return math.sqrt(a_to) * x0 + math.sqrt(1 - a_to) * eps


@register("secmi")
class SecMI(ModelAttack):
    min_steps = 2

    OPTIONS = {"t_sec": Opt(int, 1, 999), "k": Opt(int, 1, 999), "n_noise": Opt(int, 1, 10_000)}

    def __init__(self, target="server", device="cpu", t_sec: int = 100, k: int = 100, n_noise: int = 4, **kw):
        super().__init__(target, device, **kw)
        if not 0 < int(k) <= int(t_sec) < 1000:
            raise ValueError(f"secmi needs 0 < k <= t_sec < 1000 (the papers' timesteps), got k={k}, t_sec={t_sec}")
        self.t_sec, self.k, self.n_noise = int(t_sec), int(k), int(n_noise)

    def _plan(self) -> tuple[list[int], int, int]:
        """``(inversion path, s_att, s_top)`` in the target's local steps."""
        n = self.n_steps
        s_att = min(self.level_of(self.t_sec - self.k), n - 2)
        s_top = min(max(self.level_of(self.t_sec), s_att + 1), n - 1)
        path = [0]
        for t in range(self.k, self.t_sec, self.k):  # the paper's inversion steps, mapped
            s = min(self.level_of(t), s_att)
            if s > path[-1]:
                path.append(s)
        if path[-1] != s_att:
            path.append(s_att)
        return path, s_att, s_top

    def describe(self) -> dict:
        if self.model is None:
            return super().describe()
        path, s_att, s_top = self._plan()
        return {**super().describe(), "paper_t_sec": self.t_sec, "paper_k": self.k, "global_t": self.t_off + s_att,
                "global_t_top": self.t_off + s_top, "inversion_path": [self.t_off + s for s in path],
                "abar_at_attack": self.ab(s_att), "abar_at_top": self.ab(s_top), "n_noise": self.n_noise,
                "start": "the target's lowest level, on-distribution"}  # fmt: skip

    def error(self, x, labels):
        path, s_att, s_top = self._plan()
        a_t, a_k = self.ab(s_att), self.ab(s_top)
        total = torch.zeros(x.shape[0], device=x.device)
        for key in range(self.n_noise):
            x_s = self.start(x, key)
            for s, s_next in zip(path[:-1], path[1:]):
                x_s = ddim_move(x_s, self.eps(x_s, s, labels), self.ab(s), self.ab(s_next))
            x_k = ddim_move(x_s, self.eps(x_s, s_att, labels), a_t, a_k)
            x_back = ddim_move(x_k, self.eps(x_k, s_top, labels), a_k, a_t)
            total += ((x_back - x_s) ** 2).flatten(1).mean(1)
        return total / self.n_noise



# Measured on configs/positive-control.yaml (members against held-out and 200 never-seen images;
# client:0 at c = 0.2, trained with seeds 0 and 1; tests/test_positive_controls.py):
#
#   start, step                                  server c = 0   client:0 s0   client:0 s1
#   clean x_0, paper k = 10 (the old default)       0.874          0.436         0.466
#   noised start, k = t_sec = 50, 4 noises          0.885          0.794         0.773
#   noised start, k = t_sec = 100, 4 noises         0.980          0.913         0.911
#   noised start, k = t_sec = 150, 4 noises         0.983          0.906         0.909
#   noised start, t_sec = 100, 1 noise              0.974          0.885         0.895
#
# The choice (k = t_sec = 100, 4 noises) was made on seed 0 and checked on the seed-1 model. From
# the clean x_0 the inverted point is under-noised (client 0, T = 100: noise RMS 0.34 of the
# expected at t = 2, abar 0.991; 0.66 at t = 14, abar 0.80), and the sign of the t-error flips with
# the attack level (AUC 0.92 at t = 2 with a round trip of 5 steps, 0.08 at t = 14): no level is
# safe without knowing the members.
