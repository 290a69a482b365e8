"""A Flower run's set-up: what every party may know (``flower/plan.json``), each client's folder,
and ``prepare``, the organiser's step before the first message.

Layout inside the run directory (localhost; on real machines each ``flower/client-K`` lives on
its client's disk)::

    flower/plan.json              what every party may know: clients, image shape, classes,
                                  rounds per message, the run's id
    flower/server/                the server's own checkpoints and training log
    flower/client-K/              client K's: data.safetensors (its member images, labels, ids),
                                  secret.json, assignment.json (what its data must hash to),
                                  checkpoints/, sent/ (ids of the rows it sent: ground truth,
                                  never sent), train.jsonl, samples.safetensors
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..checkpoint import sha256
from ..config import Config
from ..errors import UserError
from ..protocol import PROTOCOLS
from ..io import save_tensors
from ..run.codec import read_json, write_json
from ..run.directory import RunDir
from ..run.layout import (FLOWER_PLAN, PARTY_ASSIGNMENT, PARTY_DATA, PARTY_SECRET, PLAN, SERVER, client_name,
                          party_dir)
from ..training import Session

PLAN_SCHEMA = 1


@dataclass(frozen=True)
class Plan:
    """``flower/plan.json``: what every party of a Flower run may know."""

    run: str  # the run's id (sha256 of its config.yaml): a client folder of another run is refused
    clients: int
    image_shape: list[int]
    num_classes: int
    rounds_per_message: int
    schema: int = PLAN_SCHEMA


@dataclass(frozen=True)
class Assignment:
    """``flower/client-K/assignment.json``: which client a folder is, and what its data hash to."""

    run: str
    client: int
    members: int
    data_sha256: str
    schema: int = 1


@dataclass(frozen=True)
class ClientSecret:
    """``flower/client-K/secret.json``: the client's own secret (``client_secrets.Secrets.client``)."""

    secret: int
    schema: int = 1


def read_plan(run_dir) -> Plan:
    path = Path(run_dir) / FLOWER_PLAN
    if not path.is_file():
        raise UserError(f"{run_dir} is not prepared for Flower ({path} is missing): run `collafuse-privacy flower "
                        "prepare` (or `collafuse-privacy flower run`) first")  # fmt: skip
    return read_json(path, Plan)


def run_id(run_dir) -> str:
    return hashlib.sha256(RunDir(run_dir).config_path.read_bytes()).hexdigest()[:16]


def chunk_end(start: int, plan: Plan, cfg: Config) -> int:
    """Last round (exclusive) of the message that starts at ``start``: ``rounds_per_message``
    rounds, never past a checkpoint round (every checkpoint is a message boundary). fedavg: one
    upload period, up to the next upload (every ``train.local_steps`` rounds and the last)."""
    every, total = cfg.train.checkpoint_every, cfg.train.steps
    if PROTOCOLS.get(cfg.protocol.kind).aggregates:
        return min((start // cfg.train.local_steps + 1) * cfg.train.local_steps, total)
    next_ckpt = (start // every + 1) * every
    return min(start + plan.rounds_per_message, next_ckpt, total)


def prepare(cfg: Config, run_dir, secrets=None, rounds_per_message: Optional[int] = None) -> Plan:
    """Set up ``run_dir`` for a Flower run of ``cfg`` (or check that it holds this run): the same
    run layout as an in-process ``train`` (``Session.open``: config, secrets, splits, the server's
    view meta and public images), plus each client's folder with its data and secret, and
    ``flower/plan.json``."""
    run_dir = Path(run_dir)
    session = Session.resolve(cfg, run_dir, secrets)
    cfg = session.cfg
    if session.protocol.aggregates:
        _check_fedavg(cfg, rounds_per_message)
    if rounds_per_message is not None and rounds_per_message < 1:
        raise UserError(f"--rounds-per-message={rounds_per_message}: must be at least 1")
    rd = RunDir(run_dir)
    if rd.latest() is not None and not (Path(run_dir) / FLOWER_PLAN).is_file():
        raise UserError(f"{run_dir} holds an in-process run (trained with `train`); resume it with `train`, or choose "
                        "another --out for a Flower run")  # fmt: skip
    if session.open():
        rd.write_config(cfg)  # train.steps may have grown
    old = Path(run_dir) / FLOWER_PLAN
    if old.is_file():  # a resumed run keeps its id (config.yaml changes when train.steps grows)
        prev = read_json(old, Plan)
        rid, rpm = prev.run, rounds_per_message or prev.rounds_per_message
    else:
        rid, rpm = run_id(run_dir), rounds_per_message or cfg.train.checkpoint_every
    if session.protocol.aggregates:
        rpm = cfg.train.local_steps  # a message is one upload period
    plan = Plan(run=rid, clients=cfg.data.clients, image_shape=list(session.data.shape),
                num_classes=session.data.num_classes, rounds_per_message=rpm)  # fmt: skip
    for k in range(cfg.data.clients):
        _client_folder(session, k, plan)
    party_dir(run_dir, SERVER).mkdir(parents=True, exist_ok=True)
    write_json(old, plan)
    return plan


def _check_fedavg(cfg: Config, rounds_per_message: Optional[int]) -> None:
    """A fedavg run over Flower: a message is one upload period (Flower's FedAvg round), and every
    checkpoint falls at the end of one (where the server and every client save)."""
    L = cfg.train.local_steps
    if rounds_per_message is not None and rounds_per_message != L:
        raise UserError(f"--rounds-per-message={rounds_per_message}: under protocol.kind=fedavg a message is one upload "
                        f"period, train.local_steps={L} rounds; leave it out")  # fmt: skip
    if cfg.train.checkpoint_every % L:
        raise UserError(f"protocol.kind=fedavg over Flower needs train.checkpoint_every ({cfg.train.checkpoint_every}) "
                        f"to be a multiple of train.local_steps ({L}): every checkpoint must end an upload period")  # fmt: skip


def _client_folder(session: Session, k: int, plan: Plan) -> None:
    """Client ``k``'s folder: its data, secret, assignment, and the run's config and plan."""
    folder = party_dir(session.run_dir, client_name(k))
    folder.mkdir(parents=True, exist_ok=True)
    data_path = folder / PARTY_DATA
    ids, data = session.members(k), session.data
    if not data_path.is_file():
        save_tensors(data_path, {"images": data.images[ids].float().contiguous(), "labels": data.labels[ids].long(),
                                 "ids": ids})  # fmt: skip
    write_json(folder / PARTY_SECRET, ClientSecret(session.client_secret(k)))
    write_json(folder / PARTY_ASSIGNMENT, Assignment(run=plan.run, client=k, members=len(ids),
                                                      data_sha256=sha256(data_path)))  # fmt: skip
    write_json(folder / PLAN, plan)  # what the client needs on a machine of its own
    RunDir(folder).write_config(session.cfg)
