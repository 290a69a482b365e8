"""``posterior``: a diffusion model trained on the public split, run from the received level to 0.

The server trains what a client trains — a DDPM noise predictor for ``t < t_c`` (a ``micro``
UNet2DModel by default) — but on its public images, then treats each received ``h`` as
``x_{t_c-1}`` and runs DDPM ancestral steps down to ``t = 0`` (Ho et al. 2020): samples from
(its model of) ``p(x0 | h)``, each as sharp as a client sample. In shared-noise each row starts
at its own ``t`` (the model is then trained on ``t <= T-1``). It draws ``n_samples`` samples per
row (default 4): their mean, the posterior mean and so the server's best statement in MSE, is
what MSE / PSNR / SSIM score; one sample is what the identification uses (a mean of several
digits is no digit). ``sample_steps`` strides the chain (exact DDPM posterior per jump,
:func:`~.denoiser.ancestral_sample`); the default keeps the family's runtime small.

Defaults (150 steps, batch 64; 20 sampling steps, 4 samples) take about 30 s on one CPU
thread for 512 16x16 images at c = 0.5 (T = 100).
"""

from __future__ import annotations

import torch

from collafuse_privacy.rng import generator

from .base import NotApplicable, ReconstructionAttack, ReconstructionOutput, noisy_rows, register
from .denoiser import ancestral_sample, cached, fit_eps_model, public_images
from collafuse_privacy.options import BATCH, PRESET, SEED, Opt  # noqa: F401


def fitted_eps_model(view, preset: str, steps: int, batch_size: int, lr: float, seed: int, device):
    """The (cached) public-data DDPM for levels ``0..top``; ``(model or None, cache_hit)``."""
    top = view.protocol.level_range()[1]  # the noisiest level a received row can be at
    if top < 0:
        return None, False  # c = 0: the server already holds clean images
    images = public_images(view)
    if len(images) == 0:
        raise NotApplicable("the view has no public split to train a diffusion model on (data.public_fraction = 0)")
    options = {"preset": preset, "steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed, "top": top,
               "device": str(device), "diffusion": view.meta.diffusion.__dict__}
    abar = view.cut.abar
    make = lambda: fit_eps_model(images, abar, 0, top, preset, steps, batch_size, lr, seed, device)  # noqa: E731
    return cached("eps-model", images, options, make)


@register("posterior")
class Posterior(ReconstructionAttack):
    """Public-data DDPM run from each received image's level down to the clean image."""

    OPTIONS = {"seed": SEED, "preset": PRESET, "steps": Opt(int, 1, 10_000_000), "batch_size": BATCH,
               "lr": Opt(float, 0.0, 10.0, lo_open=True), "sample_steps": Opt(int, 1, 100_000),
               "n_samples": Opt(int, 1, 100_000)}

    def __init__(self, preset: str = "micro", steps: int = 150, batch_size: int = 64, lr: float = 2e-3,
                 sample_steps: int = 20, n_samples: int = 4, device: str = "cpu", seed: int = 0):  # fmt: skip
        super().__init__(device, seed)
        self.options = dict(preset=preset, steps=int(steps), batch_size=int(batch_size), lr=float(lr))
        self.sample_steps, self.n_samples = int(sample_steps), int(n_samples)
        if self.n_samples < 1:
            raise ValueError(f"n_samples must be at least 1, got {n_samples}")
        self.model = None
        self.cache_hit = False

    def _fit(self, view) -> None:
        self.model, self.cache_hit = fitted_eps_model(view, **self.options, seed=self.seed, device=self.device)

    def _inputs(self, view, rows):
        return noisy_rows(view, rows)

    def _reconstruct(self, view, rows: torch.Tensor) -> ReconstructionOutput:
        x, level = self._inputs(view, rows)
        info = {"reused_fit": self.cache_hit, "sample_steps": self.sample_steps, "n_samples": self.n_samples,
                **self.options}  # fmt: skip
        if self.model is None:
            return ReconstructionOutput(x.clamp(-1, 1), rows, self.source, info={"trained": False})
        gen = generator(self.seed, 0x9057)
        samples = [ancestral_sample(self.model, x, level, view.cut.abar, self.sample_steps, gen)
                   for _ in range(self.n_samples)]  # fmt: skip
        mean = torch.stack(samples).mean(0)  # the posterior mean (of the public-data model) given the release
        return ReconstructionOutput(mean, rows, self.source, info=info, sample=samples[0])
