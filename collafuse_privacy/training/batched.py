"""The clients' local steps of a round taken together (``train.batched_clients``).

Same-architecture client models are stacked with ``torch.func.stack_module_state`` and their
forward passes run as one ``vmap`` over ``functional_call``: one kernel launch per layer for all
clients instead of one per client (what a GPU needs; on the CPU it is about even). Each client's
batch is padded to the largest one and masked, so its loss is exactly its own mean (GroupNorm and
the timestep embedding act per image: padding rows touch nothing of the real ones). The gradients
of the stacked parameters are each client's own; they are written back into the client's model
and each :class:`~collafuse_privacy.party.Party` finishes its step as in the one-by-one loop
(clipping, Adam, warm-up, EMA). Equal to the loop within float tolerance, not bitwise (other
kernel shapes); ``tests/test_batched_clients.py`` checks it to 1e-5 relative on every preset.

DP-SGD clients (Opacus' per-sample gradients) and clients with no local image this round take
their steps one by one.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch.func import functional_call, stack_module_state, vmap

from ..diffusion import p_losses
from ..models import same_architecture
from ..party import Party


def batched_clients(setting: Optional[bool], device: torch.device) -> bool:
    """``train.batched_clients``: null (on CUDA only: on the CPU the one-by-one loop stays the
    bit-reproducible reference) | true | false."""
    return device.type == "cuda" if setting is None else bool(setting)


def batched_train_steps(parties: Sequence[Party], batches: Sequence[tuple]) -> list[Optional[float]]:
    """``party.train_step(x_t, t, noise)`` for every (party, batch), the plain parties' forward and
    backward passes taken together; returns each party's loss (None for an empty batch)."""
    out: list[Optional[float]] = [None] * len(parties)
    group = [i for i, (p, b) in enumerate(zip(parties, batches)) if p.dp is None and b[0].shape[0] > 0]
    if len(group) < 2 or not same_architecture([parties[i].model for i in group]):
        group = []
    for i, (p, b) in enumerate(zip(parties, batches)):
        if i not in group:
            out[i] = p.train_step(*b)
    if not group:
        return out
    ps = [parties[i] for i in group]
    models = [p.model for p in ps]
    for m in models:
        m.train()
    n = [batches[i][0].shape[0] for i in group]
    B = max(n)
    x = torch.stack([_pad(batches[i][0], B) for i in group])
    t = torch.stack([_pad(batches[i][1], B) for i in group])
    noise = torch.stack([_pad(batches[i][2], B) for i in group])
    mask = torch.stack([torch.arange(B, device=x.device) < k for k in n]).to(x.dtype)
    params, buffers = stack_module_state(models)  # copies that require grad
    base = models[0]

    def one(p, b, x, t, noise):
        return p_losses(lambda *a, **kw: functional_call(base, (p, b), a, kw), x, t, noise)

    with ps[0].algorithms():  # one config: every party has the same precision and determinism
        with ps[0].autocast():
            per_image = vmap(one)(params, buffers, x, t, noise)  # [K, B], fp32
        losses = (per_image * mask).sum(1) / torch.tensor(n, dtype=per_image.dtype, device=x.device)
        total = losses.sum()
        if ps[0].scaler is not None:  # fp16: every client's own scale
            total = sum(p.scaler.scale(l) for p, l in zip(ps, losses))
        names = list(params)
        grads = dict(zip(names, torch.autograd.grad(total, [params[k] for k in names], allow_unused=True)))
    for j, (p, m) in enumerate(zip(ps, models)):
        p.opt.zero_grad(set_to_none=True)
        for name, param in m.named_parameters():
            g = grads[name]
            param.grad = None if g is None else g[j].detach().clone()
        p.finish_step()
    for j, i in enumerate(group):
        out[i] = float(losses[j].detach())
    return out


def _pad(a: torch.Tensor, size: int) -> torch.Tensor:
    if a.shape[0] == size:
        return a
    return torch.cat([a, a.new_zeros((size - a.shape[0], *a.shape[1:]))])
