"""Models the server trains on its public split, shared by several reconstruction methods.

* :class:`X0Denoiser`: predicts the clean image ``x0`` from ``x = sqrt(a) x0 + sqrt(1-a) eps`` for a
  continuous noise level ``a`` (``abar``), written as ``D(x, a) = sqrt(a) x + sqrt(1-a) F(x, a)``
  (the "v" parametrisation of Salimans & Ho 2022, i.e. EDM preconditioning of Karras et al. 2022
  with ``sigma_data = 1``): ``D`` is exact at ``a = 1`` and ``F`` has unit-scale targets at
  every level. Trained with an MSE on ``x0`` it estimates the posterior mean ``E[x0 | x]``
  (the MMSE reconstruction) under the public data's distribution. Used by ``learned`` and
  ``average`` (the average of ``R`` fresh releases is an observation at a higher level).
* :func:`fit_eps_model`: an ordinary DDPM noise predictor trained on ``t`` in a level range,
  as a client model is trained, but on public data; :func:`ancestral_sample` runs it from
  each row's level down to the clean image with DDPM ancestral steps (Ho et al. 2020),
  optionally strided; one step equals diffusers' ``DDPMScheduler.step`` (tests check it).

All training draws from a seeded ``torch.Generator``; model initialisation runs under a
forked global RNG seeded from the same seed, so a fit is reproducible on the CPU.
Fitted models are cached in-process by a hash of the public images and every option
(STYLE.md 8), so ``learned`` and ``average`` (and ``posterior`` and ``inference``) share one fit.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Callable, Optional

import torch

from collafuse_privacy.diffusion import q_sample

from collafuse_privacy.models import build_unet

_CACHE: dict[str, object] = {}
def public_images(view) -> torch.Tensor:
    """The server's public images ``[P, C, H, W]`` in [-1, 1] (held in its view)."""
    return view.public_images()[0]


def _key(tag: str, images: torch.Tensor, options: dict) -> str:
    h = hashlib.sha256(tag.encode())
    h.update(images.contiguous().numpy().tobytes())
    h.update(json.dumps(options, sort_keys=True, default=str).encode())
    return h.hexdigest()


def cached(tag: str, images: torch.Tensor, options: dict, make: Callable[[], object]) -> tuple[object, bool]:
    """``(object, hit)``: ``make()`` once per (tag, public images, options)."""
    k = _key(tag, images, options)
    if k in _CACHE:
        return _CACHE[k], True
    obj = make()
    _CACHE[k] = obj
    return obj, False


def clear_cache() -> None:
    _CACHE.clear()


def _build(preset: str, images: torch.Tensor, seed: int):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_unet(preset, images.shape[-1], images.shape[1])


