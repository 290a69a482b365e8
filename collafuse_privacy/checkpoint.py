"""Checkpoints: every party's weights and EMA weights (safetensors) and the training state
(``state.pt``, loaded with ``weights_only=True``) in ``checkpoints/step-N/``, with a
``manifest.json`` holding the sha256 of each file; written to a temporary folder and
renamed, then named in ``checkpoints/latest.json``.

On load every file is checked against its manifest and every weight for finiteness: a
checkpoint damaged in place (same size, other bytes) is refused with the previous intact
one offered; with ``latest.json`` missing, the newest intact step folder is used, and the
caller says so. A resumed run restores every generator, batcher and counter, so it is
bit-identical to an uninterrupted one on the CPU.

``state.pt`` is typed here (:class:`TrainingState`): the only module that knows its keys. Its
three layouts are a whole run's (in-process, or a collected Flower run), a Flower server's own
and a Flower client's own; ``to_dict`` writes and ``from_dict`` reads exactly those dicts.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import torch

from .errors import UserError
from .io import load_state, load_tensors, save_state, save_tensors
from .run.codec import read_json, write_json
from .run.directory import RunDir
from .run.layout import (MANIFEST, PARTIAL_STEP_GLOB, SERVER, STATE, client_index, client_name, is_step_name,
                         partial_step_name, party_file, step_name)
from .run.schemas import LatestCheckpoint

if TYPE_CHECKING:  # a party is duck-typed here (model, ema_state_dict, state_dict, load)
    from .party import Party


@dataclass(frozen=True)
class Manifest:
    """``checkpoints/step-N/manifest.json``: the round and the sha256 of every file."""

    step: int
    files: dict[str, str]
    schema: int = 1


@dataclass
class ServerState:
    """The server's randomness and counters besides its model: its generator's state, the view
    recorder's ``state_dict`` and the transport's ``{"messages", "bytes"}``; under fedavg,
    ``global_unsent``: the server's (global) model is an average the clients have not received
    yet (it goes to them at the start of the next round; None: not fedavg, or a checkpoint from
    before the flag)."""

    gen: torch.Tensor
    recorder: dict
    transport: dict
    global_unsent: Optional[bool] = None

    def to_dict(self) -> dict:
        out = {"server_gen": self.gen, "recorder": self.recorder, "transport": self.transport}
        if self.global_unsent is not None:
            out["global_unsent"] = self.global_unsent
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "ServerState":
        return cls(gen=d["server_gen"], recorder=d["recorder"], transport=d["transport"],
                   global_unsent=d.get("global_unsent"))  # fmt: skip


@dataclass
class ClientState:
    """One client's randomness and release counts besides its model (``release_counts`` None: a
    checkpoint from before counting)."""

    gen: torch.Tensor  # its t and eps draws
    order: torch.Tensor  # the order of its message rows
    batcher: dict
    release_counts: Optional[torch.Tensor] = None  # [n] times each member image crossed the cut

    def to_dict(self) -> dict:
        return {"gen": self.gen, "order": self.order, "batcher": self.batcher, "release_counts": self.release_counts}

    @classmethod
    def from_dict(cls, d: dict) -> "ClientState":
        return cls(gen=d["gen"], order=d["order"], batcher=d["batcher"], release_counts=d.get("release_counts"))


@dataclass
class TrainingState:
    """``state.pt``: the round, every party's optimiser state (``Party.state_dict``, with ``dp``
    for a DP-SGD client) and the randomness that makes a resume bit-identical.

    ``server`` and ``clients`` both set: a whole run's; only ``server``: a Flower server's own;
    one client and ``client`` its id: a Flower client's own."""

    step: int
    parties: dict[str, dict] = field(default_factory=dict)
    server: Optional[ServerState] = None
    clients: Optional[list[ClientState]] = None
    client: Optional[int] = None  # a Flower client's own state: which client

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"step": self.step, "parties": self.parties}
        if self.clients is None:
            return {**out, **self.server.to_dict()}
        if self.server is None:
            return {**out, **self.clients[0].to_dict()}
        s, cs = self.server, self.clients
        out.update(server_gen=s.gen, client_gens=[c.gen for c in cs], order_gens=[c.order for c in cs],
                   batchers=[c.batcher for c in cs])  # fmt: skip
        if any(c.release_counts is not None for c in cs):
            out["release_counts"] = [c.release_counts for c in cs]
        out.update(recorder=s.recorder, transport=s.transport)
        if s.global_unsent is not None:
            out["global_unsent"] = s.global_unsent
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "TrainingState":
        step, parties = int(d["step"]), d.get("parties", {})
        if "client_gens" in d:
            counts = d.get("release_counts")
            clients = [ClientState(g, o, b, counts[k] if counts is not None else None)
                       for k, (g, o, b) in enumerate(zip(d["client_gens"], d["order_gens"], d["batchers"]))]  # fmt: skip
            return cls(step, parties, ServerState.from_dict(d), clients)
        if "server_gen" in d:
            return cls(step, parties, ServerState.from_dict(d))
        k = next(client_index(p) for p in parties if p != SERVER)
        return cls(step, parties, clients=[ClientState.from_dict(d)], client=k)

    @classmethod
    def joined(cls, parts: list["TrainingState"], clients: int) -> "TrainingState":
        """A whole run's state from the parties' own (the server's first, then client 0, 1, ...)."""
        server, own = parts[0], parts[1:]
        parties = {SERVER: server.parties[SERVER],
                   **{client_name(k): own[k].parties[client_name(k)] for k in range(clients)}}  # fmt: skip
        return cls(server.step, parties, server.server, [p.clients[0] for p in own])

    @property
    def counts_complete(self) -> bool:
        """Every client's release counts are in it (not a checkpoint from before counting)."""
        return self.clients is not None and all(c.release_counts is not None for c in self.clients)

    @property
    def release_counts(self) -> Optional[list[torch.Tensor]]:
        return [c.release_counts for c in self.clients] if self.counts_complete else None

    def dp_states(self, clients: int) -> list[dict]:
        """The DP-SGD states of the first ``clients`` clients that train privately (``defenses/dp_sgd.py``)."""
        return [self.parties[client_name(k)]["dp"] for k in range(clients) if "dp" in self.parties.get(client_name(k), {})]


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_checkpoint(rd: RunDir, parties: list[tuple[str, Party]], state: TrainingState, keep: int) -> None:
    """Write ``checkpoints/step-<state.step>/`` atomically (``parties``' weights, ``state.pt`` with
    their optimiser states), point ``latest.json`` at it, keep the newest ``keep``."""
    tmp = new_step_dir(rd, state.step)
    for pname, party in parties:
        save_tensors(tmp / party_file(pname), party.model.state_dict())
        save_tensors(tmp / party_file(pname, ema=True), party.ema_state_dict())
    state.parties = {pname: party.state_dict() for pname, party in parties}
    save_state(tmp / STATE, state.to_dict())
    commit_step_dir(rd, state.step, tmp, keep)


