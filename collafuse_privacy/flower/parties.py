"""The CollaFuse parties on their own, for a deployment where each runs in its own process.

Nothing here imports Flower: :class:`ServerNode` and :class:`ClientNode` are the server and one
client of ``training.py``, each with only its own state, on its own disk, and the same code for
a round (``training.client_round``, ``training.Server``). ``apps.py`` moves their messages over
Flower; a test can drive them directly.

Layout inside the run directory (localhost; on real machines each ``flower/client-K`` lives on
its client's disk)::

    flower/plan.json              what every party may know: clients, image shape, classes,
                                  rounds per message, the run's id
    flower/server/                the server's own checkpoints and training log
    flower/client-K/              client K's: data.safetensors (its member images, labels, ids),
                                  secret.json, assignment.json (what its data must hash to),
                                  checkpoints/, sent/ (ids of the rows it sent: ground truth,
                                  never sent), train.jsonl, samples.safetensors

``prepare`` (the organiser: the same set-up as an in-process run) writes all of it before the
first message; ``collect`` (the evaluation harness, after the run) joins the parties' records into
the standard run layout (``checkpoints/``, ``ground_truth/``, ``metrics/``, ``samples/``), so that
``evaluate``, ``attack`` and ``report`` read a Flower run exactly like an in-process one.

Bit-identity with the in-process run (``tests/test_flower.py``): every party draws from the same
generators in the same order; a client's rounds never depend on the server, so a client runs
``rounds_per_message`` rounds per message; the server replays them round by round in client
order, as ``Trainer.train_round`` does.
"""

from __future__ import annotations

import hashlib
import math
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from ..checkpoint import load_checkpoint, save_checkpoint, sha256
from ..config import Config
from ..errors import UserError
from ..io import append_jsonl, load_tensors, save_state, save_tensors, truncate_jsonl
from ..party import Party, resolve_device
from ..protocol import Cut, Message, Transport, from_tensors, protocol_for
from ..run.codec import read_json, write_json
from ..run.directory import RunDir, open_run
from ..run.layout import (CHECKPOINTS, CONFIG, FLOWER_PLAN, PARTY_ASSIGNMENT, PARTY_DATA, PARTY_LOG, PARTY_SAMPLES,
                          PARTY_SECRET, PARTY_SENT, PLAN, SERVER, SHARD_RE, STATE, client_name, party_dir,
                          party_file, party_names, shard_name, step_name)
from ..training import (Server, build_client_model, build_server_model, client_dp_on, client_round, joint_state,
                        load_server_state, make_client, server_state)
