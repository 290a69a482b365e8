"""``exact``: the shared-noise algebra (DESIGN.md §1, protocol 1).

In ``shared-noise`` every message carries ``(x_t, t, eps)``, so the server inverts the
forward process: ``x0 = (x_t - sqrt(1-abar[t]) eps) / sqrt(abar[t])``, computed in
float64 and clamped to [-1, 1] (clean pixels lie there). Exact up to the precision the
view was recorded in (``record.dtype``; float16 rounding of ``x_t`` is amplified by
``1 / sqrt(abar[t])`` at high ``t``). ``cut-image`` sends no noise: not applicable.
"""

from __future__ import annotations

import torch

from .base import NotApplicable, ReconstructionAttack, ReconstructionOutput, levels_to_abar, register


@register("exact")
class Exact(ReconstructionAttack):
    """``x0 = (x_t - sqrt(1-abar[t]) eps) / sqrt(abar[t])`` per message (shared-noise only)."""

    def check(self, view) -> None:
        super().check(view)
        if view.protocol != "shared-noise":
            raise NotApplicable(
                f"{view.protocol} sends no noise with its images; the exact algebra needs eps (shared-noise)"
            )

    def _reconstruct(self, view, rows: torch.Tensor) -> ReconstructionOutput:
        x = view.messages["x"][rows].double()
        eps = view.messages["eps"][rows].double()
        a = levels_to_abar(view, view.messages["t"][rows].long()).view(-1, 1, 1, 1)
        x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
        return ReconstructionOutput(x0.clamp(-1, 1).float(), rows, "messages")