def new_step_dir(rd: RunDir, step: int) -> Path:
    """An empty temporary folder for the checkpoint of round ``step`` (``commit_step_dir`` makes it one)."""
    tmp = rd.ckpt_dir / partial_step_name(step)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def commit_step_dir(rd: RunDir, step: int, tmp: Path, keep: Optional[int] = None) -> None:
    """Seal the filled folder ``tmp`` (its manifest), rename it to ``step-<step>/``, point
    ``latest.json`` at it and keep the newest ``keep`` step folders (all when None)."""
    name = step_name(step)
    final = rd.ckpt_dir / name
    write_json(tmp / MANIFEST, Manifest(step, {f.name: sha256(f) for f in sorted(tmp.iterdir())}))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    rd.write_latest(LatestCheckpoint(dir=name, step=step))
    if keep is not None:
        old = sorted(p for p in rd.ckpt_dir.iterdir() if p.is_dir() and is_step_name(p.name))
        for p in old[:-keep]:
            shutil.rmtree(p)


def remove_partial(rd: RunDir) -> None:
    """Checkpoint folders cut off by an interruption."""
    if rd.ckpt_dir.is_dir():
        for p in rd.ckpt_dir.glob(PARTIAL_STEP_GLOB):
            shutil.rmtree(p)


def damage(step_dir: Path, files: Optional[list[str]] = None) -> Optional[str]:
    """Why ``step_dir`` (or just its ``files``) cannot be trusted, or None when it is intact."""
    mpath = step_dir / MANIFEST
    if not mpath.is_file():
        return "it has no manifest.json (an older version's checkpoint, or a damaged one)"
    try:
        manifest = read_json(mpath, Manifest)
    except UserError as exc:
        return f"its manifest is unreadable ({exc})"
    for name in files if files is not None else manifest.files:
        f = step_dir / name
        if name not in manifest.files:
            return f"{name} is not in its manifest"
        if not f.is_file():
            return f"{name} is missing"
        if sha256(f) != manifest.files[name]:
            return f"{name} does not match the sha256 in its manifest (changed after it was written)"
    return None