from ..rng import generator
from ..view import ViewRecorder, list_shards

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
    rounds, never past a checkpoint round (every checkpoint is a message boundary)."""
    every, total = cfg.train.checkpoint_every, cfg.train.steps
    next_ckpt = (start // every + 1) * every
    return min(start + plan.rounds_per_message, next_ckpt, total)


# ---- the organiser: set-up before the first message ------------------------------------------------
def prepare(cfg: Config, run_dir, secrets=None, rounds_per_message: Optional[int] = None) -> Plan:
    """Set up ``run_dir`` for a Flower run of ``cfg`` (or check that it holds this run): the same
    run layout as an in-process ``train`` (config, secrets, splits, the server's view meta and
    public images), plus each client's folder with its data and secret, and ``flower/plan.json``."""
    from ..client_secrets import read_secrets, write_secrets
    from ..resolve import resolve
    from ..training import ensure_splits, write_view_meta

    run_dir = Path(run_dir)
    resolved = resolve(cfg, run_dir, secrets)
    cfg = resolved.cfg
    if rounds_per_message is not None and rounds_per_message < 1:
        raise UserError(f"--rounds-per-message={rounds_per_message}: must be at least 1")
    rd = RunDir(run_dir)
    if rd.latest() is not None and not (run_dir / FLOWER_PLAN).is_file():
        raise UserError(f"{run_dir} holds an in-process run (trained with `train`); resume it with `train`, or choose "
                        "another --out for a Flower run")  # fmt: skip
    resumed = open_run(cfg, run_dir)
    if resumed:
        rd.write_config(cfg)  # train.steps may have grown
    if read_secrets(run_dir) is None:
        write_secrets(run_dir, resolved.secrets)
    splits = ensure_splits(rd, resolved.splits)
    cut = Cut.from_config(cfg)
    write_view_meta(run_dir, cfg, cut, resolved.data, splits)
    old = run_dir / FLOWER_PLAN
    if old.is_file():  # a resumed run keeps its id (config.yaml changes when train.steps grows)
        prev = read_json(old, Plan)
        rid, rpm = prev.run, rounds_per_message or prev.rounds_per_message
    else:
        rid, rpm = run_id(run_dir), rounds_per_message or cfg.train.checkpoint_every
    plan = Plan(run=rid, clients=cfg.data.clients, image_shape=list(resolved.data.shape),
                num_classes=resolved.data.num_classes, rounds_per_message=rpm)  # fmt: skip
    for k in range(cfg.data.clients):
        folder = party_dir(run_dir, k)
        folder.mkdir(parents=True, exist_ok=True)
        data_path = folder / PARTY_DATA
        ids = torch.tensor(splits.members[k], dtype=torch.long)
        if not data_path.is_file():
            save_tensors(data_path, {"images": resolved.data.images[ids].float().contiguous(),
                                     "labels": resolved.data.labels[ids].long(), "ids": ids})  # fmt: skip
        write_json(folder / PARTY_SECRET, ClientSecret(resolved.secrets.client(k, cfg.seed)))
        write_json(folder / PARTY_ASSIGNMENT, Assignment(run=rid, client=k, members=len(ids),
                                                          data_sha256=sha256(data_path)))  # fmt: skip
        write_json(folder / PLAN, plan)  # what the client needs on a machine of its own
        rd_k = RunDir(folder)
        rd_k.write_config(cfg)
    party_dir(run_dir, SERVER).mkdir(parents=True, exist_ok=True)
    write_json(old, plan)
    return plan


