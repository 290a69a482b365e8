"""Seeded random number generators (STYLE.md 6: every draw takes a ``torch.Generator``)."""

from __future__ import annotations

import torch


def generator(*seed_parts: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A generator (CPU unless ``device``) seeded from several integers (stable across runs)."""
    s = 0
    for p in seed_parts:
        s = (s * 1_000_003 + int(p)) % (2**63 - 1)
    return torch.Generator(device=device).manual_seed(s)
