"""Schedules and the forward process (DDPM, Ho et al. 2020), via diffusers.

Notation (DESIGN.md §1): ``t = 0..T-1``; ``abar = scheduler.alphas_cumprod``;
``x_t = sqrt(abar[t]) x0 + sqrt(1 - abar[t]) eps``; ``abar[-1] := 1``.
The cut ``t_c`` splits the chain: clients own ``t < t_c``, the server ``t >= t_c``.
The hand-over image is ``h = x_{t_c - 1}`` (``h = x0`` when ``t_c = 0``).

In ``cut-image`` the server trains an ordinary DDPM whose data are the ``h``'s,
on the tail schedule ``betas[t_c:]`` (:func:`tail_scheduler`), whose
``abar'[s] = abar[t_c + s] / abar[t_c - 1]``; its marginals equal ``q(x_t | x0)``.
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


def alphas_cumprod(scheduler: DDPMScheduler) -> torch.Tensor:
    """``abar`` as float64 ``[T]`` (recomputed in float64 from the betas)."""
    return torch.cumprod(1.0 - scheduler.betas.double(), dim=0)


def abar_at(scheduler: DDPMScheduler, t: torch.Tensor | int) -> torch.Tensor:
    """``abar[t]`` with ``abar[-1] = 1`` (float64)."""
    ab = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod(scheduler)])
    return ab[torch.as_tensor(t) + 1]


def tail_scheduler(scheduler: DDPMScheduler, t_c: int, variance_type: str = "fixed_large") -> DDPMScheduler:
    """The server's DDPM in ``cut-image``: betas ``[t_c:]``, data = hand-over images.

    No clipping of its predicted "x0": that is ``h``, which is not bounded in [-1, 1].
    Reverse variance ``beta_t`` (``fixed_large``): Ho et al. (2020) show it is the
    optimal choice for isotropic Gaussian data, and the hand-over images are nearly
    that (variance ``1 - abar[t_c-1]`` around a shrunken image). With the
    Bayes-optimal denoiser, ``fixed_small`` gives ``h`` 8-16% too little variance at
    T = 50..200, ``fixed_large`` plus the final-step noise of
    :func:`collafuse_privacy.sampling.server_denoise` about 1% (tests/test_sampling.py).
    """
    betas = scheduler.betas[t_c:].double()
    return DDPMScheduler(
        num_train_timesteps=len(betas), trained_betas=betas.tolist(), clip_sample=False, variance_type=variance_type
    )


def q_sample(x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
    """``sqrt(abar[t]) x0 + sqrt(1-abar[t]) noise`` for a per-image ``t`` ([B]).

    ``abar``: float64 table indexed by ``t`` (use :func:`abar_at` for ``t = -1``).
    """
    a = abar.to(x0.device)[t].to(x0.dtype).view(-1, *([1] * (x0.dim() - 1)))
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def handover(x0: torch.Tensor, t_c: int, noise: torch.Tensor, scheduler: DDPMScheduler) -> torch.Tensor:
    """``h = x_{t_c-1} = sqrt(abar[t_c-1]) x0 + sqrt(1-abar[t_c-1]) noise`` (``x0`` if ``t_c=0``)."""
    a = float(abar_at(scheduler, t_c - 1))
    return (a**0.5) * x0 + ((1 - a) ** 0.5) * noise


def p_losses(model, x_t: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, class_labels=None) -> torch.Tensor:
    """Per-image denoising loss ``mean |eps_theta(x_t, t) - noise|^2`` -> ``[B]``."""
    pred = model(x_t, t, class_labels=class_labels).sample
    return ((pred.float() - noise.float()) ** 2).flatten(1).mean(1)
