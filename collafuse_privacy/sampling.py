"""Collaborative sampling (DESIGN.md §1, inference).

The server draws ``x_{T-1} ~ N(0, I)`` and runs its steps ``t = T-1 .. t_c`` down
to the hand-over image ``h = x_{t_c-1}``, which it sends to the client; the
client runs ``t = t_c-1 .. 0`` with its own model. In ``cut-image`` the server's
model was trained as a DDPM over hand-over images on the tail schedule, so it
samples with that schedule (its last step returns ``h``). With ``c = 1`` the
client draws its own noise and nothing crosses; with ``c = 0`` the server's
output is the final image.
"""

from __future__ import annotations

import json
import io
from pathlib import Path
from typing import Optional

import torch

from .config import Config
from .diffusion import alphas_cumprod, make_scheduler, tail_scheduler
from .errors import UserError
from .io import atomic_write_bytes, load_tensors, save_tensors
from .models import build_unet
from .rundir import read_run_config
from .training import generator, resolve_device


@torch.no_grad()
def server_denoise(model, cfg: Config, x: torch.Tensor, class_labels, gen: torch.Generator) -> torch.Tensor:
    """Run the server's steps ``t = T-1 .. t_c`` from ``x = x_{T-1}``; returns ``h``."""
    T, t_c = cfg.diffusion.timesteps, cfg.t_c
    full = make_scheduler(cfg.diffusion)
    if cfg.protocol.kind == "shared-noise":
        sched, steps, offset = full, range(T - 1, t_c - 1, -1), 0
    else:
        sched, steps, offset = tail_scheduler(full, t_c), range(T - t_c - 1, -1, -1), t_c
    for s in steps:
        t = torch.full((x.shape[0],), s + offset, device=x.device, dtype=torch.long)
        eps = model(x, t, class_labels=class_labels).sample
        x = sched.step(eps, s, x, generator=gen).prev_sample
    if cfg.protocol.kind == "cut-image" and t_c > 0:
        # The tail DDPM's last step returns E[h | x_{t_c}]; but h = x_{t_c-1} is itself a
        # noisy level, so it gets the noise of an ordinary step t_c -> t_c-1 (DDPM posterior
        # variance of the full chain). Without it h is under-dispersed (tests/test_sampling.py).
        ab = alphas_cumprod(full)
        var = float(full.betas[t_c]) * float(1 - ab[t_c - 1]) / float(1 - ab[t_c])
        x = x + var**0.5 * torch.randn(x.shape, generator=gen).to(x.device)
    return x


