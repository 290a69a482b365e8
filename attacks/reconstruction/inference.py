"""``inference``: predict a client's final generated image from the hand-over image the server sent it.

At inference the server produces ``h = x_{t_c-1}`` and the client finishes ``t = t_c-1 .. 0``
with its own model (DESIGN.md §1). The server keeps ``h`` (``view.handover``) and runs its
public-data DDPM (the one ``posterior`` trains; cached, shared) from ``h`` down to 0: its guess
of the client's output. Rows index ``view.handover``; eval scores them against the client's
actual samples (``samples/client-K.safetensors``).
"""

from __future__ import annotations

from .base import handover_rows, register
from .posterior import Posterior


@register("inference")
class Inference(Posterior):
    """The public-data DDPM run from each inference hand-over image ``h`` to ``t = 0``."""

    source = "handover"

    def _inputs(self, view, rows):
        return handover_rows(view, rows)