# ---- a client ----------------------------------------------------------------------------------------
class ClientNode:
    """Client ``k`` alone: its data, secret, model and randomness, from its own folder.

    ``client_dir``: where its folder is (default ``flower/client-k`` of the run); ``data``: its
    data file (default ``data.safetensors`` there). Everything is checked before anything runs:
    the id against the run, the folder against the id, the data against the assignment.
    """

    def __init__(self, run_dir, k, device="cpu", client_dir=None, data=None):
        self.run_dir = Path(run_dir)
        try:
            k = int(k)
        except (TypeError, ValueError):
            raise UserError(f"client id {k!r} is not an integer") from None
        self.folder = Path(client_dir) if client_dir else party_dir(self.run_dir, k)
        # a client on its own machine has only its folder: the run's config and plan are copied into it
        own = (self.folder / CONFIG).is_file() and (self.folder / PLAN).is_file()
        self.cfg = cfg = RunDir(self.folder).config() if own else RunDir(self.run_dir).config()
        self.plan = plan = read_json(self.folder / PLAN, Plan) if own else read_plan(self.run_dir)
        if not 0 <= k < plan.clients:
            raise UserError(f"client id {k} is out of range: the run has {plan.clients} clients (ids 0..{plan.clients - 1})")
        self.k = k
        apath = self.folder / PARTY_ASSIGNMENT
        if not apath.is_file():
            raise UserError(f"client {k}: {apath} is missing (not a prepared client folder)")
        a = read_json(apath, Assignment)
        if a.run != plan.run:
            raise UserError(f"client {k}: {self.folder} belongs to another run ({a.run}, this run is {plan.run})")
        if a.client != k:
            raise UserError(f"client {k}: {self.folder} is client {a.client}'s folder")
        data_path = Path(data) if data else self.folder / PARTY_DATA
        if not data_path.is_file():
            raise UserError(f"client {k}: its data file {data_path} does not exist")
        if sha256(data_path) != a.data_sha256:
            raise UserError(f"client {k}: its data {data_path} does not match the run's splits (sha256 differs from "
                            f"the {a.members} member images assigned to it)")  # fmt: skip
        d = load_tensors(data_path)
        if list(d["images"].shape[1:]) != list(plan.image_shape) or d["images"].shape[0] != a.members:
            raise UserError(f"client {k}: its data {data_path} has shape {list(d['images'].shape)}, the run needs "
                            f"{a.members} images of {plan.image_shape}")  # fmt: skip
        secret = read_json(self.folder / PARTY_SECRET, ClientSecret).secret
        self.device = resolve_device(device)
        C, S = plan.image_shape[0], plan.image_shape[-1]
        model = build_client_model(cfg, secret, S, C)
        self.client = make_client(cfg, k, model, d["images"], d["labels"], d["ids"], secret, self.device)
        self.protocol = protocol_for(cfg)
        self.own = RunDir(self.folder)
        self.step = 0
        self.dp_on = client_dp_on(cfg)
        self._loaded = False

    @property
    def name(self) -> str:
        return client_name(self.k)

    def _keep(self) -> int:
        # the server resumes from its last checkpoint; this client may be up to two messages ahead
        every = self.cfg.train.checkpoint_every
        return max(3, self.cfg.train.keep_checkpoints) + math.ceil(every / self.plan.rounds_per_message)

    def at(self, step: int) -> None:
        """Bring the client to the state after round ``step`` (its own checkpoint of that round)."""
        if self._loaded and self.step == step:
            return
        if step == 0:
            if self._loaded and self.step != 0:
                raise UserError(f"client {self.k} is past round 0 in this process; restart it")
            self._loaded = True
            self._truncate(0)
            return
        loaded = load_checkpoint(self.own, [(self.name, self.client.party)], step=step)
        if loaded is None:
            raise UserError(f"client {self.k} has no saved state at round {step} in {self.own.ckpt_dir} (the server "
                            "is at that round): its folder was lost or belongs to another run")  # fmt: skip
        _, state, _ = loaded
        self.client.load_state(state)
        self.step = int(state["step"])
        self._loaded = True
        self._truncate(self.step)

    def _truncate(self, step: int) -> None:
        """Drop records of rounds after ``step`` (computed again, identically, from here)."""
        truncate_jsonl(self.folder / PARTY_LOG, lambda r: r.get("step", 0) <= step)
        sent = self.folder / PARTY_SENT
        if sent.is_dir():
            for f in sent.iterdir():
                m = SHARD_RE.search(f.name)
                if (m and int(m.group(1)) >= step) or f.name.endswith(".tmp"):
                    f.unlink()

    def run(self, start: int, rounds: int) -> list[Optional[Message]]:
        """Rounds ``start+1 .. start+rounds``: one message (or None: nothing crossed) per round."""
        self.at(start)
        out, ids, rnd, rows = [], [], [], []
        for i in range(rounds):
            r = client_round(self.client, self.cfg, self.protocol, self.device)
            if r.loss is not None and not math.isfinite(r.loss):
                raise UserError(f"client {self.k}: round {start + i + 1}: its loss is {r.loss}; training stopped (the "
                                f"last checkpoint is round {start}). Lower train.lr or check the data")  # fmt: skip
            out.append(r.message)
            row = {"step": start + i + 1, "loss": r.loss, "n": r.local, "sent": len(r.message) if r.message else 0}
            if r.message is not None:
                ids.append(r.ids.cpu().to(torch.int64))
                rnd.append(torch.full((len(r.message),), start + i, dtype=torch.int64))
            dp = self.cfg.defense.client_dp
            if self.dp_on and ((start + i + 1) % dp.log_every == 0 or start + i + 1 == self.cfg.train.steps):
                row["dp_epsilon"] = self.client.party.dp.epsilon(dp.delta)
            rows.append(row)
        self.step = start + rounds
        if ids:  # ground truth of what it sent: its own record, never sent
            save_tensors(self.folder / PARTY_SENT / shard_name(start, self.step - 1),
                         {"image_id": torch.cat(ids), "round": torch.cat(rnd)})  # fmt: skip
        append_jsonl(self.folder / PARTY_LOG, rows)
        self.save()
        return out

    def save(self) -> None:
        save_checkpoint(self.own, self.step, [(self.name, self.client.party)], self.client.state(), self._keep())

    def finish(self, handover: Optional[torch.Tensor], n: int, seed: int) -> torch.Tensor:
        """Finish sampling from the server's hand-over images ``[n, ...]`` (or, c = 1, from its own
        noise) with its EMA model; keeps the outputs in its folder and returns them."""
        from ..models import load_unet
        from ..sampling import client_finish, client_sample_generator

        self.at(self.cfg.train.steps)
        model = load_unet(self.cfg.model.client_model_preset, self.plan.image_shape,
                          self.client.party.ema_state_dict(), f"client {self.k}").to(self.device).eval()  # fmt: skip
        gen = client_sample_generator(seed, self.k, self.client.secret)
        raw = client_finish(model, self.cfg, handover, n, gen, self.device, self.cfg.sample.batch_size,
                            self.plan.image_shape)  # fmt: skip
        save_tensors(self.folder / PARTY_SAMPLES, {"raw": raw},
                     {"step": str(self.step), "n": str(n), "seed": str(seed)})  # fmt: skip
        return raw


