"""``rescale``: the naive baseline ``x / sqrt(abar)`` (DESIGN.md §3).

``x = sqrt(abar) x0 + sqrt(1-abar) eps`` has mean ``sqrt(abar) x0``, so ``x / sqrt(abar)`` is
an unbiased but noisy estimate of ``x0`` (noise std ``sqrt((1-abar)/abar)`` per pixel),
clamped to [-1, 1]. cut-image: ``h / sqrt(abar_h)`` (hand-over level); shared-noise: ``x_t / sqrt(abar[t])``
per row, ignoring the ``eps`` sent beside it (what a server that drops ``eps`` would get).
"""

from __future__ import annotations

import torch

from .base import ReconstructionAttack, ReconstructionOutput, noisy_rows, register


@register("rescale")
class Rescale(ReconstructionAttack):
    """``clamp(x / sqrt(abar[level]), -1, 1)`` per message."""

    def _reconstruct(self, view, rows: torch.Tensor) -> ReconstructionOutput:
        x, level = noisy_rows(view, rows)
        a = view.cut.abar_at(level).view(-1, 1, 1, 1)
        return ReconstructionOutput((x.double() / a.sqrt()).clamp(-1, 1).float(), rows, "messages")
