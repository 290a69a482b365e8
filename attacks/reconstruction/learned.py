"""``learned``: a denoiser trained on the public split to map what the server received to ``x0``.

The server knows the schedule and ``t_c``, so it can simulate releases of its own public
images: ``x = sqrt(a) x0 + sqrt(1-a) eps`` with fresh noise every step, and train an
:class:`~.denoiser.X0Denoiser` (a ``micro`` UNet2DModel by default) to predict ``x0``. Trained
with an MSE it estimates ``E[x0 | x]``, the best reconstruction in MSE under the public
distribution (DESIGN.md §3).

Levels trained on: cut-image — half of each batch at the hand-over level's ``abar_h``,
half at a log-uniform signal-to-noise ratio between that of one release and ``r_max`` times it
(the effective level of an average of up to ``r_max`` independent releases), so the
``average`` method reuses the same fit (cached) and differs only by its linking and averaging.
shared-noise: ``t ~ U{t_c..T-1}``, as the protocol draws it. At ``c = 0`` (``t_c = 0``) the
server receives clean images and nothing is trained.

Defaults (150 steps, batch 64, ``micro``) train in about 15 s on one CPU thread for 16x16 images.
"""

from __future__ import annotations

import math

import torch

from .base import NotApplicable, ReconstructionAttack, ReconstructionOutput, noisy_rows, register
from .denoiser import cached, denoise, fit_x0_denoiser, public_images
from collafuse_privacy.options import BATCH, PRESET, SEED, Opt  # noqa: F401


def level_sampler(view, r_max: int):
    """``sample(B, gen) -> abar [B] float64`` of the levels the denoiser must handle (see module doc)."""
    lo, hi = view.protocol.level_range()
    if lo < hi:  # rows at many levels (shared-noise: t_c..T-1), each as the protocol drew them
        abar = view.cut.abar

        def sample(n, gen):
            return abar[torch.randint(lo, hi + 1, (n,), generator=gen)]

        return sample
    a_h = view.cut.abar_handover
    log_snr = math.log(a_h / (1 - a_h))

    def sample(n, gen):
        u = torch.rand(n, generator=gen, dtype=torch.float64) * math.log(max(1, r_max))
        a_mix = torch.sigmoid(log_snr + u)  # abar with SNR = snr_h * exp(u)
        take_h = torch.rand(n, generator=gen) < 0.5
        return torch.where(take_h, torch.full_like(a_mix, a_h), a_mix)

    return sample


def fitted_denoiser(view, preset: str, steps: int, batch_size: int, lr: float, r_max: int, seed: int, device):
    """The (cached) :class:`X0Denoiser` for this view's levels; returns ``(model, cache_hit)``."""
    images = public_images(view)
    if len(images) == 0:
        raise NotApplicable("the view has no public split to train a denoiser on (data.public_fraction = 0)")
    options = {"preset": preset, "steps": steps, "batch_size": batch_size, "lr": lr, "r_max": r_max, "seed": seed,
               "device": str(device), "protocol": view.protocol.name, "t_c": view.t_c, "diffusion": view.meta.diffusion.__dict__}

    def make():
        return fit_x0_denoiser(images, level_sampler(view, r_max), preset, steps, batch_size, lr, seed, device)

    return cached("x0-denoiser", images, options, make)


@register("learned")
class Learned(ReconstructionAttack):
    """Public-data MMSE denoiser at the received level (see module doc)."""

    OPTIONS = {"seed": SEED, "preset": PRESET, "steps": Opt(int, 1, 10_000_000), "batch_size": BATCH,
               "lr": Opt(float, 0.0, 10.0, lo_open=True), "r_max": Opt(int, 1, 1_000_000)}

    def __init__(self, preset: str = "micro", steps: int = 150, batch_size: int = 64, lr: float = 2e-3,
                 r_max: int = 128, device: str = "cpu", seed: int = 0):  # fmt: skip
        super().__init__(device, seed)
        self.options = dict(preset=preset, steps=int(steps), batch_size=int(batch_size), lr=float(lr), r_max=int(r_max))
        self.model = None
        self.cache_hit = False

    def _fit(self, view) -> None:
        if view.protocol.level_range() == (-1, -1):
            return  # clean images: nothing to denoise
        self.model, self.cache_hit = fitted_denoiser(view, **self.options, seed=self.seed, device=self.device)

    def _reconstruct(self, view, rows: torch.Tensor) -> ReconstructionOutput:
        x, level = noisy_rows(view, rows)
        if self.model is None:
            return ReconstructionOutput(x.clamp(-1, 1), rows, "messages", info={"trained": False})
        out = denoise(self.model, x, view.cut.abar_at(level))
        return ReconstructionOutput(out, rows, "messages", info={"reused_fit": self.cache_hit, **self.options})
