"""``exact``: the shared-noise algebra (DESIGN.md §1, protocol 1).

In ``shared-noise`` every message carries ``(x_t, t, eps)``, so the server inverts the
forward process: ``x0 = (x_t - sqrt(1-abar[t]) eps) / sqrt(abar[t])``, computed in
float64 and clamped to [-1, 1] (clean pixels lie there). Exact up to the precision the
view was recorded in (``record.dtype``; float16 rounding of ``x_t`` is amplified by
``1 / sqrt(abar[t])`` at high ``t``). ``cut-image`` sends no noise: not applicable.
"""

from __future__ import annotations

import torch

from .base import NotApplicable, ReconstructionAttack, ReconstructionOutput, register


@register("exact")
class Exact(ReconstructionAttack):
    """``x0 = (x_t - sqrt(1-abar[t]) eps) / sqrt(abar[t])`` per message (shared-noise only)."""

    def check(self, view) -> None:
        super().check(view)
        if not view.protocol.sends_noise:
            raise NotApplicable(
                f"{view.protocol.name} sends no noise with its images; the exact algebra needs eps (shared-noise)"
            )

    def _reconstruct(self, view, rows: torch.Tensor) -> ReconstructionOutput:
        x0 = view.protocol.recover_x0(view.messages, rows)
        return ReconstructionOutput(x0.clamp(-1, 1).float(), rows, "messages")
