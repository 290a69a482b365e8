"""The cut of the denoising chain: every quantity that depends on where it lies.

Notation (DESIGN.md §1, diffusers' ``DDPMScheduler``): ``t = 0..T-1``,
``abar[t] = prod_{s<=t} (1 - beta_s)`` (float64), ``abar[-1] := 1``. The cut
ratio ``c`` gives ``t_c = round(c T)``; clients own ``t < t_c``, the server
``t >= t_c``. The hand-over image is ``h = x_{t_c-1}`` at level ``t_c - 1``
(``h = x0`` when ``t_c = 0``).

:class:`Cut` is the one place that handles the edge cases (``t_c = 0``: the
server receives clean images; ``t_c = T``: nothing crosses) and derives
``abar_handover = abar[t_c - 1]`` and the server's tail schedule
``betas[t_c:]``, whose cumulative product ``abar'[s]`` equals
``abar[t_c + s] / abar[t_c - 1]``.

:func:`noised` is the hand-over formula ``h = sqrt(a) x0 + sqrt(1 - a) eps`` at one level's
``a``, written once: the cut-image client sends it, and the attacks rebuild the server's data
with it (``ModelRange.data``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import torch
from diffusers import DDPMScheduler

from ..config import Config, DiffusionConfig, cut_timestep
from ..diffusion import make_scheduler


def noised(x0: torch.Tensor, noise: torch.Tensor, abar: float) -> torch.Tensor:
    """``sqrt(abar) x0 + sqrt(1 - abar) noise`` at one level's ``abar`` (a Python float): the hand-over
    image ``h`` at ``abar = abar[t_c - 1]``."""
    return (abar**0.5) * x0 + ((1 - abar) ** 0.5) * noise


@dataclass(frozen=True, eq=False)
class Cut:
    """Where the chain is split: ``T`` steps, the first server step ``t_c``, the schedule.

    ``diffusion``: the schedule's config (the server knows it); ``t_c`` in ``0..T``.
    Tensors are float64 on the CPU.
    """

    diffusion: DiffusionConfig
    t_c: int
    cut_ratio: float = field(default=float("nan"))

    def __post_init__(self):
        if not 0 <= self.t_c <= self.diffusion.timesteps:
            raise ValueError(f"t_c must lie in [0, {self.diffusion.timesteps}], got {self.t_c}")

    # ---- construction ---------------------------------------------------------------
    @classmethod
    def from_config(cls, cfg: Config) -> "Cut":
        return cls(cfg.diffusion, cfg.t_c, cfg.protocol.cut_ratio)

    @classmethod
    def at_ratio(cls, diffusion: DiffusionConfig, cut_ratio: float) -> "Cut":
        return cls(diffusion, cut_timestep(cut_ratio, diffusion.timesteps), cut_ratio)

    def with_t_c(self, t_c: int) -> "Cut":
        return Cut(self.diffusion, int(t_c), t_c / self.T)

    # ---- the schedule -------------------------------------------------------------------
    @property
    def T(self) -> int:
        return self.diffusion.timesteps

    @cached_property
    def _scheduler(self) -> DDPMScheduler:
        return make_scheduler(self.diffusion)

    def scheduler(self) -> DDPMScheduler:
        """The full-chain scheduler (shared; its ``step`` keeps no state for DDPM)."""
        return self._scheduler

    @cached_property
    def betas(self) -> torch.Tensor:
        """``beta[t]`` float64 ``[T]`` (the scheduler's float32 values, exactly)."""
        return self._scheduler.betas.double()

    @cached_property
    def abar(self) -> torch.Tensor:
        """``abar[t]`` float64 ``[T]``, recomputed in float64 from the betas."""
        return torch.cumprod(1.0 - self.betas, dim=0)

    @cached_property
    def abar_table(self) -> torch.Tensor:
        """``abar`` float64 ``[T + 1]`` indexed by ``level + 1`` (``abar[-1] = 1`` at index 0)."""
        return torch.cat([torch.ones(1, dtype=torch.float64), self.abar])

    def abar_at(self, level) -> torch.Tensor:
        """``abar[level]`` float64 (level ``-1`` is the clean image, 1.0); int or ``[n]`` tensor."""
        return self.abar_table[torch.as_tensor(level) + 1]

    # ---- the cut ------------------------------------------------------------------------
    @property
    def sends_nothing(self) -> bool:
        """``c = 1`` (``t_c = T``): clients run every step, nothing crosses."""
        return self.t_c >= self.T

    @property
    def sends_clean(self) -> bool:
        """``c = 0`` (``t_c = 0``): the server receives the clean images."""
        return self.t_c == 0

    @property
    def handover_level(self) -> int:
        """Level of the hand-over image ``h = x_{t_c - 1}`` (``-1``: clean)."""
        return self.t_c - 1

    @property
    def abar_handover(self) -> float:
        """``abar[t_c - 1]`` (1.0 at ``t_c = 0``)."""
        return float(self.abar_table[self.t_c])

    def handover(self, x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """``h = sqrt(abar_h) x0 + sqrt(1 - abar_h) noise`` (``x0`` if ``t_c = 0``)."""
        return noised(x0, noise, self.abar_handover)

    @property
    def server_steps(self) -> int:
        return self.T - self.t_c

    @property
    def handover_range(self) -> float:
        """Bound on a hand-over pixel, ``sqrt(abar_h) + 4 sqrt(1 - abar_h)`` (a 4-sigma noise
        excursion; 1 at ``t_c = 0``, where ``h`` is the clean image)."""
        a = self.abar_handover
        return a**0.5 + 4.0 * (1.0 - a) ** 0.5

    @cached_property
    def tail_scheduler(self) -> DDPMScheduler:
        """The server's DDPM in ``cut-image``: betas ``[t_c:]``, data = hand-over images.

        Training only: the server draws its levels and noise on this schedule. At inference every
        party steps the one full-chain sampler (``collafuse_privacy.sampler``), to which the
        server's tail prediction is mapped (``CutImage.full_chain_eps``).
        """
        if self.sends_nothing:
            raise ValueError("c = 1: the server owns no steps and has no schedule")
        betas = self.betas[self.t_c :]
        return DDPMScheduler(num_train_timesteps=len(betas), trained_betas=betas.tolist())

    @cached_property
    def tail_abar(self) -> torch.Tensor:
        """``abar'[s]`` float64 ``[T - t_c]`` of the tail schedule: the cumulative product of
        its betas (what the server trains with), ``= abar[t_c + s] / abar[t_c - 1]``."""
        return torch.cumprod(1.0 - self.tail_scheduler.betas.double(), dim=0)

    def client_range(self) -> torch.Tensor:
        """``abar[s]`` float64 ``[t_c]`` of the clients' steps ``s < t_c``."""
        return self.abar[: self.t_c]

    # ---- meta ---------------------------------------------------------------------------
    def to_meta(self) -> dict:
        return {"timesteps": self.T, "t_c": self.t_c, "cut_ratio": self.cut_ratio,
                "handover_level": self.handover_level, "abar_handover": self.abar_handover}  # fmt: skip

    def __repr__(self) -> str:
        return f"Cut(t_c={self.t_c} of T={self.T}, {self.diffusion.schedule})"