# ---- the server ----------------------------------------------------------------------------------------
class ServerNode:
    """The server alone: its model and generator, its view recorder, its own checkpoints."""

    def __init__(self, run_dir, device="cpu", quiet: bool = True):
        self.run_dir = Path(run_dir)
        rd = self.rd = RunDir(self.run_dir)
        self.cfg = cfg = rd.config()
        self.plan = plan = read_plan(self.run_dir)
        self.device = resolve_device(device)
        self.cut = Cut.from_config(cfg)
        self.protocol = protocol_for(cfg, self.cut)
        C, S = plan.image_shape[0], plan.image_shape[-1]
        model = build_server_model(cfg, S, C, plan.num_classes)
        self.server = Server(Party(model, cfg.train, self.device), self.protocol, cfg.model.server_conditioning,
                             generator(cfg.seed, 1))  # fmt: skip
        rec = cfg.record
        self.recorder = ViewRecorder(self.run_dir, rec.max_items if rec.enabled else 0, rec.shard_size, rec.dtype,
                                     truth=False)  # fmt: skip
        self.transport = Transport(self.server.receive, self.recorder.receive)
        self.own = RunDir(party_dir(self.run_dir, SERVER))
        self.step = 0
        self.quiet = quiet
        loaded = load_checkpoint(self.own, [(SERVER, self.server.party)])
        if loaded is None:
            self.recorder.load_state_dict({"count": 0, "round": 0})
        else:
            self.step = load_server_state(loaded[1], self.server, self.recorder, self.transport)
        truncate_jsonl(self.own.path / PARTY_LOG, lambda r: r.get("step", 0) <= self.step)

    @property
    def done(self) -> bool:
        return self.step >= self.cfg.train.steps

    def next_message(self) -> tuple[int, int]:
        """``(start, rounds)`` of the next training message to every client."""
        return self.step, chunk_end(self.step, self.plan, self.cfg) - self.step

    def process(self, per_client: list[list[Optional[dict]]]) -> None:
        """Replay the rounds of one message: ``per_client[k][i]`` is client ``k``'s payload of
        round ``i`` (``Message.tensors()``, or None); the server receives them in client order and
        steps after each round, as ``Trainer.train_round``."""
        rounds = {len(p) for p in per_client}
        if len(rounds) != 1:
            raise UserError(f"the clients answered with different numbers of rounds ({sorted(rounds)})")
        for i in range(rounds.pop()):
            r0 = time.perf_counter()
            sent = []
            for k, rows in enumerate(per_client):
                payload = rows[i]
                sent.append(0 if payload is None else int(payload["x"].shape[0]))
                if payload is not None:
                    self.transport.send(from_tensors(k, {n: v.to(self.device) for n, v in payload.items()}))
            loss, n = self.server.train_step()
            if loss is not None and not math.isfinite(loss):
                raise UserError(f"round {self.step + 1}: the server loss is {loss}; training stopped (the last "
                                "checkpoint is the resume point). Lower train.lr or check the data")  # fmt: skip
            self.recorder.end_round()
            self.step += 1
            append_jsonl(self.own.path / PARTY_LOG, [{"step": self.step, "sent": sent, "server_loss": loss,
                                                          "server_n": n, "seconds": round(time.perf_counter() - r0, 4)}])
            if self.step % self.cfg.train.checkpoint_every == 0 or self.step == self.cfg.train.steps:
                self.save()

    def save(self) -> None:
        self.recorder.flush()
        state = server_state(self.server, self.recorder, self.transport)
        keep = max(2, self.cfg.train.keep_checkpoints)
        save_checkpoint(self.own, self.step, [(SERVER, self.server.party)], state, keep)

    def handovers(self, n: int, seed: int) -> Optional[torch.Tensor]:
        """The server's part of sampling ``[K, n, ...]`` with its EMA model; recorded in its view."""
        from ..models import load_unet
        from ..sampling import server_handovers, write_handovers

        if self.cut.sends_nothing:
            return None
        model = load_unet(self.cfg.model.preset, self.plan.image_shape, self.server.party.ema_state_dict(),
                          "the server").to(self.device).eval()  # fmt: skip
        h = server_handovers(model, self.cfg, self.plan.clients, n, seed, self.device, self.cfg.sample.batch_size,
                             self.plan.image_shape)  # fmt: skip
        write_handovers(self.run_dir, h, self.step, self.cut)
        return h