@torch.no_grad()
def client_denoise(model, cfg: Config, h: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Run the client's steps ``t = t_c-1 .. 0`` from ``h``; returns ``x0`` in [-1, 1]."""
    sched = make_scheduler(cfg.diffusion)
    x = h
    for s in range(cfg.t_c - 1, -1, -1):
        t = torch.full((x.shape[0],), s, device=x.device, dtype=torch.long)
        eps = model(x, t).sample
        x = sched.step(eps, s, x, generator=gen).prev_sample
    return x.clamp(-1, 1)


def _chunks(n: int, size: int):
    for a in range(0, n, size):
        yield a, min(n, a + size)


def collaborative_sample(server, clients: list, cfg: Config, n: int, seed: int, device, batch_size: int = 256):
    """``n`` samples per client. Returns ``(samples [K, n, C, S, S], handover [K, n, ...] or None)``."""
    T, t_c, K = cfg.diffusion.timesteps, cfg.t_c, len(clients)
    C, S = clients[0].config.in_channels, cfg.data.image_size
    server_gen = generator(seed, 11)
    handovers = None
    if t_c < T:
        handovers = torch.empty(K, n, C, S, S)
        for k in range(K):
            for a, b in _chunks(n, batch_size):
                x = torch.randn((b - a, C, S, S), generator=server_gen).to(device)
                labels = None
                if cfg.model.server_conditioning == "client":
                    labels = torch.full((b - a,), k, dtype=torch.long, device=device)
                elif cfg.model.server_conditioning == "labels":
                    n_cls = server.config.num_class_embeds
                    labels = torch.randint(0, n_cls, (b - a,), generator=server_gen).to(device)
                handovers[k, a:b] = server_denoise(server, cfg, x, labels, server_gen).cpu()
    out = torch.empty(K, n, C, S, S)
    for k, model in enumerate(clients):
        gen = generator(seed, 12, k)
        for a, b in _chunks(n, batch_size):
            h = handovers[k, a:b].to(device) if handovers is not None else torch.randn((b - a, C, S, S), generator=gen).to(device)
            out[k, a:b] = client_denoise(model, cfg, h, gen).cpu() if t_c > 0 else h.clamp(-1, 1).cpu()
    return out, handovers


def load_models(run_dir: Path, cfg: Config, device, ema: bool = True):
    """Server and client models from the run's latest checkpoint (EMA weights by default)."""
    latest = run_dir / "checkpoints" / "latest.json"
    if not latest.is_file():
        raise UserError(f"{run_dir} has no checkpoint yet; run train first")
    try:
        d = run_dir / "checkpoints" / json.loads(latest.read_text())["dir"]
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{latest} is corrupt") from None
    suffix = "_ema" if ema else ""
    meta = json.loads((run_dir / "server_view" / "meta.json").read_text())
    C, S = meta["data"]["channels"], cfg.data.image_size
    n_embeds = {"none": None, "client": cfg.data.clients}
    n_cls = n_embeds.get(cfg.model.server_conditioning)
    weights = load_tensors(d / f"server{suffix}.safetensors")
    if cfg.model.server_conditioning == "labels":
        n_cls = int(weights["class_embedding.weight"].shape[0])
    server = build_unet(cfg.model.preset, S, C, n_cls)
    _load(server, weights, d)
    clients = []
    for k in range(cfg.data.clients):
        m = build_unet(cfg.model.client_preset or cfg.model.preset, S, C)
        _load(m, load_tensors(d / f"client-{k}{suffix}.safetensors"), d)
        clients.append(m)
    for m in [server] + clients:
        m.to(device).eval()
    return server, clients, int(json.loads(latest.read_text())["step"])


def _load(model, weights, d):
    try:
        model.load_state_dict(weights)
    except RuntimeError:
        raise UserError(f"checkpoint {d} does not fit the run's config") from None


def save_grid(path: Path, images: torch.Tensor, nrow: int, min_tile: int = 48) -> None:
    """``images`` [N, C, H, W] in [-1, 1] -> PNG grid (written atomically).

    Small images are enlarged (nearest neighbour, whole factors) to at least
    ``min_tile`` pixels a side so that a 16x16 digit can be looked at.
    """
    import torch.nn.functional as F
    from torchvision.utils import save_image

    factor = max(1, -(-min_tile // images.shape[-1]))
    if factor > 1:
        images = F.interpolate(images.float(), scale_factor=factor, mode="nearest")
    buf = io.BytesIO()
    save_image((images + 1) / 2, buf, nrow=nrow, padding=2, pad_value=1.0, format="png")
    atomic_write_bytes(path, buf.getvalue())


def sample_run(run_dir: str | Path, n: Optional[int] = None, device: str = "auto", seed: Optional[int] = None) -> dict:
    """Collaborative samples for every client of a trained run.

    Writes ``samples/client-K.safetensors`` and ``samples/grid-client-K.png`` (client
    outputs, client-side), ``samples/grid.png`` (a row band per client) and records
    the hand-over images the server produced in ``server_view/handover/``.
    """
    run_dir = Path(run_dir)
    cfg = read_run_config(run_dir)
    n = n or cfg.sample.n
    dev = resolve_device(device)
    server, clients, step = load_models(run_dir, cfg, dev)
    seed = cfg.seed if seed is None else seed
    samples, handovers = collaborative_sample(server, clients, cfg, n, seed, dev, cfg.sample.batch_size)
    K = len(clients)
    nrow = max(1, int(round(n**0.5)))
    for k in range(K):
        save_tensors(run_dir / "samples" / f"client-{k}.safetensors", {"x0": samples[k]}, {"step": str(step)})
        save_grid(run_dir / "samples" / f"grid-client-{k}.png", samples[k], nrow)
    show = min(n, 16)
    save_grid(run_dir / "samples" / "grid.png", samples[:, :show].reshape(-1, *samples.shape[2:]), show)
    if handovers is not None:
        client = torch.arange(K).repeat_interleave(n)
        save_tensors(
            run_dir / "server_view" / "handover" / "sample.safetensors",
            {"h": handovers.reshape(-1, *handovers.shape[2:]), "client": client},
            {"step": str(step), "level": str(cfg.t_c - 1)},
        )
        if cfg.t_c > 0:
            save_grid(run_dir / "samples" / "handover.png", handovers[:, :show].reshape(-1, *handovers.shape[2:]).clamp(-1, 1), show)
    return {"run_dir": str(run_dir), "n": n, "clients": K, "step": step, "t_c": cfg.t_c}
