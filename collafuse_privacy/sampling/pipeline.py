"""``CollaFusePipeline``: a trained CollaFuse system as one diffusers pipeline (DESIGN.md §1, inference).

Components (diffusers' ``register_modules``): the shared ``server`` ``UNet2DModel``, one
``client_K`` ``UNet2DModel`` per client, and the ``scheduler`` the one sampler steps
(:class:`~.sampler.Sampler`); the cut and the sampler's settings are the pipeline's config.
It saves and loads with diffusers' conventions (``model_index.json``, one folder per
component, safetensors)::

    pipe = CollaFusePipeline.from_run("runs/demo")         # EMA weights of the latest checkpoint
    pipe.save_pretrained("demo-pipeline")                  # model_index.json, server/, client_0/, ..., scheduler/
    pipe = CollaFusePipeline.from_pretrained("demo-pipeline")
    out = pipe(n=16, seed=cfg.seed, client_secrets=run_client_secrets("runs/demo", cfg))  # = `collafuse-privacy sample`

One sampling loop (:meth:`Sampler.run`) in two parts split at ``t_c``: the server draws
``x_{T-1}`` and steps ``t = T-1 .. t_c`` down to the hand-over image ``h = x_{t_c-1}``
(:meth:`~CollaFusePipeline.server_part`); client ``k`` steps ``t = t_c-1 .. 0`` from ``h`` with
its own model (:meth:`~CollaFusePipeline.client_part`). ``__call__`` runs both for every batch;
Flower runs them in different processes (:meth:`~CollaFusePipeline.handovers` on the server,
:meth:`~CollaFusePipeline.finish` on a client) on the same random streams, hence the same bits:
the server's ``generator(seed, 11)`` (its ``x_{T-1}``, labels and step noise, client after
client, batch after batch) and client ``k``'s :func:`client_sample_generator` (its step noise;
at ``c = 1`` also its own ``x_{T-1}``). A client's secret never enters the pipeline's config.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
from diffusers import DDPMScheduler, DiffusionPipeline, UNet2DModel
from diffusers.utils import BaseOutput

from ..checkpoint import check_finite, verified_step_dir
from ..config import Config, DiffusionConfig, cut_timestep
from ..errors import UserError
from ..io import load_tensors
from ..models import load_unet
from ..party import resolve_device
from ..protocol import Cut, make_protocol
from ..rng import generator, randn
from ..run.directory import RunDir
from ..run.layout import SERVER, party_file
from .batched import StackedClients, batched_sampling
from .sampler import Sampler

SERVER_STREAM = 11  # generator(seed, SERVER_STREAM): the server's sampling randomness
CLIENT_STREAM = 12  # client k's: generator(secret, CLIENT_STREAM, seed)
_CLIENT = re.compile(r"client_(\d+)")
_LOADERS = {"server": UNet2DModel, "scheduler": DDPMScheduler}  # and UNet2DModel for every client_K
_LOAD_KWARGS = {UNet2DModel: {"low_cpu_mem_usage": False}}  # the weights as saved, without asking for accelerate


def server_sample_generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    """The server's sampling randomness: from ``seed`` (the server knows it), drawing on ``device``."""
    return generator(seed, SERVER_STREAM, device=device)


def client_sample_generator(seed: int, k: int, client_secret: Optional[int],
                            device: str | torch.device = "cpu") -> torch.Generator:  # fmt: skip
    """Client ``k``'s sampling randomness: from its secret and ``seed``, drawing on ``device``."""
    parts = (client_secret, CLIENT_STREAM, seed) if client_secret is not None else (seed, CLIENT_STREAM, k)
    return generator(*parts, device=device)


@torch.no_grad()
def client_denoise(model, sampler: Sampler, h: torch.Tensor, gen: torch.Generator, clamp: bool = True) -> torch.Tensor:
    """Run the client's steps ``t = t_c-1 .. 0`` of the one ``sampler`` from ``h``; returns ``x0``
    (clamped to [-1, 1] with ``clamp``)."""
    x = sampler.run(lambda x, t: model(x, t).sample, h, sampler.cut.t_c - 1, 0, gen)
    return x.clamp(-1, 1) if clamp else x


