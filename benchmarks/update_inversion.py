"""Feasibility of update inversion for diffusion models (GIDM's simplest form; issue 26), not an attack
of the package yet: what a FedAvg server could reconstruct from one client's upload.

The setting most favourable to the server, as a ceiling: one client takes one plain SGD step on one
image (batch 1, one local step), so its upload minus the global model is ``-lr * grad``. For each
true timestep ``t`` the script draws the noise, takes the step, and the server optimises an
``(x_t, eps)`` pair so that its own gradient's cosine with the observed update is maximal (Adam on
``1 - cos``), at a candidate timestep; the image is then ``(x_t - sqrt(1 - abar) eps) / sqrt(abar)``.
Printed per true ``t``: the match (``1 - cos``) and SSIM to the true image at the true ``t`` (known
``t``), SSIM to an unrelated image of the dataset (the chance level of the same reconstruction),
and, with ``--candidates``, the match at other timesteps (whether ``t`` itself is identifiable).

What it does not do (the package's attack would have to): Adam clients (an Adam step is not the
gradient), batches above one and several local steps, the search over every ``t`` of the chain.

    .venv/bin/python benchmarks/update_inversion.py [--t 1,10,38,70] [--iters 300] [--candidates 0,5,30,60]
"""

from __future__ import annotations

import argparse
import copy
import time
from importlib import resources
from pathlib import Path

import torch
from diffusers.models.attention_processor import AttnProcessor

from collafuse_privacy.config import DiffusionConfig, load_config
from collafuse_privacy.data import load_dataset
from collafuse_privacy.diffusion import make_scheduler, p_losses
from collafuse_privacy.models import build_unet
from collafuse_privacy.eval.similarity import ssim


def _plain_attention(model) -> None:
    """Attention without SDPA: on the CPU, SDPA has no double backward (the match needs one)."""
    for m in model.modules():
        if hasattr(m, "set_processor") and hasattr(m, "processor"):
            m.set_processor(AttnProcessor())


def observed_update(model, x0, t, eps, abar, lr):
    """The client's upload minus the global model after one SGD step on ``x0`` at ``t``."""
    client = copy.deepcopy(model)
    opt = torch.optim.SGD(client.parameters(), lr=lr)
    a = abar[t].view(-1, 1, 1, 1)
    loss = p_losses(client, a.sqrt() * x0 + (1 - a).sqrt() * eps, t, eps).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    return [(p1 - p0).detach() for p1, p0 in zip(client.parameters(), model.parameters())]


def invert(model, delta, t: int, abar, shape, iters: int, seed: int):
    """``(1 - cos, image)``: the ``(x_t, eps)`` whose update direction best matches ``delta`` at ``t``."""
    params = list(model.parameters())
    gen = torch.Generator().manual_seed(seed)
    x_t = torch.randn(shape, generator=gen).requires_grad_()
    eps = torch.randn(shape, generator=gen).requires_grad_()
    opt = torch.optim.Adam([x_t, eps], lr=0.05)
    tt = torch.tensor([t])
    d_norm = torch.sqrt(sum((d * d).sum() for d in delta))
    for _ in range(iters):
        g = torch.autograd.grad(p_losses(model, x_t, tt, eps).mean(), params, create_graph=True)
        cos = -sum((a * b).sum() for a, b in zip(g, delta)) / (torch.sqrt(sum((a * a).sum() for a in g)) * d_norm)
        loss = 1 - cos
        opt.zero_grad()
        loss.backward()
        opt.step()
    a = abar[t]
    x0 = ((x_t - (1 - a).sqrt() * eps) / a.sqrt()).detach().clamp(-1, 1)
    return float(loss.detach()), x0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--timesteps", type=int, default=100)
    p.add_argument("--t", default="1,10,38,70", help="true timesteps, one image each (comma list)")
    p.add_argument("--candidates", default="0,5,30,60",
                   help="other timesteps to try for each image (comma list; empty: none)")
    p.add_argument("--iters", type=int, default=300)
    p.add_argument("--lr", type=float, default=0.002, help="the client's SGD learning rate")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.manual_seed(args.seed)
    cfg = load_config(Path(str(resources.files("collafuse_privacy.configs"))) / "positive-control.yaml")  # 8x8 digits
    images = load_dataset(cfg.data).images
    abar = make_scheduler(DiffusionConfig(timesteps=args.timesteps)).alphas_cumprod.float()
    model = build_unet(args.preset, images.shape[-1], images.shape[1])
    _plain_attention(model)
    print(f"{args.preset} UNet ({sum(p.numel() for p in model.parameters()):,} parameters), {tuple(images.shape[1:])} "
          f"images, T = {args.timesteps}, {args.iters} iterations per inversion")
    print(f"{'t':>4} {'1 - cos':>9} {'SSIM true':>10} {'SSIM other':>11} {'s':>6}  match at other t")
    for k, t in enumerate(int(v) for v in args.t.split(",")):
        x0, other = images[k : k + 1], images[len(images) // 2 + k : len(images) // 2 + k + 1]
        eps = torch.randn_like(x0)
        delta = observed_update(model, x0, torch.tensor([t]), eps, abar, args.lr)
        start = time.time()
        match, rec = invert(model, delta, t, abar, x0.shape, args.iters, args.seed + k)
        seconds = time.time() - start
        others = []
        for c in (int(v) for v in args.candidates.split(",") if v):
            if c != t:
                others.append(f"{c}: {invert(model, delta, c, abar, x0.shape, args.iters, args.seed + k)[0]:.4f}")
        print(f"{t:>4} {match:>9.5f} {float(ssim(rec, x0)[0]):>10.3f} {float(ssim(rec, other)[0]):>11.3f} "
              f"{seconds:>6.1f}  {', '.join(others)}", flush=True)


if __name__ == "__main__":
    main()
