"""The training session: everything a run's training needs, built once from its resolved config.

:class:`Session` holds the config, the Cut and the Protocol, the run directory, the clients'
secrets, the data and its splits; :meth:`Session.open` writes (or checks) the run's layout
before the first round (config, secrets, splits, the server's view meta and public images);
:meth:`Session.parties` builds the server, the clients, the view recorder and the transport.
The in-process trainer (``loop.py``), ``flower.prepare`` and the audit build it this way; the
Flower nodes, which each hold only their own part, build their party with the same builders
(``parties.py``: :func:`make_server`, :func:`make_client`; :func:`server_side`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from ..client_secrets import Secrets, read_secrets, write_secrets
from ..config import Config
from ..errors import UserError
from ..party import resolve_device
from ..protocol import Cut, Protocol, Transport, protocol_for
from ..resolve import Resolved, resolve
from ..resources import check_memory
from ..run.directory import RunDir, open_run
from ..run.layout import AUDIT_CANARIES, FLOWER_PLAN
from ..run.schemas import ViewMeta
from ..view import ViewRecorder, write_public
from .parties import Client, Server, build_client_model, build_server_model, make_client, make_server


@dataclass
class Parties:
    """The built parties of an in-process run, and the transport that joins them."""

    server: Server
    clients: list[Client]
    recorder: ViewRecorder
    transport: Transport


def server_side(cfg: Config, model, protocol: Protocol, run_dir: Path, device: torch.device,
                truth: bool = True) -> tuple[Server, ViewRecorder, Transport]:  # fmt: skip
    """The server around ``model``, its view recorder (``truth``: it may record ground truth,
    False for a networked server) and the transport that delivers to both."""
    server = make_server(cfg, model, protocol, device)
    rec = cfg.record
    # fedavg's rows are whole models: a shard per upload round; no image ids to keep as ground truth
    shard = min(rec.shard_size, cfg.data.clients) if protocol.aggregates else rec.shard_size
    recorder = ViewRecorder(run_dir, rec.max_items if rec.enabled else 0, shard, rec.dtype,
                            truth=truth and not protocol.aggregates)  # fmt: skip
    return server, recorder, Transport(server.receive, recorder.receive)


class Session:
    """One run's training set-up (pure until :meth:`open` writes the layout)."""

    def __init__(self, resolved: Resolved, run_dir, device: torch.device | str = "cpu", quiet: bool = True):
        self.resolved, self.cfg = resolved, resolved.cfg
        self.data, self.splits, self.secrets, self.cut_choice = (resolved.data, resolved.splits, resolved.secrets,
                                                                 resolved.cut_choice)  # fmt: skip
        self.run_dir, self.rd = Path(run_dir), RunDir(run_dir)
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        self.quiet = quiet
        self.cut = Cut.from_config(self.cfg)
        self.protocol = protocol_for(self.cfg, self.cut)
        self.resumed = False

    @classmethod
    def resolve(cls, cfg: Config, run_dir, secrets: Optional[Secrets] = None, device="cpu", quiet: bool = True):
        """Resolve ``cfg`` (bad input fails here, before the folder exists) for ``run_dir``."""
        return cls(resolve(cfg, Path(run_dir), secrets), run_dir, device, quiet)

    def client_secret(self, k: int) -> int:
        return self.secrets.client(k, self.cfg.seed)

    def members(self, k: int) -> torch.Tensor:
        """Client ``k``'s member ids (ground truth)."""
        return torch.tensor(self.splits.members[k], dtype=torch.long)

    def open(self) -> bool:
        """Create the run directory (or check it holds this run), write the secrets and splits
        (checked on a resume) and the server's view meta; returns True for a resumed run. The
        caller rewrites ``config.yaml`` of a resumed run (``train.steps`` may have grown)."""
        self.resumed = open_run(self.cfg, self.run_dir)
        if read_secrets(self.run_dir) is None:
            write_secrets(self.run_dir, self.secrets)
        self.splits = ensure_splits(self.rd, self.splits)
        write_view_meta(self.run_dir, self.cfg, self.cut, self.data, self.splits)
        return self.resumed

    def build_models(self) -> tuple[torch.nn.Module, list[torch.nn.Module]]:
        """The server's and the clients' UNets; a run that cannot fit in memory is refused
        after the first client's (before the others are built)."""
        cfg, data = self.cfg, self.data
        C, S = data.shape[0], cfg.data.image_size
        server = build_server_model(cfg, S, C, data.num_classes)
        clients = []
        for k in range(cfg.data.clients):
            clients.append(build_client_model(cfg, self.client_secret(k), S, C))
            if k == 0:
                check_memory(cfg, data.images.element_size() * data.images.numel(), server, clients[0],
                             tuple(data.shape))  # fmt: skip
        return server, clients

    def parties(self, server_model, client_models) -> Parties:
        """The parties around the built models (after :meth:`open`: the splits are the run's)."""
        server, recorder, transport = server_side(self.cfg, server_model, self.protocol, self.run_dir, self.device)
        clients = []
        for k, model in enumerate(client_models):
            ids = self.members(k)
            clients.append(make_client(self.cfg, k, model, self.data.images[ids], self.data.labels[ids], ids,
                                       self.client_secret(k), self.device))  # fmt: skip
        return Parties(server, clients, recorder, transport)

    def start(self) -> Parties:
        """An in-process run: its models (memory checked), its layout, its parties."""
        models = self.build_models()
        if (self.run_dir / FLOWER_PLAN).is_file() and self.rd.latest() is None:
            raise UserError(f"{self.run_dir} is a Flower run that has not finished (its parties' checkpoints are in "
                            "flower/): resume it with `collafuse-privacy flower run`")  # fmt: skip
        self.open()
        return self.parties(*models)


