"""Schedules and the forward process (DDPM, Ho et al. 2020), via diffusers.

Notation (DESIGN.md §1): ``t = 0..T-1``; ``abar = scheduler.alphas_cumprod``;
``x_t = sqrt(abar[t]) x0 + sqrt(1 - abar[t]) eps``; ``abar[-1] := 1``.
Everything that depends on where the chain is cut (``t_c``, the hand-over level,
the server's tail schedule) lives in :class:`collafuse_privacy.protocol.Cut`.
"""

from __future__ import annotations

import torch
from diffusers import DDPMScheduler

from .config import DiffusionConfig


def make_scheduler(cfg: DiffusionConfig) -> DDPMScheduler:
    """Full-chain ``DDPMScheduler``. Linear betas are scaled by ``1000 / T`` so
    that ``T = 1000`` is the standard DDPM schedule and smaller ``T`` still ends
    near pure noise; ``cosine`` is diffusers' ``squaredcos_cap_v2``."""
    T = cfg.timesteps
    if cfg.schedule == "linear":
        scale = 1000.0 / T
        betas = torch.linspace(cfg.beta_start * scale, min(cfg.beta_end * scale, 0.999), T, dtype=torch.float64)
        return DDPMScheduler(num_train_timesteps=T, trained_betas=betas.tolist(), clip_sample=True)
    return DDPMScheduler(num_train_timesteps=T, beta_schedule="squaredcos_cap_v2", clip_sample=True)


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