# ---- the evaluation harness: join the parties' records -------------------------------------------------
def collect(run_dir, quiet: bool = True) -> dict:
    """After a finished Flower run: write the standard run layout from the parties' own records.

    ``checkpoints/step-N/`` with every party's weights (the files as the parties wrote them) and
    the joint training state, so the run resumes in-process like any other; ``ground_truth/``
    (the clients' records of what they sent, aligned with the view's rows); ``metrics/train.jsonl``;
    ``metrics/privacy.json``; and, when the clients sampled, ``samples/``.
    """
    from ..checkpoint import damage
    from ..io import load_state

    run_dir = Path(run_dir)
    rd, plan = RunDir(run_dir), read_plan(run_dir)
    cfg = rd.config()
    total = cfg.train.steps
    parties = party_names(plan.clients)
    dirs = {}
    for p in parties:
        d = party_dir(run_dir, p) / CHECKPOINTS / step_name(total)
        why = damage(d) if d.is_dir() else "it does not exist (the run has not finished)"
        if why is not None:
            raise UserError(f"{p}'s checkpoint of the last round {d} cannot be used: {why}")
        dirs[p] = d
    states = {p: load_state(dirs[p] / STATE) for p in parties}
    state = {"step": total, "parties": {p: states[p]["parties"][p] for p in parties},
             **joint_state(states[SERVER], [states[client_name(k)] for k in range(plan.clients)])}
    from ..checkpoint import commit_step_dir, new_step_dir

    tmp = new_step_dir(rd, total)
    for p in parties:
        for ema in (False, True):
            shutil.copyfile(dirs[p] / party_file(p, ema), tmp / party_file(p, ema))
    save_state(tmp / STATE, state)
    commit_step_dir(rd, total, tmp)
    _ground_truth(run_dir, plan)
    _train_log(run_dir, plan)
    # The in-process trainer opens the joined checkpoint (a check that it is one) and writes the
    # run's formal privacy, exactly as at the end of an in-process run.
    from ..training import train

    summary = train(cfg, run_dir, device="cpu", quiet=quiet)
    sampled = _samples(run_dir, plan, cfg)
    return {**summary, "sampled": sampled}


