"""The clients' half of sampling taken together (``sample.batched_clients``).

Same-architecture client models are stacked (``torch.func.stack_module_state``) and their noise
predictions run as one ``vmap`` over ``functional_call``: one kernel launch per layer for every
client instead of one per client, as in training (``training/batched.py``). The sampler steps
each client's images with that client's own generator (:meth:`~.sampler.Sampler.run` on a
``[K, B, ...]`` batch), so every draw is the one the client makes alone; the outputs equal the
one-by-one loop within float tolerance, not bitwise (other kernel shapes;
``tests/test_batched_sampling.py``).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch.func import functional_call, stack_module_state, vmap

from ..models import same_architecture


def batched_sampling(setting: Optional[bool], device: torch.device, clients: Sequence) -> bool:
    """``sample.batched_clients``: null (on CUDA only: on the CPU the one-by-one loop stays the
    bit-reproducible reference) | true | false; never for fewer than two clients or clients
    whose models differ."""
    on = device.type == "cuda" if setting is None else bool(setting)
    return on and len(clients) >= 2 and same_architecture(list(clients))


class StackedClients:
    """The client models stacked once for a whole sampling call; ``predict(x, t)`` on
    ``x`` [K, B, C, H, W] and ``t`` [K, B] gives every client's noise prediction of its own images."""

    def __init__(self, models: Sequence):
        self.base = models[0]
        with torch.no_grad():
            self.params, self.buffers = stack_module_state(list(models))
        self._f = vmap(self._one)

    def _one(self, p, b, x, t):
        return functional_call(self.base, (p, b), (x, t)).sample

    @torch.no_grad()
    def predict(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self._f(self.params, self.buffers, x, t)
