"""What a run will need, known before it starts: a run that cannot fit in memory is refused
with one line instead of swapping the machine to a halt rounds later.

The estimate (bytes): every party's weights, gradients, Adam's two moments and the EMA copy
(``20 P`` for ``P`` parameters; DP-SGD clients add per-sample gradients, ``B P`` floats); the
dataset and the clients' copies of their members; and the activations of the largest step
(the server's, whose batch is every client's sent images of a round), measured by one forward
pass of one image and doubled for the backward pass. ``train.memory_check: false`` skips it.

The same check (:func:`require_memory`) guards the other commands whose size the user picks:
``sample --n`` (every client's samples and hand-over images are held at once,
:func:`check_sample_memory`) and ``audit --canaries`` (the canaries, their partners and the
dataset they join, :func:`check_canary_memory`), before anything is allocated or written.
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


def _gb(b: float) -> str:
    return f"{b / 1e9:.1f} GB"


def require_memory(cfg: Config, need: float, what: str, remedy: str) -> bool:
    """Refuse (UserError, one line) work that needs ``need`` bytes when more than 90% of the memory
    available; ``what`` says what needs it, ``remedy`` what to lower. False when unchecked
    (``train.memory_check: false``, or the memory available is unknown)."""
    if not cfg.train.memory_check:
        return False
    avail = available_memory()
    if avail is None:
        return False
    if need > 0.9 * avail:
        raise UserError(f"{what} needs about {_gb(need)} of memory, more than the {_gb(avail)} available: {remedy}, "
                        "or set train.memory_check=false to try anyway")  # fmt: skip
    return True


def check_memory(cfg: Config, data_bytes: int, server_model, client_model, image_shape) -> Optional[MemoryEstimate]:
    """Refuse (UserError) a run whose estimate exceeds the memory available; None when unchecked."""
    est = estimate_memory(cfg, data_bytes, server_model, client_model, image_shape)
    what = (f"this run ({est.parties} models with their optimiser and EMA state {_gb(est.states)}, data "
            f"{_gb(est.data)}, activations of the server's step {_gb(est.activations)})")  # fmt: skip
    ok = require_memory(cfg, est.total, what, "lower data.clients, train.batch_size or model.preset")
    return est if ok else None


def image_bytes(shape) -> int:
    c, h, w = (int(x) for x in shape)
    return 4 * c * h * w


def check_sample_memory(cfg: Config, n: int, shape) -> None:
    """``sample``: every client's ``n`` outputs, their clamped copy, the hand-over images and the
    file buffers are held at once (about four float32 copies of ``clients * n`` images)."""
    need = 4 * cfg.data.clients * int(n) * image_bytes(shape)
    require_memory(cfg, need, f"sampling {n} images for each of {cfg.data.clients} clients", "lower --n (sample.n)")


def check_canary_memory(cfg: Config, m: int, shape) -> None:
    """``audit``: the ``m`` canaries, their partners, the images they are inserted as and the
    dataset copy they join (about four float32 copies of ``m`` images)."""
    require_memory(cfg, 4 * int(m) * image_bytes(shape), f"an audit with {m} canaries", "lower --canaries")
