"""Schedules and the forward process (DDPM, Ho et al. 2020), via diffusers.

Notation (DESIGN.md §1): ``t = 0..T-1``; ``abar = scheduler.alphas_cumprod``;
``x_t = sqrt(abar[t]) x0 + sqrt(1 - abar[t]) eps``; ``abar[-1] := 1``.
Everything that depends on where the chain is cut (``t_c``, the hand-over level,
the server's tail schedule) lives in :class:`collafuse_privacy.protocol.Cut`.
"""

from __future__ import annotations

import torch
from diffusers import DDPMScheduler

from .config import SCHEDULE_NAMES, DiffusionConfig
from .errors import UserError
from .registry import Registry


# Linear betas scaled to a small T are capped here: beyond it a step destroys most of the
# signal at once and the tail's abar falls to ~1e-9 (T = 20), where predicting x0 divides by
# sqrt(abar) ~ 3e-5 and sampling explodes. With the cap, T = 20 ends at abar ~ 2e-5; T >= 40
# (every setting of the demo and the default run) is untouched.
MAX_LINEAR_BETA = 0.5
# The chain must end near pure noise: sampling starts from N(0, I).
MAX_FINAL_ABAR = 1e-2


SCHEDULES: Registry = Registry("schedule", names=SCHEDULE_NAMES)


@SCHEDULES.register("linear")
def linear_schedule(cfg: DiffusionConfig) -> DDPMScheduler:
    """Linear betas scaled by ``1000 / T`` (``T = 1000`` is the standard DDPM schedule; smaller ``T``
    still ends near pure noise), capped at :data:`MAX_LINEAR_BETA`."""
    T = cfg.timesteps
    scale = 1000.0 / T
    betas = torch.linspace(cfg.beta_start * scale, cfg.beta_end * scale, T, dtype=torch.float64)
    betas = betas.clamp(max=MAX_LINEAR_BETA)
    return DDPMScheduler(num_train_timesteps=T, trained_betas=betas.tolist(), clip_sample=True)


@SCHEDULES.register("cosine")
def cosine_schedule(cfg: DiffusionConfig) -> DDPMScheduler:
    """diffusers' ``squaredcos_cap_v2`` (Nichol & Dhariwal 2021)."""
    return DDPMScheduler(num_train_timesteps=cfg.timesteps, beta_schedule="squaredcos_cap_v2", clip_sample=True)


def make_scheduler(cfg: DiffusionConfig) -> DDPMScheduler:
    """Full-chain ``DDPMScheduler`` of ``cfg.schedule`` (:data:`SCHEDULES`). A schedule whose last
    ``abar`` is not near 0 is refused."""
    T = cfg.timesteps
    sched = SCHEDULES.get(cfg.schedule)(cfg)
    last = float(torch.prod(1.0 - sched.betas.double()))
    if last > MAX_FINAL_ABAR:
        raise UserError(f"config key 'diffusion.timesteps'={T} is too few for the {cfg.schedule} schedule: its chain "
                        f"ends at abar = {last:.3g}, not near pure noise (at most {MAX_FINAL_ABAR:g}); raise it")
    return sched


def q_sample(x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
    """``sqrt(abar[t]) x0 + sqrt(1-abar[t]) noise`` for a per-image ``t`` ([B]).

    ``abar``: float64 table indexed by ``t`` (``Cut.abar``, or ``Cut.abar_table`` with ``t + 1``).
    """
    a = abar.to(x0.device)[t].to(x0.dtype).view(-1, *([1] * (x0.dim() - 1)))
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def p_losses(model, x_t: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, class_labels=None) -> torch.Tensor:
    """Per-image denoising loss ``mean |eps_theta(x_t, t) - noise|^2`` -> ``[B]``."""
    pred = model(x_t, t, class_labels=class_labels).sample
    return ((pred.float() - noise.float()) ** 2).flatten(1).mean(1)
