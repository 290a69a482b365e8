"""Seeded random number generators (STYLE.md 6: every draw takes a ``torch.Generator``).

A generator lives on a device, and its draws are made there (:func:`randn`, :func:`randint`):
on CUDA a party's noise is drawn on the GPU from a CUDA generator, with no host-to-device copy
per round. The streams are therefore the device's own: a run on CUDA does not reproduce the
draws of the same config on the CPU (each is reproducible on its own device), and a
checkpoint's generator states resume only on the device type that wrote them
(:func:`restore`). Index draws (batch positions, row orders) stay on the CPU.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

import torch

from .errors import UserError


def generator(*seed_parts: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A generator (CPU unless ``device``) seeded from several integers (stable across runs)."""
    s = 0
    for p in seed_parts:
        s = (s * 1_000_003 + int(p)) % (2**63 - 1)
    return torch.Generator(device=device).manual_seed(s)


def randn(shape, gen: torch.Generator) -> torch.Tensor:
    """Standard normal noise of ``shape`` drawn on ``gen``'s device."""
    return torch.randn(shape, generator=gen, device=gen.device)


def randint(high: int, n: int, gen: torch.Generator) -> torch.Tensor:
    """``n`` integers uniform on ``0 .. high-1`` drawn on ``gen``'s device."""
    return torch.randint(0, high, (n,), generator=gen, device=gen.device)


def restore(gen: torch.Generator, state: torch.Tensor, what: str) -> None:
    """``gen.set_state(state)``, or one line saying why a checkpoint's stream cannot resume here."""
    try:
        gen.set_state(state.cpu() if isinstance(state, torch.Tensor) else state)
    except (RuntimeError, TypeError, ValueError) as e:
        raise UserError(f"{what}: the checkpoint's random stream does not fit a {gen.device.type} generator "
                        f"(a run resumes on the device type it was trained on): {e}") from None


# cuBLAS reproducibility needs a fixed workspace (PyTorch, "Reproducibility"); set before its first call.
CUBLAS_WORKSPACE = ":4096:8"


def fix_cublas_workspace() -> None:
    """``CUBLAS_WORKSPACE_CONFIG`` for deterministic cuBLAS, unless the user set one (before cuBLAS' first call)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)


@contextmanager
def deterministic_algorithms(on: bool = True):
    """``torch.use_deterministic_algorithms(True)`` and cuDNN without autotuning inside the block
    (``train.deterministic``), restored after it; nothing with ``on`` False. On CUDA it makes a
    resumed run bit-identical to an uninterrupted one (an op without a deterministic kernel
    raises instead of running); on the CPU, whose kernels are deterministic already, it changes
    no number (``tests/test_deterministic.py``)."""
    if not on:
        yield
        return
    fix_cublas_workspace()
    prev = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
            torch.backends.cudnn.benchmark)  # fmt: skip
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev[0], warn_only=prev[1])
        torch.backends.cudnn.benchmark = prev[2]