def _ground_truth(run_dir: Path, plan: Plan) -> None:
    """``ground_truth/train/`` from the clients' ``sent/`` records, row for row with the view."""
    logs = []
    for k in range(plan.clients):
        parts = [load_tensors(f) for f in list_shards(party_dir(run_dir, k) / PARTY_SENT)]
        ids = torch.cat([p["image_id"] for p in parts]) if parts else torch.zeros(0, dtype=torch.long)
        rnd = torch.cat([p["round"] for p in parts]) if parts else torch.zeros(0, dtype=torch.long)
        logs.append((ids, rnd))
    truth = RunDir(run_dir).truth_dir
    for f in list_shards(RunDir(run_dir).view_train_dir):
        v = load_tensors(f)
        out, i, n = [], 0, len(v["client"])
        while i < n:  # one run of rows per (round, client): the first rows of that message
            k, r = int(v["client"][i]), int(v["round"][i])
            j = i
            while j < n and int(v["client"][j]) == k and int(v["round"][j]) == r:
                j += 1
            ids, rnd = logs[k]
            sel = ids[rnd == r]
            if len(sel) < j - i:
                raise UserError(f"client {k}'s record of round {r} holds {len(sel)} rows, the view {j - i}")
            out.append(sel[: j - i])
            i = j
        save_tensors(truth / f.name, {"image_id": torch.cat(out)})
    if truth.is_dir():
        names = {f.name for f in list_shards(RunDir(run_dir).view_train_dir)}
        for f in truth.iterdir():
            if SHARD_RE.search(f.name) and f.name not in names:
                f.unlink()


def _train_log(run_dir: Path, plan: Plan) -> None:
    """``metrics/train.jsonl`` from the server's and the clients' own logs."""
    from ..io import atomic_write_text
    import json

    def rows(path: Path) -> dict[int, dict]:
        if not path.is_file():
            return {}
        return {r["step"]: r for r in map(json.loads, path.read_text().splitlines()) if r}

    server = rows(party_dir(run_dir, SERVER) / PARTY_LOG)
    clients = [rows(party_dir(run_dir, k) / PARTY_LOG) for k in range(plan.clients)]
    out = []
    for step in sorted(server):
        s = server[step]
        row = {"step": step, "client_loss": [c.get(step, {}).get("loss") for c in clients],
               "client_n": [c.get(step, {}).get("n", 0) for c in clients], "sent": s["sent"],
               "server_loss": s["server_loss"], "server_n": s["server_n"], "seconds": s["seconds"]}  # fmt: skip
        if any("dp_epsilon" in c.get(step, {}) for c in clients):
            row["client_dp_epsilon"] = [c.get(step, {}).get("dp_epsilon") for c in clients]
        out.append(json.dumps(row))
    atomic_write_text(RunDir(run_dir).train_log_path, "".join(x + "\n" for x in out))


def _samples(run_dir: Path, plan: Plan, cfg: Config) -> bool:
    """``samples/`` from the clients' outputs and the server's hand-over images, if they sampled."""
    from ..sampling import write_samples

    files = [party_dir(run_dir, k) / PARTY_SAMPLES for k in range(plan.clients)]
    if not all(f.is_file() for f in files):
        return False
    from safetensors import safe_open

    raws, metas = [], []
    for f in files:
        with safe_open(str(f), "pt") as fh:
            metas.append(fh.metadata())
        raws.append(load_tensors(f)["raw"])
    n, seed = int(metas[0]["n"]), int(metas[0]["seed"])
    ho = RunDir(run_dir).handover_path
    handovers = None
    if ho.is_file():
        h = load_tensors(ho)["h"]
        handovers = h.reshape(plan.clients, n, *h.shape[1:])
    RunDir(run_dir).samples_dir.mkdir(parents=True, exist_ok=True)
    write_samples(Path(run_dir), cfg, torch.stack(raws), handovers, cfg.train.steps, n, seed)
    return True


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
