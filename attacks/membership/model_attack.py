"""Shared machinery of the model-based membership attacks (``loss``, ``secmi``, ``pia``).

A target model owns a contiguous range of the chain, which the attacks see in
the model's own coordinates: local steps ``s = 0..n-1`` at global timestep
``t = t_off + s``, a noise table ``abar_s[s]`` and "clean data" ``data(x)`` for a
candidate ``x`` (pixels in [-1, 1]):

==========================  ============  =====================================  ======================
target                      ``t_off``     ``abar_s[s]``                          clean data
==========================  ============  =====================================  ======================
server, shared-noise        ``t_c``       ``abar[t_c + s]``                      ``x``
server, cut-image           ``t_c``       ``Cut.tail_abar[s]``                   ``h = x_{t_c-1}`` of ``x``
client K (released model)   0             ``abar[s]``, ``s < t_c``               ``x``
==========================  ============  =====================================  ======================

The table comes from the protocol (``Protocol.model_range``). In cut-image the server
trains an ordinary DDPM whose data are the hand-over images ``h`` on the tail schedule
(``CutImage.server_batch``):
``x_t = sqrt(abar_s[s]) h + sqrt(1 - abar_s[s]) eps2``, target ``eps2``, model told
``t = t_c + s``. Given ``x`` this ``x_t`` has exactly the marginal
``q(x_t | x) = N(sqrt(abar[t]) x, (1 - abar[t]) I)``. ``h`` is drawn from ``x`` with fixed
seeded noise shared by every candidate (:meth:`ModelAttack.data`), and ``secmi`` and ``pia``
start from the candidate at the target's lowest level (:meth:`ModelAttack.start`), on the
distribution the target was trained on.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from .base import MembershipAttack, NotApplicable
from collafuse_privacy.options import BATCH, PRESET, SEED, Opt  # noqa: F401
from collafuse_privacy.rng import generator


# The papers attack DDPMs with T = 1000 linear betas from 1e-4 to 0.02 (Ho et al. 2020); their
# timesteps are mapped to the target by noise level, not by index (:meth:`ModelAttack.level_of`).
PAPER_T = 1000


def paper_abar() -> torch.Tensor:
    """``abar[t]`` float64 ``[1000]`` of the papers' schedule."""
    betas = torch.linspace(1e-4, 0.02, PAPER_T, dtype=torch.float64)
    return torch.cumprod(1.0 - betas, 0)


def local_steps(n: int, fractions) -> list[int]:
    """Distinct local steps ``round(f * (n - 1))`` for ``f`` in ``fractions`` (sorted)."""
    return sorted({min(n - 1, max(0, int(round(f * (n - 1))))) for f in fractions})


