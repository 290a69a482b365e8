"""What a run will need, known before it starts: a run that cannot fit in memory is refused
with one line instead of swapping the machine to a halt rounds later.

The estimate (bytes): every party's weights, gradients, Adam's two moments and the EMA copy
(``20 P`` for ``P`` parameters; DP-SGD clients add per-sample gradients, ``B P`` floats); the
dataset and the clients' copies of their members; and the activations of the largest step
(the server's, whose batch is every client's sent images of a round), measured by one forward
pass of one image and doubled for the backward pass. ``train.memory_check: false`` skips it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from .config import Config
from .errors import UserError
from .models import num_params


def available_memory() -> Optional[int]:
    """Bytes of memory available to a new process (Linux ``MemAvailable``), or None if unknown."""
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


@torch.no_grad()
def activation_floats(model: torch.nn.Module, shape, num_class_embeds: Optional[int] = None) -> int:
    """Floats of every leaf module's output for one image of ``shape`` (C, H, W)."""
    total = 0

    def hook(_m, _i, out):
        nonlocal total
        if torch.is_tensor(out):
            total += out.numel()

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        x = torch.zeros(1, *shape, device=next(model.parameters()).device)
        t = torch.zeros(1, dtype=torch.long, device=x.device)
        labels = torch.zeros(1, dtype=torch.long, device=x.device) if num_class_embeds else None
        model.eval()(x, t, class_labels=labels)
    finally:
        for h in handles:
            h.remove()
    return total


@dataclass(frozen=True)
class MemoryEstimate:
    parties: int
    states: int
    data: int
    activations: int

    @property
    def total(self) -> int:
        return self.states + self.data + self.activations


def estimate_memory(cfg: Config, data_bytes: int, server_model, client_model, image_shape) -> MemoryEstimate:
    N, B, c = cfg.data.clients, cfg.train.batch_size, cfg.protocol.cut_ratio
    p_s, p_c = num_params(server_model), num_params(client_model)
    states = 20 * p_s + N * 20 * p_c
    if cfg.defense.client_dp.enabled:
        states += N * 4 * p_c * max(1, int(B * c))
    server_batch = N * B * max(1.0 - c, 0.0)
    act = 4 * 2 * max(activation_floats(server_model, image_shape, getattr(server_model.config, "num_class_embeds", None))
                      * server_batch, activation_floats(client_model, image_shape) * B * c)  # fmt: skip
    return MemoryEstimate(parties=N + 1, states=int(states), data=int(2 * data_bytes), activations=int(act))


def check_memory(cfg: Config, data_bytes: int, server_model, client_model, image_shape) -> Optional[MemoryEstimate]:
    """Refuse (UserError) a run whose estimate exceeds the memory available; None when unchecked."""
    if not cfg.train.memory_check:
        return None
    avail = available_memory()
    if avail is None:
        return None
    est = estimate_memory(cfg, data_bytes, server_model, client_model, image_shape)
    if est.total > 0.9 * avail:
        gb = lambda b: f"{b / 1e9:.1f} GB"  # noqa: E731
        raise UserError(
            f"this run needs about {gb(est.total)} of memory ({est.parties} models with their optimiser and EMA "
            f"state {gb(est.states)}, data {gb(est.data)}, activations of the server's step {gb(est.activations)}), "
            f"more than the {gb(avail)} available: lower data.clients, train.batch_size or model.preset, or set "
            "train.memory_check=false to try anyway"
        )
    return est