def _lr_at(step: int, steps: int, lr: float, warmup: int = 10) -> float:
    """Linear warm-up, then cosine decay to 5% of ``lr``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    p = (step - warmup) / max(1, steps - warmup)
    return lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * p)))


class X0Denoiser(torch.nn.Module):
    """``D(x, a) = sqrt(a) x + sqrt(1-a) F(x, c(a))`` -> estimate of ``x0`` ``[B, C, H, W]``.

    ``x``: ``[B, C, H, W]`` at level ``a`` ([B] float, ``abar`` in (0, 1]);
    ``c(a) = 100 log(sigma) + 500`` with ``sigma = sqrt((1-a)/a)``, a continuous
    "timestep" for the UNet's sinusoidal embedding (levels between the schedule's are fine).
    """

    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        a = a.to(x.device, torch.float32).clamp(1e-10, 1.0)
        sigma = ((1 - a).clamp_min(1e-12) / a).sqrt()
        c_noise = 100.0 * sigma.log() + 500.0
        f = self.unet(x, c_noise).sample
        s = a.view(-1, 1, 1, 1)
        return s.sqrt() * x + (1 - s).sqrt() * f


def fit_x0_denoiser(
    images: torch.Tensor,
    sample_abar: Callable[[int, torch.Generator], torch.Tensor],
    preset: str = "micro",
    steps: int = 150,
    batch_size: int = 64,
    lr: float = 2e-3,
    seed: int = 0,
    device="cpu",
) -> X0Denoiser:
    """Train :class:`X0Denoiser` on ``images`` (public, [P, C, H, W] in [-1, 1]).

    Each step: a batch of images, levels ``a = sample_abar(B, gen)`` ([B] float64), fresh
    noise, loss ``mean |D(x, a) - x0|^2``.
    """
    def loss(model, x0, gen):
        a = sample_abar(len(x0), gen).float()
        noise = torch.randn(x0.shape, generator=gen)
        s = a.view(-1, 1, 1, 1)
        x = s.sqrt() * x0 + (1 - s).sqrt() * noise
        return (model(x.to(device), a.to(device)) - x0.to(device)).pow(2).mean()

    return _train(X0Denoiser(_build(preset, images, seed)), images, loss, steps, batch_size, lr, seed, device)


def _train(model, images, loss_fn, steps: int, batch_size: int, lr: float, seed: int, device):
    """The public-split training loop both fits share: seeded batches (indices first, then
    whatever ``loss_fn(model, x0, gen)`` draws), Adam with :func:`_lr_at`, clipping at 1."""
    gen = torch.Generator().manual_seed(seed)
    model = model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, steps, lr)
        idx = torch.randint(0, len(images), (batch_size,), generator=gen)
        loss = loss_fn(model, images[idx], gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return model.eval().requires_grad_(False)


@torch.no_grad()
def denoise(model: X0Denoiser, x: torch.Tensor, a: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """``model(x, a)`` in batches, clamped to [-1, 1]; returns CPU float32 ``[N, C, H, W]``."""
    dev = next(model.parameters()).device
    out = [model(x[i : i + batch_size].to(dev), a[i : i + batch_size]).cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(out).clamp(-1, 1) if out else x.clone()


def fit_eps_model(
    images: torch.Tensor,
    abar: torch.Tensor,
    level_lo: int,
    level_hi: int,
    preset: str = "micro",
    steps: int = 200,
    batch_size: int = 64,
    lr: float = 2e-3,
    seed: int = 0,
    device="cpu",
):
    """A DDPM noise predictor ``eps_theta(x_t, t)`` (``UNet2DModel``) trained on ``images`` for
    ``t ~ U{level_lo..level_hi}`` with the standard loss ``|eps_theta - eps|^2`` (Ho et al. 2020).

    ``abar``: float64 ``[T]`` of the run's schedule.
    """
    def loss(model, x0, gen):
        t = torch.randint(level_lo, level_hi + 1, (len(x0),), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        x = q_sample(x0, t, noise, abar)
        return (model(x.to(device), t.to(device)).sample - noise.to(device)).pow(2).mean()

    return _train(_build(preset, images, seed), images, loss, steps, batch_size, lr, seed, device)


def ddpm_jump(x, eps, a_t, a_prev, noise: Optional[torch.Tensor], clip: bool = True):
    """One DDPM ancestral step from level ``t`` (``abar = a_t``) to an earlier level ``prev``
    (``a_prev``; 1.0 for the clean image), per row ([B] float64 each).

    ``x0_hat = (x - sqrt(1-a_t) eps) / sqrt(a_t)`` (clipped to [-1, 1] like diffusers'
    ``clip_sample``), then the posterior ``q(x_prev | x_t, x0_hat)`` with ``beta = 1 - a_t/a_prev``:
    mean ``sqrt(a_prev) beta / (1-a_t) x0_hat + sqrt(a_t/a_prev) (1-a_prev)/(1-a_t) x``,
    variance ``(1-a_prev)/(1-a_t) beta`` (``fixed_small``). With ``prev = t - 1`` this is
    ``DDPMScheduler.step``.
    """
    v = lambda z: z.to(x.device, torch.float32).view(-1, 1, 1, 1)  # noqa: E731
    a_t, a_prev = a_t.double(), a_prev.double()
    ratio = a_t / a_prev
    beta = 1 - ratio
    x0 = (x - v((1 - a_t).sqrt()) * eps) / v(a_t.sqrt())
    if clip:
        x0 = x0.clamp(-1, 1)
    mean = v(a_prev.sqrt() * beta / (1 - a_t)) * x0 + v(ratio.sqrt() * (1 - a_prev) / (1 - a_t)) * x
    var = ((1 - a_prev) / (1 - a_t) * beta).clamp_min(1e-20)
    if noise is None:
        return mean
    return mean + v(var.sqrt()) * noise * v((a_prev < 1).double())


@torch.no_grad()
def ancestral_sample(
    model, x: torch.Tensor, level: torch.Tensor, abar: torch.Tensor, n_steps: int, gen: torch.Generator,
    batch_size: int = 512,
) -> torch.Tensor:
    """Run ``eps_theta`` from each row's ``level`` ([N] int64, -1 = clean) down to the clean image.

    Row ``i`` visits the levels ``round(linspace(level_i, -1, K + 1))`` with ``K = min(n_steps,
    max level + 1)``: every step when ``n_steps > level``, otherwise a strided chain (a jump
    ``t -> prev`` uses the exact DDPM posterior for that jump, see :func:`ddpm_jump`).
    Returns ``[N, C, H, W]`` in [-1, 1] (CPU float32).
    """
    dev = next(model.parameters()).device
    tab = torch.cat([torch.ones(1, dtype=torch.float64), abar.double()])  # index level + 1
    top = int(level.max()) if len(level) else -1
    K = max(0, min(int(n_steps), top + 1))
    if K == 0:
        return x.float().clamp(-1, 1)
    frac = torch.linspace(0, 1, K + 1, dtype=torch.float64)
    grid = torch.round(level.double().view(-1, 1) * (1 - frac) + (-1.0) * frac).long()  # [N, K+1]
    x = x.float().clone()
    for k in range(K):
        s, nxt = grid[:, k], grid[:, k + 1]
        active = torch.nonzero(s > nxt).flatten()
        noise = torch.randn(x.shape, generator=gen)  # drawn for all rows: reproducible whatever is active
        for i in range(0, len(active), batch_size):
            idx = active[i : i + batch_size]
            xs = x[idx].to(dev)
            eps = model(xs, s[idx].to(dev)).sample
            x[idx] = ddpm_jump(xs, eps, tab[s[idx] + 1], tab[nxt[idx] + 1], noise[idx].to(dev)).cpu()
    return x.clamp(-1, 1)