class ModelAttack(MembershipAttack):
    """Loads the target model in ``fit`` and gives subclasses ``eps(x_s, s)`` in local steps."""

    min_steps = 1  # timesteps the method needs in the target model's range
    OPTIONS = {"batch_size": BATCH, "seed": SEED}

    def __init__(self, target="server", device="cpu", batch_size: int = 512, seed: int = 0):
        super().__init__(target, device)
        self.batch_size, self.seed = batch_size, seed
        self.model = None

    def fit(self, view) -> "ModelAttack":
        try:
            rng = view.protocol.model_range(self.target_kind)  # the target's part of the chain
        except ValueError as exc:
            raise NotApplicable(str(exc)) from None
        if self.target_kind == "server":
            model = view.server_model(self.device)
            if model is None:
                raise NotApplicable("the server view holds no trained server model (no checkpoint)")
            self.conditioning, self.n_clients = view.protocol.conditioning, view.meta.clients
        else:
            model = view.client_model(self.target_client, self.device)  # UserError if not released
            self.conditioning = None  # a client model takes no label
            if view.protocol.aggregates:  # fedavg: the client's last upload, which the server holds
                self.upload_round = view.upload_round(self.target_client)
        self.range = rng  # its clean data (ModelRange.data: the hand-over formula of the protocol)
        self.t_off, self.abar_s, self.hand_a = rng.t_off, rng.abar, rng.hand_a
        self.model = model.eval()
        self.n_steps = len(self.abar_s)
        self.num_class_embeds = getattr(model.config, "num_class_embeds", None)
        if self.n_steps < self.min_steps:
            raise NotApplicable(f"{self.name} needs at least {self.min_steps} timesteps in the target's range "
                                f"(it has {self.n_steps})")  # fmt: skip
        return self

    # ---- helpers for subclasses ------------------------------------------------
    def describe(self) -> dict:
        d = {"target": self.target, "global_t_range": [self.t_off, self.t_off + getattr(self, "n_steps", 0) - 1]}
        if getattr(self, "upload_round", None) is not None:
            d["model"] = f"client {self.target_client}'s upload of round {self.upload_round}"
        return d

    def ab(self, s: int) -> float:
        return float(self.abar_s[s])

    def level_of(self, t_paper: int) -> int:
        """The target's local step at the noise level of the papers' timestep ``t_paper``: the one
        whose ``abar_s`` is nearest in log signal-to-noise ratio to ``abar[t_paper]`` of the papers'
        schedule (a step index means nothing across schedules; a noise level does). Clipped to the
        target's range: a range that does not reach that level gives its nearest end."""
        a = float(paper_abar()[int(t_paper)])
        snr = torch.log(self.abar_s / (1 - self.abar_s).clamp_min(1e-300))
        return int(torch.argmin((snr - math.log(a / (1 - a))).abs()))

    def data(self, x: torch.Tensor, key: int = 0) -> torch.Tensor:
        """The target's clean data for candidates ``x``: ``x`` itself, or for the cut-image server
        the hand-over image ``h = sqrt(hand_a) x + sqrt(1 - hand_a) eps1`` it was trained on,
        with seeded noise ``eps1`` shared by every candidate."""
        if not self.hand_a:
            return x
        eps1 = self.noise(x.shape[1:], 1, key).to(x.device)
        return self.range.data(x, eps1)

    def start(self, x: torch.Tensor, key: int = 0) -> torch.Tensor:
        """Candidates at the target's lowest level ``s = 0``, on the distribution it was trained on:
        ``x_0 = sqrt(abar_s[0]) data(x) + sqrt(1 - abar_s[0]) eps`` with seeded noise shared by every
        candidate. For a client model (``abar_s[0]`` = 1 - beta_0) this is the papers' clean ``x_0``
        up to one step of noise; for the server, whose first level ``t_c`` is noisy, it is the only
        point of its range that it ever saw (a noise-free ``sqrt(abar) x`` would be off its distribution)."""
        a0 = self.ab(0)
        eps = self.noise(x.shape[1:], 2, 0x57A7, key).to(x.device)
        return math.sqrt(a0) * self.data(x, key) + math.sqrt(1 - a0) * eps

    def noise(self, shape, *key: int) -> torch.Tensor:
        """Fixed noise ``[1, C, H, W]`` shared by all candidates, seeded by ``(seed, *key)``."""
        return torch.randn((1, *shape), generator=generator(self.seed, 0x3A1A, *key))

    def label_options(self, n: int, client: Optional[int]) -> list[Optional[torch.Tensor]]:
        """Class labels to try: the asked client's id (client-conditioned server), every
        client / class when unknown (the attacker keeps the best match), else None."""
        ks = None if self.conditioning is None else self.conditioning.probe_classes(client, self.n_clients,
                                                                                   self.num_class_embeds)  # fmt: skip
        if ks is None:
            return [None]
        return [torch.full((n,), k, dtype=torch.long, device=self.device) for k in ks]

    @torch.no_grad()
    def eps(self, x_s: torch.Tensor, s: int, labels: Optional[torch.Tensor]) -> torch.Tensor:
        t = torch.full((x_s.shape[0],), self.t_off + int(s), dtype=torch.long, device=self.device)
        return self.model(x_s, t, class_labels=labels).sample.float()

    def error(self, x: torch.Tensor, labels: Optional[torch.Tensor]) -> torch.Tensor:
        """Per-candidate attack error ``[B]`` (lower = more likely member) for a batch on the device."""
        raise NotImplementedError

    @torch.no_grad()
    def score(self, view, candidates: torch.Tensor, client: Optional[int] = None) -> torch.Tensor:
        if self.model is None:
            raise RuntimeError("call fit(view) first")
        out = []
        for i in range(0, candidates.shape[0], self.batch_size):
            x = candidates[i : i + self.batch_size].float().to(self.device)
            errs = [self.error(x, lab) for lab in self.label_options(x.shape[0], client)]
            out.append(-torch.stack(errs).amin(0).cpu())
        return torch.cat(out) if out else torch.zeros(0)
