"""The CollaFuse parties on their own, for a deployment where each runs in its own process.

Nothing here imports Flower: :class:`ServerNode` and :class:`ClientNode` are the server and one
client of an in-process run, each with only its own state, on its own disk, built by the same
builders (``training.make_client``, ``training.server_side``) and running the same round code
(``training.client_round``; the server's ``training.ServerRounds``). ``apps.py`` moves their
messages over Flower; a test can drive them directly.

Bit-identity with the in-process run (``tests/test_flower.py``): every party draws from the same
generators in the same order; a client's rounds never depend on the server, so a client runs
``rounds_per_message`` rounds per message; the server replays them round by round in client
order, as the in-process trainer does.

Under ``protocol.kind: fedavg`` a message is one upload period: it carries the server's global
model (:meth:`ServerNode.global_model`), the client loads it (:meth:`ClientNode.train_local`),
trains ``train.local_steps`` rounds on its own and answers with its upload; the server replays
the rounds, averages the uploads in client order (:meth:`ServerNode.process`), and checks that
the average Flower's ``FedAvg`` strategy computed is the same bits (:meth:`ServerNode.check_average`).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Optional

import torch

from ..checkpoint import TrainingState, load_checkpoint, save_checkpoint, sha256
from ..errors import UserError
from ..io import append_jsonl, load_tensors, save_tensors, truncate_jsonl
from ..models import load_unet
from ..party import resolve_device
from ..protocol import Cut, Message, protocol_for
from ..run.codec import read_json
from ..run.directory import RunDir
from ..run.layout import (CONFIG, PARTY_ASSIGNMENT, PARTY_DATA, PARTY_LOG, PARTY_SAMPLES, PARTY_SECRET, PARTY_SENT,
                          PLAN, SERVER, SHARD_RE, client_name, party_dir, shard_name)
from ..sampling import client_finish, client_sample_generator, server_handovers, write_handovers
from ..protocol.fedavg import flat_parameters
from ..training import (ServerRounds, build_client_model, build_server_model, check_losses, client_dp_on, client_round,
                        client_upload, make_client, receive_global, server_side, uploads_due)
from .plan import Assignment, ClientSecret, Plan, chunk_end, read_plan


# ---- a client ----------------------------------------------------------------------------------------
def _client_data(folder: Path, k: int, plan: Plan, data=None) -> dict:
    """Client ``k``'s data from ``folder`` (or ``data``), checked against its assignment."""
    apath = folder / PARTY_ASSIGNMENT
    if not apath.is_file():
        raise UserError(f"client {k}: {apath} is missing (not a prepared client folder)")
    a = read_json(apath, Assignment)
    if a.run != plan.run:
        raise UserError(f"client {k}: {folder} belongs to another run ({a.run}, this run is {plan.run})")
    if a.client != k:
        raise UserError(f"client {k}: {folder} is client {a.client}'s folder")
    data_path = Path(data) if data else folder / PARTY_DATA
    if not data_path.is_file():
        raise UserError(f"client {k}: its data file {data_path} does not exist")
    if sha256(data_path) != a.data_sha256:
        raise UserError(f"client {k}: its data {data_path} does not match the run's splits (sha256 differs from "
                        f"the {a.members} member images assigned to it)")  # fmt: skip
    d = load_tensors(data_path)
    if list(d["images"].shape[1:]) != list(plan.image_shape) or d["images"].shape[0] != a.members:
        raise UserError(f"client {k}: its data {data_path} has shape {list(d['images'].shape)}, the run needs "
                        f"{a.members} images of {plan.image_shape}")  # fmt: skip
    return d


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
        self.folder = Path(client_dir) if client_dir else party_dir(self.run_dir, client_name(k))
        # a client on its own machine has only its folder: the run's config and plan are copied into it
        own = (self.folder / CONFIG).is_file() and (self.folder / PLAN).is_file()
        self.cfg = cfg = RunDir(self.folder).config() if own else RunDir(self.run_dir).config()
        self.plan = plan = read_json(self.folder / PLAN, Plan) if own else read_plan(self.run_dir)
        if not 0 <= k < plan.clients:
            raise UserError(f"client id {k} is out of range: the run has {plan.clients} clients (ids 0..{plan.clients - 1})")
        self.k = k
        d = _client_data(self.folder, k, plan, data)
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
        self.client.load_state(state.clients[0])
        self.step = state.step
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
        dp = self.cfg.defense.client_dp
        for i in range(rounds):
            r = client_round(self.client, self.cfg, self.protocol, self.device)
            check_losses(start + i + 1, [(f"client {self.k}", r.loss)], self.own)
            out.append(r.message)
            row = {"step": start + i + 1, "loss": r.loss, "n": r.local, "sent": len(r.message) if r.message else 0}
            if r.message is not None:
                ids.append(r.ids.cpu().to(torch.int64))
                rnd.append(torch.full((len(r.message),), start + i, dtype=torch.int64))
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

    def train_local(self, start: int, rounds: int, global_model: Optional[torch.Tensor]) -> Message:
        """fedavg: from the server's global model (None: keep its own, the message does not start
        after an average) rounds ``start+1 .. start+rounds`` on its own, then its upload."""
        if not self.protocol.aggregates:
            raise UserError(f"client {self.k}: the run is not fedavg (protocol.kind={self.cfg.protocol.kind})")
        if not uploads_due(self.cfg, start + rounds):
            raise UserError(f"client {self.k}: a fedavg message must end with an upload; round {start + rounds} does not")
        self.at(start)
        if global_model is not None:
            receive_global(self.client, global_model.to(self.device))
        self.run(start, rounds)
        return client_upload(self.client, self.protocol)

    def save(self) -> None:
        state = TrainingState(self.step, clients=[self.client.state()], client=self.k)
        save_checkpoint(self.own, [(self.name, self.client.party)], state, self._keep())

    def finish(self, handover: Optional[torch.Tensor], n: int, seed: int) -> torch.Tensor:
        """Finish sampling from the server's hand-over images ``[n, ...]`` (or, c = 1, from its own
        noise) with its EMA model; keeps the outputs in its folder and returns them."""
        self.at(self.cfg.train.steps)
        model = load_unet(self.cfg.model.client_model_preset, self.plan.image_shape,
                          self.client.party.ema_state_dict(), f"client {self.k}").to(self.device).eval()  # fmt: skip
        gen = client_sample_generator(seed, self.k, self.client.secret, self.device)
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
        self.server, self.recorder, self.transport = server_side(cfg, model, self.protocol, self.run_dir, self.device,
                                                                 truth=False)  # fmt: skip
        self.own = RunDir(party_dir(self.run_dir, SERVER))
        self.rounds = ServerRounds(cfg, self.server, self.recorder, self.transport, self.own,
                                   self.own.path / PARTY_LOG, self.save)  # fmt: skip
        self.quiet = quiet
        loaded = load_checkpoint(self.own, [(SERVER, self.server.party)])
        if loaded is None:
            self.recorder.load_state_dict({"count": 0, "round": 0})
        else:
            self.server.load_state(loaded[1].server, self.recorder, self.transport)
            self.rounds.step = loaded[1].step
        truncate_jsonl(self.own.path / PARTY_LOG, lambda r: r.get("step", 0) <= self.step)

    @property
    def step(self) -> int:
        """Rounds done."""
        return self.rounds.step

    @property
    def done(self) -> bool:
        return self.step >= self.cfg.train.steps

    def next_message(self) -> tuple[int, int]:
        """``(start, rounds)`` of the next training message to every client."""
        return self.step, chunk_end(self.step, self.plan, self.cfg) - self.step

    def process(self, per_client: list[list[Optional[dict]]]) -> None:
        """Replay the rounds of one message: ``per_client[k][i]`` is client ``k``'s payload of
        round ``i`` (``Message.tensors()``, or None); the server receives them in client order and
        steps after each round (``training.ServerRounds``, as the in-process trainer)."""
        rounds = {len(p) for p in per_client}
        if len(rounds) != 1:
            raise UserError(f"the clients answered with different numbers of rounds ({sorted(rounds)})")
        for i in range(rounds.pop()):
            t0 = time.perf_counter()
            payloads = [rows[i] for rows in per_client]
            sent = [0 if p is None else int(p["x"].shape[0]) for p in payloads]
            msgs = [None if p is None else self.protocol.decode(k, {n: v.to(self.device) for n, v in p.items()})
                    for k, p in enumerate(payloads)]  # fmt: skip
            self.rounds.run_round({"step": self.step + 1, "sent": sent}, msgs, t0)

    def global_model(self) -> Optional[torch.Tensor]:
        """fedavg: the global model the next message carries (flat float32), or None where the
        clients already hold it (the message does not start after an average); marks it sent."""
        if not self.server.global_unsent:
            return None
        self.server.global_unsent = False
        return flat_parameters(self.server.party.model)

    def check_average(self, w: torch.Tensor) -> None:
        """fedavg: ``w``, the average a deployment's own aggregator computed (Flower's ``FedAvg``),
        must be the server's model bit for bit; otherwise the run stops in one line."""
        mine = flat_parameters(self.server.party.model)
        w = w.reshape(-1).to(mine.device)
        if w.dtype != mine.dtype or w.shape != mine.shape or not torch.equal(w, mine):
            raise UserError(f"round {self.step}: Flower's FedAvg average differs from the server's own (max abs "
                            f"difference {float((w.float() - mine).abs().max()) if w.shape == mine.shape else 'n/a'}): "
                            "the uploads were not averaged in client order")  # fmt: skip

    def save(self) -> None:
        self.recorder.flush()
        state = TrainingState(self.step, server=self.server.state(self.recorder, self.transport))
        save_checkpoint(self.own, [(SERVER, self.server.party)], state, max(2, self.cfg.train.keep_checkpoints))

    def handovers(self, n: int, seed: int) -> Optional[torch.Tensor]:
        """The server's part of sampling ``[K, n, ...]`` with its EMA model; recorded in its view."""
        if self.cut.sends_nothing:
            return None
        model = load_unet(self.cfg.model.preset, self.plan.image_shape, self.server.party.ema_state_dict(),
                          "the server").to(self.device).eval()  # fmt: skip
        h = server_handovers(model, self.cfg, self.plan.clients, n, seed, self.device, self.cfg.sample.batch_size,
                             self.plan.image_shape)  # fmt: skip
        write_handovers(self.run_dir, h, self.step, self.cut)
        return h
