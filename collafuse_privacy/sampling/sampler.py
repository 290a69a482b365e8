"""The one sampler every party steps (DESIGN.md §5).

Every party, the server for ``t = T-1 .. t_c`` and each client for ``t = t_c-1 .. 0``, steps
the same full-chain DDPM sampler: diffusers' ``DDPMScheduler`` on the run's betas with one
variance type (:data:`VARIANCE_TYPE`) and one clipping rule (``sample.clip``), the same at
every step. A party's model gives a noise prediction in the full chain's parameterisation
(the cut-image server's tail prediction is mapped to it by ``Protocol.full_chain_eps``), the
sampler forms ``x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)``, applies the clipping
rule, and takes the DDPM posterior step ``q(x_{t-1} | x_t, x0_hat)``. So at any cut ratio the
composed chain is the full chain, and differences across cut ratios are the models', not the
samplers' (``tests/test_oracle_sampler.py`` checks it with Bayes-optimal denoisers).
:meth:`Sampler.run` is the one sampling loop: the server's half and a client's half of
:class:`~.pipeline.CollaFusePipeline` are its two parts, split at ``t_c``.

Clipping rules (``sample.clip``):

- ``none``: ``x0_hat`` as predicted (the DDPM chain of Ho et al. 2020 without clipping);
- ``x0``: clipped to [-1, 1] at every step (diffusers' ``clip_sample``);
- ``low-noise``: clipped only where ``abar_t >= 0.5``. At high noise ``x0_hat`` is an unbiased
  but very noisy estimate; clipping it where the data sit at the edge of the box (MNIST's
  background is exactly -1) pushes it inward at every step and biases the chain.

The default is chosen by measured FID (README, "The sampler").
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from diffusers import DDPMScheduler

from ..config import CLIP_RULES
from ..errors import UserError
from ..protocol.cut import Cut

VARIANCE_TYPE = "fixed_small"
LOW_NOISE_ABAR = 0.5  # ``low-noise`` clips x0_hat where abar_t is at least this


class Sampler:
    """The full-chain DDPM sampler of one run: ``cut`` (its schedule) and a clipping rule.

    ``step`` takes a full-chain noise prediction; ``run`` steps a predictor over a range of
    timesteps. Images ``[B, C, H, W]``, pixels in [-1, 1]; every draw from the given generator.
    """

    def __init__(self, cut: Cut, clip: str = "none", scheduler: DDPMScheduler | None = None):
        if clip not in CLIP_RULES:
            raise UserError(f"config key 'sample.clip' must be one of {', '.join(CLIP_RULES)}, got {clip!r}")
        self.cut, self.clip = cut, clip
        if scheduler is None:
            scheduler = self.make_scheduler(cut)
        elif not self.steps_the_chain(scheduler, cut):
            raise UserError(f"the sampler's scheduler does not step the chain of {cut} (other betas, variance "
                            f"type or prediction type than {VARIANCE_TYPE!r} on x0 without its own clipping)")  # fmt: skip
        self.scheduler = scheduler

    @staticmethod
    def make_scheduler(cut: Cut) -> DDPMScheduler:
        """The DDPM step on ``cut``'s betas: ``x0`` is handed to it (prediction_type "sample"),
        clipped by our rule, never by its own."""
        return DDPMScheduler(num_train_timesteps=cut.T, trained_betas=cut.betas.tolist(),
                             variance_type=VARIANCE_TYPE, prediction_type="sample", clip_sample=False)  # fmt: skip

    @staticmethod
    def steps_the_chain(scheduler: DDPMScheduler, cut: Cut) -> bool:
        """Whether ``scheduler`` (e.g. one loaded from disk) takes exactly :meth:`make_scheduler`'s steps."""
        c = scheduler.config
        return (isinstance(scheduler, DDPMScheduler) and c.variance_type == VARIANCE_TYPE
                and c.prediction_type == "sample" and not c.clip_sample and not c.thresholding
                and scheduler.betas.shape == (cut.T,) and torch.equal(scheduler.betas, cut.betas.float()))  # fmt: skip

    @classmethod
    def from_config(cls, cfg, cut: Cut | None = None) -> "Sampler":
        return cls(cut or Cut.from_config(cfg), cfg.sample.clip)

    def at(self, cut: Cut) -> "Sampler":
        """The same sampler (variance type, clipping rule) for another cut of the same chain."""
        return Sampler(cut, self.clip)

    def clips_at(self, t: int) -> bool:
        """Whether ``x0_hat`` is clipped to [-1, 1] at timestep ``t``."""
        if self.clip == "x0":
            return True
        if self.clip == "low-noise":
            return float(self.cut.abar[t]) >= LOW_NOISE_ABAR
        return False

    def predict_x0(self, eps: torch.Tensor, t: int, x: torch.Tensor) -> torch.Tensor:
        """``x0_hat`` of ``x`` at timestep ``t`` from the full-chain noise prediction ``eps``, clipped by the rule."""
        a = float(self.cut.abar[t])
        x0 = (x - (1.0 - a) ** 0.5 * eps) / a**0.5
        return x0.clamp(-1.0, 1.0) if self.clips_at(t) else x0

    def step(self, eps: torch.Tensor, t: int, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """One step ``x_t -> x_{t-1}`` (``t = 0`` returns ``x0_hat``, without noise)."""
        return self.scheduler.step(self.predict_x0(eps, t, x), t, x, generator=gen).prev_sample

    @torch.no_grad()
    def run(self, predict: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor, t_hi: int,
            t_lo: int, gen: torch.Generator | Sequence[torch.Generator]) -> torch.Tensor:  # fmt: skip
        """Steps ``t = t_hi .. t_lo`` (inclusive) from ``x = x_{t_hi}``; returns ``x_{t_lo - 1}``.

        ``predict(x, t)`` with ``t`` a long tensor of ``x``'s batch shape returns the full-chain
        noise prediction. ``x`` is ``[B, C, H, W]`` with one generator, or ``[K, B, C, H, W]``
        with a sequence of ``K`` (K parties stepped together, ``batched.py``): group ``k`` steps
        with ``gen[k]``, so each party's draws are those it makes alone.
        """
        grouped = not isinstance(gen, torch.Generator)
        for s in range(t_hi, t_lo - 1, -1):
            t = torch.full(x.shape[:-3], s, device=x.device, dtype=torch.long)
            eps = predict(x, t)
            if grouped:
                x = torch.stack([self.step(eps[k], s, x[k], g) for k, g in enumerate(gen)])
            else:
                x = self.step(eps, s, x, gen)
        return x
