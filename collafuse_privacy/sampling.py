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

import io
from pathlib import Path
from typing import Optional

import torch

from .client_secrets import read_secrets
from .config import Config
from .errors import UserError
from .io import atomic_write_bytes, load_tensors, save_tensors
from .models import load_unet
from .party import resolve_device
from .protocol import Cut, protocol_for
from .rng import generator
from .rundir import RunDir


@torch.no_grad()
def client_denoise(model, cut: Cut, h: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Run the client's steps ``t = t_c-1 .. 0`` from ``h``; returns ``x0`` in [-1, 1]."""
    sched = cut.scheduler()
    x = h
    for s in range(cut.t_c - 1, -1, -1):
        t = torch.full((x.shape[0],), s, device=x.device, dtype=torch.long)
        eps = model(x, t).sample
        x = sched.step(eps, s, x, generator=gen).prev_sample
    return x.clamp(-1, 1)


def _chunks(n: int, size: int):
    for a in range(0, n, size):
        yield a, min(n, a + size)


def collaborative_sample(server, clients: list, cfg: Config, n: int, seed: int, device, batch_size: int = 256,
                         client_secrets: Optional[list[int]] = None):  # fmt: skip
    """``n`` samples per client. Returns ``(samples [K, n, C, S, S], handover [K, n, ...] or None)``.

    The server draws ``x_{T-1}`` and runs its part (``Protocol.server_denoise``) down to the
    hand-over image from ``seed``; each client finishes with its own model (``client_denoise``)
    and its own randomness, from its secret and ``seed``.
    """
    proto = protocol_for(cfg)
    cut, K = proto.cut, len(clients)
    C, S = clients[0].config.in_channels, cfg.data.image_size
    server_gen = generator(seed, 11)
    handovers = None
    if not cut.sends_nothing:
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
                handovers[k, a:b] = proto.server_denoise(server, x, labels, server_gen).cpu()
    out = torch.empty(K, n, C, S, S)
    for k, model in enumerate(clients):
        gen = generator(client_secrets[k], 12, seed) if client_secrets is not None else generator(seed, 12, k)
        for a, b in _chunks(n, batch_size):
            h = handovers[k, a:b].to(device) if handovers is not None else torch.randn((b - a, C, S, S), generator=gen).to(device)
            out[k, a:b] = client_denoise(model, cut, h, gen).cpu() if not cut.sends_clean else h.clamp(-1, 1).cpu()
    return out, handovers


def load_models(run_dir: Path, cfg: Config, device, ema: bool = True):
    """Server and client models from the run's latest checkpoint (EMA weights by default)."""
    rd = RunDir(run_dir)
    latest = rd.require_latest()
    d = rd.ckpt_dir / latest.dir
    suffix = "_ema" if ema else ""
    shape = rd.meta().shape
    server = load_unet(cfg.model.preset, shape, load_tensors(d / f"server{suffix}.safetensors"), f"checkpoint {d}")
    clients = [load_unet(cfg.model.client_model_preset, shape, load_tensors(d / f"client-{k}{suffix}.safetensors"),
                         f"checkpoint {d}") for k in range(cfg.data.clients)]  # fmt: skip
    for m in [server] + clients:
        m.to(device).eval()
    return server, clients, latest.step


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
    cfg = RunDir(run_dir).config()
    n = n or cfg.sample.n
    dev = resolve_device(device)
    server, clients, step = load_models(run_dir, cfg, dev)
    seed = cfg.seed if seed is None else seed
    secrets = read_secrets(run_dir)
    if secrets is None:
        raise UserError(f"{run_dir} has no clients/secrets.json (a run made by an older version): retrain it")
    own = [secrets.client(k, cfg.seed) for k in range(len(clients))]
    samples, handovers = collaborative_sample(server, clients, cfg, n, seed, dev, cfg.sample.batch_size, own)
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
            {"step": str(step), "level": str(Cut.from_config(cfg).handover_level)},
        )
        if not Cut.from_config(cfg).sends_clean:
            save_grid(run_dir / "samples" / "handover.png", handovers[:, :show].reshape(-1, *handovers.shape[2:]).clamp(-1, 1), show)
    return {"run_dir": str(run_dir), "n": n, "clients": K, "step": step, "t_c": cfg.t_c}
