"""DP-SGD for a denoiser through Opacus (Abadi et al. 2016; Opacus, Yousefpour et al. 2021).

:class:`DPSGD` wraps the user's ``(model, optimizer)`` the way Opacus'
``PrivacyEngine.make_private`` does, without owning the data loader or the loop:

* the model goes into a ``GradSampleModule`` (per-sample gradients), the plain
  model stays the one whose ``state_dict`` is saved (no ``_module.`` prefix);
* the optimizer goes into a ``DPOptimizer``: per-sample clipping to
  ``max_grad_norm``, Gaussian noise ``N(0, (sigma * max_grad_norm)^2)`` from a
  seeded ``torch.Generator``, division by the *expected* batch size;
* an Opacus accountant (``prv`` or ``rdp``) records ``(sigma, q, steps)``.

The caller draws the batch by Poisson sampling at rate ``q`` (:class:`PoissonSampler`);
an empty batch still takes a (noise-only) step, as the analysis assumes.

The attention/channels-last trap (DESIGN.md §4): diffusers' attention blocks hand
the following ``Conv2d`` a tensor with channels-last strides; Opacus' hook-mode
conv grad sampler (``unfold2d``) assumes NCHW and returns per-sample gradients of
exact zeros for those convs. :func:`contiguous_conv_inputs` fixes this with a
forward pre-hook on every ``Conv2d`` (tests/test_dp.py checks every parameter of
every preset against a per-example loop). ``functorch`` mode is unaffected.
Opacus' ``ew`` (expanded weights) mode does not run on diffusers' UNet at all
(``ModelMixin.dtype`` calls ``is_floating_point`` on the expanded weights).
"""

from __future__ import annotations

import warnings
from typing import Callable, Optional

import torch
from torch import nn
from .accounting import dp_sgd_epsilon

GRAD_SAMPLE_MODES = ("hooks", "functorch")


def contiguous_conv_inputs(model: nn.Module) -> list:
    """Forward pre-hooks that make every ``Conv2d`` input contiguous (NCHW); returns the handles."""

    def hook(module, args):
        return tuple(a.contiguous() if torch.is_tensor(a) else a for a in args)

    return [m.register_forward_pre_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]


def grad_sample_module(model: nn.Module, grad_sample_mode: str = "hooks", loss_reduction: str = "mean"):
    """``model`` wrapped for per-sample gradients (``p.grad_sample`` [B, *p.shape] after backward)."""
    from opacus.grad_sample.utils import wrap_model

    if grad_sample_mode not in GRAD_SAMPLE_MODES:
        raise ValueError(f"grad_sample_mode must be one of {', '.join(GRAD_SAMPLE_MODES)}, got {grad_sample_mode!r}")
    contiguous_conv_inputs(model)
    return wrap_model(model, grad_sample_mode, batch_first=True, loss_reduction=loss_reduction, strict=True)


class PoissonSampler:
    """Poisson sampling of ``n`` items at rate ``q`` per draw (each item independently),
    from a seeded generator whose state is the whole sampler state."""

    def __init__(self, n: int, sample_rate: float, gen: torch.Generator):
        self.n, self.q, self.gen = n, float(sample_rate), gen

    def next(self, batch: Optional[int] = None) -> torch.Tensor:
        """Indices [b] of this draw, b ~ Binomial(n, q) (``batch`` is ignored: q sets the size)."""
        return torch.nonzero(torch.rand(self.n, generator=self.gen) < self.q).flatten()

    def state_dict(self) -> dict:
        return {"gen": self.gen.get_state()}

    def load_state_dict(self, s: dict) -> None:
        self.gen.set_state(s["gen"])


class DPSGD:
    """Opacus DP-SGD around a user's ``(model, optimizer)``.

    ``noise_multiplier`` sigma, ``max_grad_norm`` C, ``expected_batch_size`` the
    averaging denominator (``q * n``; Poisson batches vary), ``sample_rate`` q for the
    accountant, ``generator`` the noise source (seeded; its state is checkpointed).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        noise_multiplier: float,
        max_grad_norm: float,
        expected_batch_size: float,
        sample_rate: float,
        accountant: str = "prv",
        grad_sample_mode: str = "hooks",
        generator: Optional[torch.Generator] = None,
    ):
        from opacus.accountants import create_accountant
        from opacus.optimizers import DPOptimizer

        self.model = model
        self.module = grad_sample_module(model, grad_sample_mode)
        self.optimizer = DPOptimizer(
            optimizer,
            noise_multiplier=float(noise_multiplier),
            max_grad_norm=float(max_grad_norm),
            expected_batch_size=expected_batch_size,
            loss_reduction="mean",
            generator=generator,
        )
        self.generator = generator
        self.sample_rate = float(sample_rate)
        self.accountant_name = accountant
        self.accountant = create_accountant(mechanism=accountant)
        self.grad_sample_mode = grad_sample_mode

    @property
    def noise_multiplier(self) -> float:
        return float(self.optimizer.noise_multiplier)

    @noise_multiplier.setter
    def noise_multiplier(self, value: float) -> None:
        self.optimizer.noise_multiplier = float(value)

    @property
    def max_grad_norm(self) -> float:
        return float(self.optimizer.max_grad_norm)

    @property
    def steps(self) -> int:
        return sum(int(n) for _, _, n in self.accountant.history)

    def step(self, loss_fn: Optional[Callable[[nn.Module], torch.Tensor]],
             extra_grad_samples: Optional[list] = None) -> Optional[float]:  # fmt: skip
        """One DP-SGD step. ``loss_fn(module) -> loss`` (mean over the batch) or None for an
        empty Poisson batch, which still adds the noise and counts as a step.

        ``extra_grad_samples``: optional per-sample gradients ``[k, *p.shape]``, one tensor per
        parameter of ``self.optimizer.params``, appended to the batch's rows before Opacus clips,
        sums and noises them: the white-box audit's gradient canaries (``eval/audit_dpsgd.py``)
        take the same path as real examples. None in training."""
        self.optimizer.zero_grad(set_to_none=True)
        out = None
        if loss_fn is not None:
            loss = loss_fn(self.module)
            with warnings.catch_warnings():
                # Opacus' hook on the first layer, whose input needs no gradient: harmless
                warnings.filterwarnings("ignore", message="Full backward hook is firing")
                loss.backward()
            out = float(loss.detach())
        else:
            for p in self.optimizer.params:
                p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)
        if extra_grad_samples is not None:
            for p, rows in zip(self.optimizer.params, extra_grad_samples, strict=True):
                gs = p.grad_sample
                gs = torch.cat(gs) if isinstance(gs, list) else gs
                p.grad_sample = torch.cat([gs, rows.to(dtype=p.dtype, device=p.device)])
        self.optimizer.step()
        self.accountant.step(noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate)
        return out

    def epsilon(self, delta: float) -> float:
        """Epsilon spent so far at ``delta`` (Opacus accountant; inf for sigma = 0)."""
        return dp_sgd_epsilon(self.accountant.history, delta, self.accountant_name)

    def state_dict(self) -> dict:
        return {
            "history": [tuple(h) for h in self.accountant.history],
            "noise_multiplier": self.noise_multiplier,
            "generator": self.generator.get_state() if self.generator is not None else None,
        }

    def load_state_dict(self, s: dict) -> None:
        self.accountant.history = [(float(a), float(b), int(c)) for a, b, c in s["history"]]
        self.noise_multiplier = float(s["noise_multiplier"])
        if self.generator is not None and s.get("generator") is not None:
            self.generator.set_state(s["generator"])