@dataclass
class CollaFusePipelineOutput(BaseOutput):
    """``images`` [K, n, C, H, W] in [-1, 1] (clamped); ``raw`` the same before the clamp;
    ``handovers`` [K, n, C, H, W] the hand-over images the server produced (None at c = 1)."""

    images: torch.Tensor
    raw: torch.Tensor
    handovers: Optional[torch.Tensor] = None


def _chunks(n: int, size: int):
    for a in range(0, n, size):
        yield a, min(n, a + size)


def _own_memory(component):
    """``component`` with every tensor copied into memory of its own. diffusers' loader leaves the
    weights at their offsets in the loaded file, and CPU kernels compute the last bits of a
    convolution differently on memory aligned otherwise (seen: 4e-7); copied, the model computes
    what the trained model computed, bit for bit."""
    if isinstance(component, torch.nn.Module):
        with torch.no_grad():
            for t in [*component.parameters(), *component.buffers()]:
                t.data = t.data.clone()
    return component


def load_models(run_dir: Path, cfg: Config, device, ema: bool = True):
    """Server and client models from the run's latest checkpoint (EMA weights by default)."""
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


class CollaFusePipeline(DiffusionPipeline):
    """The server model, the client models and the cut, sampling as one system.

    ``server`` may be None (a client's half alone) and ``clients`` empty (the server's half
    alone). Config: ``protocol_kind``, ``cut_ratio``, ``t_c`` (default ``round(cut_ratio T)``),
    ``diffusion`` (the schedule, :class:`~collafuse_privacy.config.DiffusionConfig`),
    ``server_conditioning`` (none | client | labels), ``clip`` (``sample.clip``), ``batch_size``
    (images per model call: part of the random streams' order) and ``step`` (the checkpoint).
    """

    _optional_components = ["server"]

    def __init__(self, server: Optional[UNet2DModel], scheduler: DDPMScheduler, clients: Sequence[UNet2DModel] = (),
                 *, protocol_kind: str = "cut-image", cut_ratio: float = 0.5, t_c: Optional[int] = None,
                 diffusion: Optional[dict] = None, server_conditioning: str = "none", clip: str = "none",
                 batch_size: int = 256, step: Optional[int] = None):  # fmt: skip
        super().__init__()
        self.register_modules(server=server, scheduler=scheduler, **{f"client_{k}": m for k, m in enumerate(clients)})
        dcfg = DiffusionConfig(**(diffusion or {}))
        t_c = cut_timestep(cut_ratio, dcfg.timesteps) if t_c is None else int(t_c)
        self.register_to_config(protocol_kind=protocol_kind, cut_ratio=float(cut_ratio), t_c=t_c, diffusion=asdict(dcfg),
                                server_conditioning=server_conditioning, clip=clip, batch_size=int(batch_size),
                                step=step)  # fmt: skip
        self.cut = Cut(dcfg, t_c, float(cut_ratio))
        self.protocol = make_protocol(protocol_kind, self.cut, conditioning=server_conditioning)
        self.sampler = Sampler(self.cut, clip, scheduler)

    # ---- construction ----------------------------------------------------------------------------
    @classmethod
    def from_parts(cls, cfg: Config, server, clients: Sequence, *, cut: Optional[Cut] = None,
                   batch_size: Optional[int] = None, step: Optional[int] = None) -> "CollaFusePipeline":  # fmt: skip
        """The pipeline of a run's config ``cfg`` with these models (at ``cut``, default the run's)."""
        cut = cut or Cut.from_config(cfg)
        return cls(server, Sampler.make_scheduler(cut), clients, protocol_kind=cfg.protocol.kind,
                   cut_ratio=cut.cut_ratio, t_c=cut.t_c, diffusion=asdict(cut.diffusion),
                   server_conditioning=cfg.model.server_conditioning, clip=cfg.sample.clip,
                   batch_size=batch_size or cfg.sample.batch_size, step=step)  # fmt: skip

    @classmethod
    def from_run(cls, run_dir: str | Path, ema: bool = True, device: str | torch.device = "cpu") -> "CollaFusePipeline":
        """A trained run's system: its latest checkpoint (EMA weights with ``ema``), on ``device``."""
        cfg = RunDir(run_dir).config()
        dev = resolve_device(device) if isinstance(device, str) else device
        server, clients, step = load_models(Path(run_dir), cfg, dev, ema)
        return cls.from_parts(cfg, server, clients, step=step)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike) -> "CollaFusePipeline":
        """Load what :meth:`save_pretrained` wrote: every component ``model_index.json`` names, each
        from its folder with its diffusers class, and the settings. (diffusers' own loader builds a
        pipeline from its ``__init__``'s parameters; this one has a component per client.)"""
        path = Path(pretrained_model_name_or_path)
        if not (path / cls.config_name).is_file():
            raise UserError(f"{path} holds no {cls.config_name}: not a saved pipeline (save_pretrained writes one)")
        index = json.loads((path / cls.config_name).read_text())
        if index.get("_class_name") != cls.__name__:
            raise UserError(f"{path / cls.config_name} is a {index.get('_class_name')}, not a {cls.__name__}")
        parts = {}
        for name, spec in index.items():
            loader = _LOADERS.get(name, UNet2DModel if _CLIENT.fullmatch(name) else None)
            if loader is None or spec[0] is None:
                continue
            if list(spec) != ["diffusers", loader.__name__]:
                raise UserError(f"{path / cls.config_name}: component {name!r} is {spec}, expected a diffusers {loader.__name__}")
            parts[name] = _own_memory(loader.from_pretrained(path / name, **_LOAD_KWARGS.get(loader, {})))
        names = {n for n in parts if _CLIENT.fullmatch(n)}
        if "scheduler" not in parts or names != {f"client_{k}" for k in range(len(names))}:
            raise UserError(f"{path / cls.config_name}: no scheduler, or clients not numbered 0..K-1")
        clients = [parts[f"client_{k}"] for k in range(len(names))]
        _, settings = cls._get_signature_keys(cls)
        return cls(parts.get("server"), parts["scheduler"], clients, **{k: index[k] for k in settings if k in index})

    @classmethod
    def _get_signature_keys(cls, obj):
        """diffusers' components (``__init__``'s parameters without a default) plus ``client_K``, one
        per client of this instance; diffusers' ``save_pretrained``, ``components``, ``to`` ask it."""
        expected, optional = super()._get_signature_keys(obj)
        config = {} if isinstance(obj, type) else getattr(obj, "_internal_dict", {})
        return sorted(set(expected) | {n for n in config if _CLIENT.fullmatch(n)}), [p for p in optional if p != "clients"]

    # ---- what the pipeline holds -----------------------------------------------------------------
    @property
    def clients(self) -> list[UNet2DModel]:
        """The client models, ``client_0 .. client_{K-1}``."""
        return [getattr(self, f"client_{k}") for k in range(sum(1 for n in self.config if _CLIENT.fullmatch(n)))]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of the images, from the models."""
        unet = (self.clients or [self.server])[0]
        return (unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)

    # ---- the one loop, in its two parts ----------------------------------------------------------
    def server_steps(self, x: torch.Tensor, gen: torch.Generator, labels=None) -> torch.Tensor:
        """The server's steps ``t = T-1 .. t_c`` from ``x = x_{T-1}``: the hand-over image ``h = x_{t_c-1}``."""
        return self.protocol.server_denoise(self.server, x, labels, gen, self.sampler)

    def client_steps(self, k: int, h: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Client ``k``'s steps ``t = t_c-1 .. 0`` from ``h``: its ``x0`` before the final clamp."""
        return client_denoise(self.clients[k], self.sampler, h, gen, clamp=False)

    def server_part(self, k: int, m: int, gen: torch.Generator) -> Optional[torch.Tensor]:
        """The server's half for ``m`` images of client ``k``: ``x_{T-1}`` (and labels) drawn from
        ``gen``, then its steps. ``h`` [m, C, H, W] on the pipeline's device; None at c = 1."""
        if self.cut.sends_nothing:
            return None
        x = randn((m, *self.image_shape), gen).to(self.device)
        labels = self.protocol.conditioning.sample_labels(k, m, self.server.config.num_class_embeds, gen, self.device)
        return self.server_steps(x, gen, labels)

    def client_part(self, k: int, h: Optional[torch.Tensor], m: int, gen: torch.Generator) -> torch.Tensor:
        """Client ``k``'s half for ``m`` images from their hand-over images ``h`` (None, c = 1: from
        its own ``x_{T-1}`` drawn from ``gen``); at c = 0 ``h`` is already the image."""
        x = h.to(self.device) if h is not None else randn((m, *self.image_shape), gen).to(self.device)
        return x if self.cut.sends_clean else self.client_steps(k, x, gen)

    def clients_part(self, stacked: StackedClients, h: Optional[torch.Tensor], m: int,
                     gens: Sequence[torch.Generator]) -> torch.Tensor:  # fmt: skip
        """:meth:`client_part` of every client at once: ``h`` [K, m, ...] (None at c = 1), client
        ``k``'s draws from ``gens[k]`` in the order it makes them alone; returns [K, m, ...]."""
        if h is not None:
            x = h.to(self.device)
        else:
            x = torch.stack([randn((m, *self.image_shape), g).to(self.device) for g in gens])
        if self.cut.sends_clean:
            return x
        return self.sampler.run(stacked.predict, x, self.cut.t_c - 1, 0, gens)

    @torch.no_grad()
    def __call__(self, n: int, seed: int, client_secrets: Optional[Sequence[int]] = None,
                 batched_clients: Optional[bool] = None) -> CollaFusePipelineOutput:  # fmt: skip
        """``n`` samples per client from ``seed``, each client's randomness from its secret
        (``client_secrets[k]``; without: from ``seed`` and ``k``). Batch by batch: the server's
        steps, the hand-over, the client's steps. ``batched_clients`` (null: on CUDA only): the
        clients' steps of a batch together (``batched.py``), the same draws, equal within float
        tolerance."""
        K = len(self.clients)
        secrets = list(client_secrets) if client_secrets is not None else [None] * K
        if len(secrets) != K:
            raise UserError(f"{len(secrets)} client secrets for {K} clients")
        gens = [client_sample_generator(seed, k, secrets[k], self.device) for k in range(K)]
        raw = torch.empty(K, n, *self.image_shape)
        if batched_sampling(batched_clients, self.device, self.clients):
            # the server's half first (:meth:`handovers`: the same stream, in the loop's order of its draws)
            handovers = self.handovers(n, seed, K)
            stacked = StackedClients(self.clients)
            for a, b in _chunks(n, self.config.batch_size):
                h = handovers[:, a:b] if handovers is not None else None
                raw[:, a:b] = self.clients_part(stacked, h, b - a, gens).cpu()
        else:
            server_gen = server_sample_generator(seed, self.device)
            handovers = None if self.cut.sends_nothing else torch.empty(K, n, *self.image_shape)
            for k in range(K):
                for a, b in _chunks(n, self.config.batch_size):
                    h = self.server_part(k, b - a, server_gen)  # x_{T-1} -> h = x_{t_c-1}
                    if h is not None:
                        handovers[k, a:b] = h.cpu()  # what crosses the cut
                    raw[k, a:b] = self.client_part(k, h, b - a, gens[k]).cpu()  # h -> x0
        return CollaFusePipelineOutput(images=raw.clamp(-1, 1), raw=raw, handovers=handovers)

    # ---- the halves alone (Flower: the server and each client in its own process) ----------------
    @torch.no_grad()
    def handovers(self, n: int, seed: int, clients: int) -> Optional[torch.Tensor]:
        """The server's half alone: the hand-over images ``[clients, n, C, H, W]`` (CPU) that
        ``__call__`` hands over from ``seed``; None at c = 1."""
        if self.cut.sends_nothing:
            return None
        gen = server_sample_generator(seed, self.device)
        out = torch.empty(clients, n, *self.image_shape)
        for k in range(clients):
            for a, b in _chunks(n, self.config.batch_size):
                out[k, a:b] = self.server_part(k, b - a, gen).cpu()
        return out

    @torch.no_grad()
    def finish(self, k: int, handover: Optional[torch.Tensor], n: int, gen: torch.Generator) -> torch.Tensor:
        """Client ``k``'s half alone: its ``n`` outputs ``[n, C, H, W]`` (CPU, before the final clamp)
        from the hand-over images ``handover`` [n, ...] it was sent (None at c = 1), ``gen`` its stream."""
        out = torch.empty(n, *self.image_shape)
        for a, b in _chunks(n, self.config.batch_size):
            out[a:b] = self.client_part(k, handover[a:b] if handover is not None else None, b - a, gen).cpu()
        return out