def refuse_audit_dir(run_dir) -> None:
    """``train --out`` an audit's folder: its twin trains with canaries, which `train` knows nothing of."""
    if (Path(run_dir) / AUDIT_CANARIES).is_file():
        raise UserError(f"--out {run_dir} holds an audit run (its clients' data hold canaries): choose another --out, "
                        "or rerun the `audit` command that made it")  # fmt: skip


def ensure_splits(rd: RunDir, splits):
    """The run's splits: written on the first start, checked against the data found on a resume."""
    if rd.splits_path.is_file():
        saved = rd.splits()
        if saved != splits:
            raise UserError(f"{rd.splits_path} does not match the data found now (was the dataset changed?)")
        return saved
    rd.write_splits(splits)
    return splits


def write_view_meta(run_dir: Path, cfg: Config, cut: Cut, data, splits) -> None:
    """What the server knows before the first message: ``server_view/meta.json`` and its public images."""
    rd = RunDir(run_dir)
    if not rd.public_path.is_file():
        pub = torch.tensor(splits.public, dtype=torch.long)
        write_public(run_dir, data.images[pub], data.labels[pub])
    rd.write_meta(ViewMeta(
        protocol=cfg.protocol.kind, cut_ratio=cfg.protocol.cut_ratio, fixed_noise=cfg.protocol.fixed_noise,
        t_c=cut.t_c, timesteps=cut.T, handover_level=cut.handover_level, abar_handover=cut.abar_handover,
        diffusion=cfg.diffusion, server_conditioning=cfg.model.server_conditioning, model_preset=cfg.model.preset,
        client_preset=cfg.model.client_preset, clients=cfg.data.clients, data_name=cfg.data.name,
        image_shape=list(data.shape), public_images=len(splits.public), server_lr=cfg.train.lr,
        server_lr_warmup=cfg.train.lr_warmup, server_grad_clip=cfg.train.grad_clip,
        sampling=cfg.client_sampling))  # fmt: skip