def step_dirs(rd: RunDir) -> list[Path]:
    """Complete step folders, newest first."""
    if not rd.ckpt_dir.is_dir():
        return []
    return sorted((p for p in rd.ckpt_dir.iterdir() if p.is_dir() and is_step_name(p.name)), reverse=True)


def newest_intact(rd: RunDir, below: Optional[Path] = None) -> Optional[Path]:
    for d in step_dirs(rd):
        if (below is None or d.name < below.name) and damage(d) is None:
            return d
    return None


def verified_step_dir(rd: RunDir, files: Optional[list[str]] = None) -> tuple[Path, Optional[str]]:
    """The checkpoint folder to use, checked: ``(folder, note)``; note says when ``latest.json``
    was missing and the newest intact folder was taken instead. UserError for a damaged one."""
    latest = rd.latest()
    note = None
    if latest is None:
        d = newest_intact(rd)
        if d is None:
            raise UserError(f"{rd.path} has no checkpoint yet; run train first")
        note = f"{rd.ckpt_dir}/latest.json is missing: using {d.name}, the newest intact checkpoint"
    else:
        d = rd.ckpt_dir / latest.dir
        why = damage(d, files)
        if why is not None:
            prev = newest_intact(rd, below=d)
            offer = (f"the previous checkpoint, {prev.name}, is intact: remove {d} to resume from it" if prev
                     else "no earlier intact checkpoint is left: retrain")  # fmt: skip
            raise UserError(f"checkpoint {d} is damaged: {why}; {offer}")
    return d, note


def check_finite(tensors: dict[str, torch.Tensor], where) -> None:
    bad = sum(int((~torch.isfinite(t)).sum()) for t in tensors.values() if t.is_floating_point())
    if bad:
        raise UserError(f"{where} holds {bad} non-finite weights (NaN or inf): the model diverged before it was saved")


def load_checkpoint(rd: RunDir, parties: list[tuple[str, Party]],
                    step: Optional[int] = None) -> Optional[tuple[Path, TrainingState, Optional[str]]]:  # fmt: skip
    """Load the latest intact checkpoint (or the one of round ``step``) into ``parties``:
    ``(its folder, its state, note)`` or None."""
    remove_partial(rd)
    if rd.latest() is None and not step_dirs(rd):
        return None
    if step is None:
        d, note = verified_step_dir(rd)
    else:
        d, note = rd.ckpt_dir / step_name(step), None
        why = damage(d) if d.is_dir() else "it does not exist"
        if why is not None:
            raise UserError(f"checkpoint {d} cannot be used: {why}")
    try:
        state = TrainingState.from_dict(load_state(d / STATE))
    except (KeyError, ValueError, TypeError, StopIteration, IndexError, AttributeError):
        raise UserError(f"checkpoint {d}/state.pt does not fit this run") from None
    for pname, party in parties:
        w = load_tensors(d / party_file(pname))
        e = load_tensors(d / party_file(pname, ema=True))
        check_finite(w, d / party_file(pname))
        check_finite(e, d / party_file(pname, ema=True))
        try:
            party.load(w, e, state.parties[pname])
        except (RuntimeError, KeyError, ValueError, TypeError) as exc:
            raise UserError(f"checkpoint {d} does not fit this config ({pname}: {type(exc).__name__})") from None
    if note is not None or step is not None:
        rd.write_latest(LatestCheckpoint(dir=d.name, step=state.step))
    return d, state, note
