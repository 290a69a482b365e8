"""Collaborative sampling (DESIGN.md §1, inference; §5, one sampler).

The server draws ``x_{T-1} ~ N(0, I)`` and runs its steps ``t = T-1 .. t_c`` down
to the hand-over image ``h = x_{t_c-1}``, which it sends to the client; the
client runs ``t = t_c-1 .. 0`` with its own model. Both step the one full-chain
sampler (:class:`collafuse_privacy.sampler.Sampler`: one variance type, one clipping
rule); the cut-image server's tail prediction is mapped to the full chain's
parameterisation, so the composed chain is the full chain at any cut. With ``c = 1``
the client draws its own noise and nothing crosses; with ``c = 0`` the server's
output is the final image.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from .lock import locks_run
from .client_secrets import read_secrets
from .config import Config
from .errors import UserError
from .io import atomic_write_bytes, check_writable, load_tensors, save_tensors
from .models import load_unet
from .party import resolve_device
from .protocol import Cut, protocol_for
from .rng import generator
from .run.codec import read_json, write_json
from .run.directory import RunDir
from .run.layout import (HANDOVER, HANDOVER_GRID, SAMPLES_GRID, SAMPLES_MANIFEST, SERVER, party_file, samples_client,
                         samples_file, samples_grid)
from .sampler import Sampler


@torch.no_grad()
def client_denoise(model, sampler: Sampler, h: torch.Tensor, gen: torch.Generator, clamp: bool = True) -> torch.Tensor:
    """Run the client's steps ``t = t_c-1 .. 0`` of the one ``sampler`` from ``h``; returns ``x0``
    (clamped to [-1, 1] with ``clamp``)."""
    x = sampler.run(lambda x, t: model(x, t).sample, h, sampler.cut.t_c - 1, 0, gen)
    return x.clamp(-1, 1) if clamp else x


@dataclass(frozen=True)
class SampleStats:
    """What the images looked like before the final clamp to [-1, 1] (a model that diverged
    hides behind it): per client the largest ``|x|``, the share of pixels outside [-1, 1] and the
    share beyond ``tolerance`` (what the last step's noise explains, :func:`overshoot_tolerance`),
    non-finite values anywhere, and the hand-over images' largest ``|h|`` and the share of their
    pixels beyond the range a hand-over image takes (``Cut.handover_range``, a 4-sigma excursion).
    Shares, not maxima, decide: an unclipped chain leaves a few stray pixels, a diverged one many."""

    max_abs: list[float]
    outside: list[float]
    non_finite: int
    handover_max_abs: Optional[float] = None
    handover_range: Optional[float] = None
    tolerance: Optional[float] = None
    beyond: Optional[list[float]] = None
    handover_beyond: Optional[float] = None  # share of hand-over pixels beyond handover_range

    def problem(self) -> Optional[str]:
        """Why these samples must not be scored, or None. A good chain overshoots [-1, 1] a little
        where the data sit at its edge (MNIST's background is -1); that is not refused."""
        if self.non_finite:
            return f"the samples hold {self.non_finite} non-finite values (NaN or inf): the models diverged"
        worst = max(self.max_abs) if self.max_abs else 0.0
        if self.beyond is not None:
            if self.beyond and max(self.beyond) > MAX_BEYOND_SHARE:
                return (f"{max(self.beyond):.1%} of the pixels lie beyond +-{self.tolerance:.3g} before the final clamp "
                        f"(max |x| = {worst:.3g}), more than the last step's noise explains: the models diverged "
                        "(a weakly trained model at small T: train longer, or sample with sample.clip=x0)")  # fmt: skip
        elif worst > 1.0 + 1e-4 and max(self.outside) > 0.01:  # a manifest written before the tolerance existed
            return (f"{max(self.outside):.1%} of the pixels leave [-1, 1] before the final clamp (max |x| = {worst:.3g}): "
                    "a metric of clamped pixels would describe the clamp, not the model")  # fmt: skip
        if self.handover_beyond is not None:
            if self.handover_beyond > MAX_BEYOND_SHARE:
                return (f"{self.handover_beyond:.1%} of the server's hand-over pixels lie beyond +-{self.handover_range:.3g}, "
                        f"the 4-sigma range a hand-over image takes (max |h| = {self.handover_max_abs:.3g}): the server's "
                        "model diverged (a weakly trained model at small T: train longer, or sample with sample.clip=x0)")  # fmt: skip
        elif self.handover_max_abs is not None and self.handover_max_abs > 2 * self.handover_range:  # an older manifest
            return (f"the server's hand-over images reach |h| = {self.handover_max_abs:.3g}, far outside the range a "
                    f"hand-over image takes (about {self.handover_range:.3g}): the server's model diverged "
                    "(a weakly trained model at small T: train longer, or sample with sample.clip=x0)")
        return None


# Samples are refused when more than this share of their pixels lie beyond the tolerance.
MAX_BEYOND_SHARE = 0.01


def overshoot_tolerance(cut: Cut) -> float:
    """``1 + 4 sqrt((1 - abar[0]) / abar[0])``: the last step (``t = 0``) maps ``x_0`` to ``x0_hat``
    by removing noise of standard deviation ``sqrt((1 - abar[0]) / abar[0])`` in ``x0``'s units;
    a pixel beyond a 4-sigma excursion of that noise outside [-1, 1] is not explained by it."""
    a0 = float(cut.abar[0])
    return 1.0 + 4.0 * ((1.0 - a0) / a0) ** 0.5


@dataclass(frozen=True)
class SamplesManifest:
    """``samples/manifest.json``, written last by ``sample``: which samples belong together
    (sha256 of every file of the unit, the hand-over images included) and their stats. Missing
    or not matching: the samples were cut off by an interruption."""

    step: int
    n: int
    seed: int
    files: dict[str, str]
    stats: SampleStats
    schema: int = 1


def read_samples(run_dir: str | Path) -> tuple[dict[int, torch.Tensor], SamplesManifest]:
    """The clients' samples ``{k: [n, C, H, W]}`` of the last complete ``sample``, checked."""
    from .checkpoint import sha256

    run_dir = Path(run_dir)
    mpath = run_dir / SAMPLES_MANIFEST
    if not mpath.is_file():
        raise UserError(f"{run_dir} has no complete samples (samples/manifest.json is missing: never sampled, "
                        "or a `sample` was interrupted): run `collafuse-privacy sample`")  # fmt: skip
    manifest = read_json(mpath, SamplesManifest)
    for rel, digest in manifest.files.items():
        f = run_dir / rel
        if not f.is_file() or sha256(f) != digest:
            raise UserError(f"{f} does not belong to the last complete sample (an interrupted `sample`?): rerun sample")
    out = {samples_client(rel): load_tensors(run_dir / rel)["x0"]
           for rel in manifest.files if samples_client(rel) is not None}  # fmt: skip
    return out, manifest


def _chunks(n: int, size: int):
    for a in range(0, n, size):
        yield a, min(n, a + size)


def server_handovers(server, cfg: Config, clients: int, n: int, seed: int, device, batch_size: int = 256,
                     shape=None) -> Optional[torch.Tensor]:  # fmt: skip
    """The server's part of sampling: ``n`` hand-over images per client ``[K, n, C, S, S]``
    (None where nothing crosses, c = 1), from ``x_{T-1}`` drawn from ``seed``."""
    proto = protocol_for(cfg)
    if proto.cut.sends_nothing:
        return None
    sampler = Sampler.from_config(cfg, proto.cut)
    C, S = shape[0], shape[-1]
    server_gen = generator(seed, 11)
    handovers = torch.empty(clients, n, C, S, S)
    for k in range(clients):
        for a, b in _chunks(n, batch_size):
            x = torch.randn((b - a, C, S, S), generator=server_gen).to(device)
            labels = None
            if cfg.model.server_conditioning == "client":
                labels = torch.full((b - a,), k, dtype=torch.long, device=device)
            elif cfg.model.server_conditioning == "labels":
                n_cls = server.config.num_class_embeds
                labels = torch.randint(0, n_cls, (b - a,), generator=server_gen).to(device)
            handovers[k, a:b] = proto.server_denoise(server, x, labels, server_gen, sampler).cpu()
    return handovers


def client_finish(model, cfg: Config, handover: Optional[torch.Tensor], n: int, gen: torch.Generator, device,
                  batch_size: int = 256, shape=None) -> torch.Tensor:  # fmt: skip
    """A client's part of sampling: its ``n`` outputs ``[n, C, S, S]`` before the final clamp, from the
    hand-over images ``handover`` [n, ...] it was sent (None, c = 1: from its own noise, ``gen``)."""
    sampler = Sampler.from_config(cfg)
    cut = sampler.cut
    C, S = shape[0], shape[-1]
    out = torch.empty(n, C, S, S)
    for a, b in _chunks(n, batch_size):
        h = handover[a:b].to(device) if handover is not None else torch.randn((b - a, C, S, S), generator=gen).to(device)
        out[a:b] = client_denoise(model, sampler, h, gen, clamp=False).cpu() if not cut.sends_clean else h.cpu()
    return out


def client_sample_generator(seed: int, k: int, client_secret: Optional[int]) -> torch.Generator:
    """Client ``k``'s sampling randomness: from its secret and ``seed``."""
    return generator(client_secret, 12, seed) if client_secret is not None else generator(seed, 12, k)


def collaborative_sample(server, clients: list, cfg: Config, n: int, seed: int, device, batch_size: int = 256,
                         client_secrets: Optional[list[int]] = None):  # fmt: skip
    """``n`` samples per client. Returns ``(samples [K, n, C, S, S], handover [K, n, ...] or None)``.

    The server draws ``x_{T-1}`` and runs its part (``Protocol.server_denoise``) down to the
    hand-over image from ``seed``; each client finishes with its own model (``client_denoise``)
    and its own randomness, from its secret and ``seed``.
    """
    K = len(clients)
    shape = (clients[0].config.in_channels, cfg.data.image_size, cfg.data.image_size)
    handovers = server_handovers(server, cfg, K, n, seed, device, batch_size, shape)
    out = torch.empty(K, n, *shape)
    for k, model in enumerate(clients):
        gen = client_sample_generator(seed, k, client_secrets[k] if client_secrets is not None else None)
        out[k] = client_finish(model, cfg, handovers[k] if handovers is not None else None, n, gen, device,
                               batch_size, shape)  # fmt: skip
    return out, handovers


def sample_stats(raw: torch.Tensor, handovers: Optional[torch.Tensor], cut: Cut) -> SampleStats:
    """:class:`SampleStats` of samples ``[K, n, ...]`` before their final clamp."""
    flat = raw.flatten(1).double()
    finite = torch.isfinite(flat)
    non_finite = int((~finite).sum()) + (int((~torch.isfinite(handovers)).sum()) if handovers is not None else 0)
    a = torch.where(finite, flat.abs(), torch.zeros_like(flat))
    tol = overshoot_tolerance(cut)
    return SampleStats(max_abs=[float(v) for v in a.amax(1)], outside=[float(v) for v in (a > 1).double().mean(1)],
                       non_finite=non_finite,
                       handover_max_abs=float(torch.nan_to_num(handovers.abs(), nan=0.0, posinf=0.0).max())
                       if handovers is not None else None,
                       handover_range=cut.handover_range if handovers is not None else None,
                       handover_beyond=float((torch.nan_to_num(handovers.abs(), nan=0.0, posinf=0.0) > cut.handover_range)
                                             .double().mean()) if handovers is not None else None,
                       tolerance=tol, beyond=[float(v) for v in (a > tol).double().mean(1)])  # fmt: skip


def load_models(run_dir: Path, cfg: Config, device, ema: bool = True):
    """Server and client models from the run's latest checkpoint (EMA weights by default)."""
    from .checkpoint import check_finite, verified_step_dir

    rd = RunDir(run_dir)
    names = [party_file(SERVER, ema)] + [party_file(k, ema) for k in range(cfg.data.clients)]
    d, _ = verified_step_dir(rd, names)
    shape = rd.meta().shape
    weights = [load_tensors(d / n) for n in names]
    for n, w in zip(names, weights):
        check_finite(w, d / n)
    server = load_unet(cfg.model.preset, shape, weights[0], f"checkpoint {d}")
    clients = [load_unet(cfg.model.client_model_preset, shape, w, f"checkpoint {d}") for w in weights[1:]]
    for m in [server] + clients:
        m.to(device).eval()
    return server, clients, int(d.name.split("-")[-1])


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


@locks_run
def sample_run(run_dir: str | Path, n: Optional[int] = None, device: str = "auto", seed: Optional[int] = None) -> dict:
    """Collaborative samples for every client of a trained run.

    Writes ``samples/client-K.safetensors`` and ``samples/grid-client-K.png`` (client
    outputs, client-side), ``samples/grid.png`` (a row band per client) and records
    the hand-over images the server produced in ``server_view/handover/``.
    """
    run_dir = Path(run_dir)
    cfg = RunDir(run_dir).config()
    n = n or cfg.sample.n
    from .resources import check_sample_memory

    check_sample_memory(cfg, n, RunDir(run_dir).meta().shape)  # before anything is allocated or written
    dev = resolve_device(device)
    server, clients, step = load_models(run_dir, cfg, dev)
    seed = cfg.seed if seed is None else seed
    secrets = read_secrets(run_dir)
    if secrets is None:
        raise UserError(f"{run_dir} has no clients/secrets.json (a run made by an older version): retrain it")
    own = [secrets.client(k, cfg.seed) for k in range(len(clients))]
    rd = RunDir(run_dir)
    for folder in (rd.samples_dir, rd.handover_dir):  # nothing is computed for a folder we cannot write
        folder.mkdir(parents=True, exist_ok=True)
        check_writable(folder)
    raw, handovers = collaborative_sample(server, clients, cfg, n, seed, dev, cfg.sample.batch_size, own)
    return write_samples(run_dir, cfg, raw, handovers, step, n, seed)


def write_handovers(run_dir, handovers: torch.Tensor, step: int, cut: Cut) -> None:
    """The hand-over images the server produced ``[K, n, ...]`` into its view, with the client each went to."""
    K, n = handovers.shape[:2]
    save_tensors(RunDir(run_dir).handover_path,
                 {"h": handovers.reshape(-1, *handovers.shape[2:]), "client": torch.arange(K).repeat_interleave(n)},
                 {"step": str(step), "level": str(cut.handover_level)})  # fmt: skip


def write_samples(run_dir: Path, cfg: Config, raw: torch.Tensor, handovers: Optional[torch.Tensor], step: int, n: int,
                  seed: int) -> dict:  # fmt: skip
    """Write one complete sample: the clients' outputs ``raw`` [K, n, ...] (before the clamp), the
    server's hand-over images, grids, and ``samples/manifest.json`` last."""
    rd = RunDir(run_dir)
    cut = Cut.from_config(cfg)
    stats = sample_stats(raw, handovers, cut)
    samples = raw.clamp(-1, 1)
    # One unit: the manifest goes first and comes back last, naming every file of this sample.
    (run_dir / SAMPLES_MANIFEST).unlink(missing_ok=True)
    K = raw.shape[0]
    nrow = max(1, int(round(n**0.5)))
    files = []
    for k in range(K):
        save_tensors(run_dir / samples_file(k), {"x0": samples[k]}, {"step": str(step)})
        files.append(samples_file(k))
        save_grid(run_dir / samples_grid(k), samples[k], nrow)
    show = min(n, 16)
    save_grid(run_dir / SAMPLES_GRID, samples[:, :show].reshape(-1, *samples.shape[2:]), show)
    if handovers is not None:
        write_handovers(run_dir, handovers, step, cut)
        files.append(HANDOVER)
        if not cut.sends_clean:
            save_grid(run_dir / HANDOVER_GRID, handovers[:, :show].reshape(-1, *handovers.shape[2:]).clamp(-1, 1), show)
    else:
        rd.handover_path.unlink(missing_ok=True)
    from .checkpoint import sha256

    write_json(run_dir / SAMPLES_MANIFEST,
               SamplesManifest(step=step, n=n, seed=seed, files={f: sha256(run_dir / f) for f in files}, stats=stats))
    return {"run_dir": str(run_dir), "n": n, "clients": K, "step": step, "t_c": cfg.t_c, "problem": stats.problem()}
