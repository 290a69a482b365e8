"""CollaFuse training: N clients and one server in one process, round by round.

Each round every client draws a batch of its member images, a timestep
``t ~ U{0..T-1}`` and noise ``eps`` per image (Ho et al. 2020). Images with
``t < t_c`` train the client's own model and never leave it; the others cross
the cut as a protocol message (``collafuse_privacy/protocol/``, DESIGN.md §1).
After all clients have sent, the server takes one optimiser step on what it
received this round. Every image is thus seen by exactly one denoiser, so the
total denoiser work equals a plain DDPM loop over the same images.

Everything random draws from a ``torch.Generator`` (one per party, one per
client batcher) whose state is checkpointed (``checkpoint.py``); a resumed run is
bit-identical to an uninterrupted one on the CPU.

Batches: ``train.sampling: shuffle`` walks seeded epochs over a client's members;
``poisson`` draws each member independently at rate ``train.batch_size / members`` per round
(the batch size varies; an empty batch trains nothing and sends nothing). Both draw from the
client's secret, which the unlinked epsilon rests on (``defenses/unlinked.py``).

Defences (DESIGN.md §4, ``defenses/``): with ``defense.client_dp.enabled`` each
client's :class:`~collafuse_privacy.party.Party` is made private with Opacus DP-SGD
and draws its batch by Poisson sampling at rate ``train.batch_size / members``.
``protocol.target_epsilon`` is resolved into a cut before the trainer starts
(``resolve.py``). Every run ends by writing ``metrics/privacy.json``.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from .config import Config
from .diffusion import q_sample
from .errors import UserError
from .io import append_jsonl, truncate_jsonl
from .models import build_unet, num_params
from .party import Batcher, Party, resolve_device
from .protocol import Cut, Message, Protocol, Transport, protocol_for
from .resolve import Resolved, resolve
from .rng import generator
from .client_secrets import Secrets, read_secrets, write_secrets
from .run.directory import RunDir, open_run
from .run.layout import AUDIT_CANARIES, FLOWER_PLAN, SERVER, client_name
from .run.schemas import ViewMeta
from .view import ViewRecorder, seal_view, write_public


@dataclass
class Client:
    """A client: its private member images, its local model, its own randomness."""

    k: int
    images: torch.Tensor  # [n, C, H, W] in [-1, 1], on the device
    labels: torch.Tensor  # [n]
    ids: torch.Tensor  # [n] dataset indices (ground truth; never sent)
    party: Party
    gen: torch.Generator  # t and eps draws
    batcher: Batcher  # or defenses.dp_sgd.PoissonSampler for DP clients
    secret: int  # the client's secret: seeds everything only it may know (client_secrets.py)
    order: torch.Generator  # the order of the rows in its messages
    sends: Optional[torch.Tensor] = None  # [n] int64: times each member image crossed the cut

    def state(self) -> dict:
        """Its randomness and release counts (the checkpointed part besides its model)."""
        return {"gen": self.gen.get_state(), "order": self.order.get_state(), "batcher": self.batcher.state_dict(),
                "release_counts": self.sends.clone()}  # fmt: skip

    def load_state(self, s: dict) -> None:
        """Restore :meth:`state` (``release_counts`` None: a checkpoint from before counting)."""
        self.gen.set_state(s["gen"])
        self.order.set_state(s["order"])
        self.batcher.load_state_dict(s["batcher"])
        n = s.get("release_counts")
        if n is not None:
            if n.shape != self.sends.shape:
                raise ValueError("release counts do not fit")
            self.sends = n.clone()


class Server:
    """The shared server model for ``t >= t_c``; trains on what it receives."""

    def __init__(self, party: Party, protocol: Protocol, conditioning: str, gen: torch.Generator):
        self.party, self.protocol, self.conditioning, self.gen = party, protocol, conditioning, gen
        self.inbox: list[Message] = []

    def receive(self, msg: Message) -> None:
        self.inbox.append(msg)

    def class_labels(self, msgs: list[Message]) -> Optional[torch.Tensor]:
        if self.conditioning == "client":
            return torch.cat([torch.full((len(m),), m.client, dtype=torch.long) for m in msgs])
        if self.conditioning == "labels":
            return torch.cat([m.labels for m in msgs])
        return None

    def model_inputs(self, msgs: list[Message]):
        """What the server trains on: ``(x_t, t, target_noise, class_labels)`` (``Protocol.server_batch``)."""
        labels = self.class_labels(msgs)
        labels = labels.to(self.party.device) if labels is not None else None
        x_t, t, target = self.protocol.server_batch(msgs, self.gen, self.party.device)
        return x_t, t, target, labels

    def train_step(self) -> tuple[Optional[float], int]:
        """One step on this round's inbox; returns (loss, images)."""
        msgs, self.inbox = self.inbox, []
        if not msgs:
            return None, 0
        x_t, t, target, labels = self.model_inputs(msgs)
        return self.party.train_step(x_t, t, target, labels), int(x_t.shape[0])


def server_class_embeds(cfg: Config, num_classes: int) -> Optional[int]:
    """Size of the server model's class embedding (``model.server_conditioning``)."""
    return {"none": None, "client": cfg.data.clients, "labels": num_classes}[cfg.model.server_conditioning]


# ---- one client's round, and the parties' construction (shared with the Flower apps) ----------------
@dataclass
class ClientRound:
    """What one client's round produced: its local loss (None: no local image), how many images
    it trained on locally, the message it sent (None: nothing crossed) and, for the evaluation
    harness only, the ids of that message's rows (never sent)."""

    loss: Optional[float]
    local: int
    message: Optional[Message]
    ids: Optional[torch.Tensor]


def client_round(c: Client, cfg: Config, protocol: Protocol, dev: torch.device) -> ClientRound:
    """Client ``c``'s part of one round: draw, train its own steps, encode what crosses the cut.

    Touches only the client's own state (its generators, batcher, model, release counts); never
    waits on the server, so a client can run many rounds ahead of it (the Flower apps do).
    """
    cut = protocol.cut
    # 1. a batch of the client's members, a timestep and noise per image
    pos = c.batcher.next(cfg.train.batch_size)
    x0, y, ids = c.images[pos.to(dev)], c.labels[pos.to(dev)], c.ids[pos]
    t = torch.randint(0, cut.T, (len(pos),), generator=c.gen)
    eps = torch.randn(x0.shape, generator=c.gen).to(dev)
    local, remote = (t < cut.t_c).to(dev), (t >= cut.t_c).to(dev)
    t = t.to(dev)
    # 2. the client's own steps t < t_c: nothing of this leaves the client
    x_t = q_sample(x0[local], t[local], eps[local], cut.abar)
    loss = c.party.train_step(x_t, t[local], eps[local])
    n_local = int(local.sum())
    # 3. what crosses the cut for t >= t_c (DESIGN.md §1), its rows in a uniformly random
    #    order: neither the draw order nor the order of the client's data is sent
    n_remote = int(remote.sum())
    if n_remote == 0:
        return ClientRound(loss, n_local, None, None)
    rows = torch.nonzero(remote.cpu()).flatten()[torch.randperm(n_remote, generator=c.order)]
    r = rows.to(dev)
    labels = y[r] if cfg.model.server_conditioning == "labels" else None
    msg = protocol.encode(c.k, x0[r], t[r], eps[r], ids=ids[rows], secret=c.secret, labels=labels)
    sent = pos[rows]
    c.sends.index_add_(0, sent, torch.ones_like(sent))
    return ClientRound(loss, n_local, msg, ids[rows])


def server_state(server: "Server", recorder, transport) -> dict:
    """The server's checkpointed state besides its model: its generator, the recorder, the counters."""
    return {"server_gen": server.gen.get_state(), "recorder": recorder.state_dict(),
            "transport": {"messages": transport.messages, "bytes": transport.bytes}}  # fmt: skip


def load_server_state(state: dict, server: "Server", recorder, transport) -> int:
    """Restore :func:`server_state`; returns the checkpoint's round."""
    server.gen.set_state(state["server_gen"])
    transport.messages = int(state["transport"]["messages"])
    transport.bytes = int(state["transport"]["bytes"])
    recorder.load_state_dict(state["recorder"])
    return int(state["step"])


def joint_state(server: dict, clients: list[dict]) -> dict:
    """An in-process checkpoint's ``state.pt`` (besides ``step`` and ``parties``) from the server's
    :func:`server_state` and every client's :meth:`Client.state` (also how ``flower.parties.collect``
    joins a Flower run's parties)."""
    return {"server_gen": server["server_gen"], "client_gens": [c["gen"] for c in clients],
            "order_gens": [c["order"] for c in clients], "batchers": [c["batcher"] for c in clients],
            "release_counts": [c["release_counts"] for c in clients], "recorder": server["recorder"],
            "transport": server["transport"]}  # fmt: skip


def build_server_model(cfg: Config, size: int, channels: int, num_classes: int):
    """The server's UNet, initialised from the config's seed."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return build_unet(cfg.model.preset, size, channels, server_class_embeds(cfg, num_classes))


def build_client_model(cfg: Config, secret: int, size: int, channels: int):
    """A client's UNet, initialised from the client's own secret."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(secret)
        return build_unet(cfg.model.client_model_preset, size, channels)


def client_dp_on(cfg: Config) -> bool:
    """DP-SGD only where a client trains: with t_c = 0 its model never takes a step."""
    return cfg.defense.client_dp.enabled and Cut.from_config(cfg).t_c > 0


def make_client(cfg: Config, k: int, model, images: torch.Tensor, labels: torch.Tensor, ids: torch.Tensor,
                secret: int, device: torch.device) -> Client:  # fmt: skip
    """Client ``k`` with its member images, model and the generators its secret seeds."""
    party = Party(model, cfg.train, device)
    if client_dp_on(cfg):
        batcher = _make_private(cfg, party, len(ids), secret, device)
    elif cfg.train.sampling == "poisson":  # each member independently, from the client's secret (DESIGN.md §4)
        from .defenses.dp_sgd import PoissonSampler

        batcher = PoissonSampler(len(ids), min(1.0, cfg.train.batch_size / len(ids)), generator(secret, 3))
    else:
        batcher = Batcher(len(ids), generator(secret, 3))
    return Client(k=k, images=images.to(device), labels=labels.to(device), ids=ids, party=party,
                  gen=generator(secret, 2), batcher=batcher, secret=secret, order=generator(secret, 5),
                  sends=torch.zeros(len(ids), dtype=torch.long))  # fmt: skip


def _make_private(cfg: Config, party: Party, n: int, secret: int, device: torch.device):
    """Opacus DP-SGD for a client with ``n`` members; returns its Poisson sampler."""
    from .defenses.accounting import dp_sgd_noise_multiplier
    from .defenses.dp_sgd import PoissonSampler

    dp, cut = cfg.defense.client_dp, Cut.from_config(cfg)
    q = min(1.0, cfg.train.batch_size / n)
    sigma = dp.noise_multiplier
    if sigma is None:
        sigma = dp_sgd_noise_multiplier(dp.target_epsilon, dp.delta, q, cfg.train.steps, dp.accountant)
    party.make_private(
        noise_multiplier=sigma,
        max_grad_norm=dp.max_grad_norm,
        # the client trains on the drawn images with t < t_c: on average q * n * t_c / T
        expected_batch_size=max(q * n * cut.t_c / cut.T, 1e-6),
        sample_rate=q,
        accountant=dp.accountant,
        grad_sample_mode=dp.grad_sample_mode,
        generator=generator(secret, 4, device=device),
    )
    return PoissonSampler(n, q, generator(secret, 3))


class Trainer:
    """Builds the parties for a resolved config in ``run_dir`` and runs / resumes training."""

    def __init__(self, resolved: Resolved, run_dir: Path, device: torch.device, quiet: bool = False):
        cfg = self.cfg = resolved.cfg
        self.run_dir, self.rd, self.device, self.quiet = Path(run_dir), RunDir(run_dir), device, quiet
        self.data, self.cut_choice, self.secrets = resolved.data, resolved.cut_choice, resolved.secrets
        self.cut = Cut.from_config(cfg)
        self.protocol = protocol_for(cfg, self.cut)
        self.t_c, self.T = self.cut.t_c, self.cut.T
        C, S = self.data.shape[0], cfg.data.image_size
        secret = [self.secrets.client(k, cfg.seed) for k in range(cfg.data.clients)]
        from .resources import check_memory

        server_model = build_server_model(cfg, S, C, self.data.num_classes)
        client_models = []
        for k in range(cfg.data.clients):
            client_models.append(build_client_model(cfg, secret[k], S, C))
            if k == 0:  # before building the others: refuse a run that cannot fit in memory
                check_memory(cfg, self.data.images.element_size() * self.data.images.numel(), server_model,
                             client_models[0], tuple(self.data.shape))  # fmt: skip
        if (self.run_dir / FLOWER_PLAN).is_file() and self.rd.latest() is None:
            raise UserError(f"{self.run_dir} is a Flower run that has not finished (its parties' checkpoints are in "
                            "flower/): resume it with `collafuse-privacy flower run`")  # fmt: skip
        self.resumed = open_run(cfg, self.run_dir)
        if read_secrets(self.run_dir) is None:
            write_secrets(self.run_dir, self.secrets)
        self.splits = self._splits(resolved.splits)
        server_party = Party(server_model, cfg.train, device)
        self.server = Server(server_party, self.protocol, cfg.model.server_conditioning, generator(cfg.seed, 1))
        # DP-SGD only where a client trains: with t_c = 0 its model never takes a step
        self.dp_on = client_dp_on(cfg)
        self.clients = []
        for k, model in enumerate(client_models):
            ids = torch.tensor(self.splits.members[k], dtype=torch.long)
            self.clients.append(make_client(cfg, k, model, self.data.images[ids], self.data.labels[ids], ids,
                                            secret[k], device))  # fmt: skip
        rec = cfg.record
        self.recorder = ViewRecorder(self.run_dir, rec.max_items if rec.enabled else 0, rec.shard_size, rec.dtype)
        self.transport = Transport(self.server.receive, self.recorder.receive)
        self.step = 0
        self._eps_cache: dict = {}
        self.counts_complete = True
        if self.resumed:
            self._load_latest()
            self.rd.write_config(cfg)  # train.steps may have grown
        if self.dp_on:
            self._check_dp_budget()
        self._write_view_meta()
        if self.cut_choice is not None and not quiet:
            print(self.cut_choice.message, file=sys.stderr)

    # ---- the loop -----------------------------------------------------------
    def train_round(self) -> dict:
        """One round: every client trains locally and sends; then the server steps."""
        row = {"step": self.step + 1, "client_loss": [], "client_n": [], "sent": []}
        for c in self.clients:
            r = client_round(c, self.cfg, self.protocol, self.device)
            row["client_loss"].append(r.loss)
            row["client_n"].append(r.local)
            row["sent"].append(len(r.message) if r.message is not None else 0)
            if r.message is not None:
                self.transport.send(r.message)
                self.recorder.attach_truth(r.ids)
        # 4. the server steps on what it received this round
        row["server_loss"], row["server_n"] = self.server.train_step()
        self.recorder.end_round()
        self.step += 1
        if self.dp_on:
            every = self.cfg.defense.client_dp.log_every
            if self.step % every == 0 or self.step == self.cfg.train.steps:
                row["client_dp_epsilon"] = self.client_dp_epsilons()
        return row

    def train(self, on_round: Optional[Callable[[int], None]] = None) -> dict:
        """Train until ``train.steps`` rounds are done, checkpointing on the way."""
        from tqdm import tqdm

        cfg = self.cfg
        total = cfg.train.steps
        t0 = time.perf_counter()
        bar = tqdm(total=total, initial=min(self.step, total), desc="train", disable=self.quiet, dynamic_ncols=True)
        try:
            self._loop(bar, total, on_round)
        finally:
            bar.close()  # before any message (an error, Ctrl-C) is printed
        if self.step == total and self.rd.latest() is None:
            self.save_checkpoint()
        if self.rd.latest() is not None:  # a resumed or collected run: its view sealed at its checkpoint
            self.seal_view()
        self.write_privacy()
        return {"run_dir": str(self.run_dir), "steps": self.step, "seconds": time.perf_counter() - t0,
                "messages": self.transport.messages, "bytes_sent": self.transport.bytes,
                "server_params": num_params(self.server.party.model),
                "client_params": num_params(self.clients[0].party.model), "recorded": self.recorder.count,
                "received": self.recorder.received}  # fmt: skip

    def _loop(self, bar, total: int, on_round) -> None:
        cfg = self.cfg
        ema_s = ema_c = None
        while self.step < total:
            r0 = time.perf_counter()
            row = self.train_round()
            self._check_losses(row)
            row["seconds"] = round(time.perf_counter() - r0, 4)
            append_jsonl(self.rd.train_log_path, [row])
            cl = [x for x in row["client_loss"] if x is not None]
            if row["server_loss"] is not None:
                ema_s = row["server_loss"] if ema_s is None else 0.95 * ema_s + 0.05 * row["server_loss"]
            if cl:
                m = sum(cl) / len(cl)
                ema_c = m if ema_c is None else 0.95 * ema_c + 0.05 * m
            bar.update(1)
            bar.set_postfix(server=f"{ema_s:.4f}" if ema_s is not None else "-",
                            client=f"{ema_c:.4f}" if ema_c is not None else "-")  # fmt: skip
            if self.step % cfg.train.checkpoint_every == 0 or self.step == total:
                self.save_checkpoint()
            if on_round is not None:
                on_round(self.step)

    def _check_losses(self, row: dict) -> None:
        """A non-finite loss ends training at this round: nothing of it is saved, the last
        checkpoint stays the resume point."""
        losses = [("server", row["server_loss"])] + [(f"client {k}", x) for k, x in enumerate(row["client_loss"])]
        for who, x in losses:
            if x is not None and not math.isfinite(x):
                last = self.rd.latest()
                raise UserError(
                    f"round {row['step']}: the {who} loss is {x}; training stopped, nothing of this round was saved "
                    f"({'the last checkpoint is round ' + str(last.step) if last else 'no checkpoint yet'}). The same "
                    "config will diverge again: lower train.lr or check the data"
                )

    # ---- checkpoints ----------------------------------------------------------
    def parties(self) -> list[tuple[str, Party]]:
        return [(SERVER, self.server.party)] + [(client_name(c.k), c.party) for c in self.clients]

    def save_checkpoint(self) -> None:
        from .checkpoint import save_checkpoint

        self.recorder.flush()
        state = joint_state(server_state(self.server, self.recorder, self.transport), [c.state() for c in self.clients])
        save_checkpoint(self.rd, self.step, self.parties(), state, self.cfg.train.keep_checkpoints)
        self.seal_view()

    def seal_view(self) -> None:
        """``server_view/manifest.json`` last: what ``ServerView.load`` verifies (view.py)."""
        seal_view(self.run_dir, self.step, self.recorder.count, self.cfg)

    def _load_latest(self) -> None:
        from .checkpoint import load_checkpoint

        loaded = load_checkpoint(self.rd, self.parties())
        if loaded is None:
            self._rewind(0)
            return
        d, state, note = loaded
        if note and not self.quiet:
            print(note, file=sys.stderr)
        try:
            counts = state.get("release_counts")
            self.counts_complete = counts is not None  # checkpoints from before counting
            for k, c in enumerate(self.clients):
                c.load_state({"gen": state["client_gens"][k], "order": state["order_gens"][k],
                              "batcher": state["batchers"][k],
                              "release_counts": counts[k] if counts is not None else None})  # fmt: skip
            self.step = load_server_state(state, self.server, self.recorder, self.transport)
        except (RuntimeError, KeyError, ValueError, TypeError):
            raise UserError(f"checkpoint {d}/state.pt does not fit this run") from None
        self._rewind(self.step)

    def _rewind(self, step: int) -> None:
        """Drop log rows and view shards written after ``step`` (an interrupted tail)."""
        truncate_jsonl(self.rd.train_log_path, lambda r: r.get("step", 0) <= step)
        if step == 0:
            self.recorder.load_state_dict({"count": 0, "round": 0})

    # ---- setup ------------------------------------------------------------------
    def _splits(self, splits):
        return ensure_splits(self.rd, splits)

    def _write_view_meta(self) -> None:
        write_view_meta(self.run_dir, self.cfg, self.cut, self.data, self.splits)

    def _check_dp_budget(self) -> None:
        """Refuse to train past ``defense.client_dp.target_epsilon``."""
        from .defenses.accounting import dp_sgd_epsilon

        dp = self.cfg.defense.client_dp
        if dp.target_epsilon is None:
            return
        remaining = max(0, self.cfg.train.steps - self.step)
        for c in self.clients:
            d = c.party.dp
            eps = dp_sgd_epsilon(d.accountant.history + [(d.noise_multiplier, d.sample_rate, remaining)], dp.delta,
                                 dp.accountant)  # fmt: skip
            if eps > dp.target_epsilon * (1 + 1e-9):
                raise UserError(
                    f"defense.client_dp.target_epsilon={dp.target_epsilon:g}: training client {c.k} to "
                    f"{self.cfg.train.steps} rounds at the run's noise multiplier {d.noise_multiplier:.4g} would spend "
                    f"epsilon={eps:.4g}; refusing (keep train.steps at most what the run started with, "
                    "or start a new run)"
                )

    def client_dp_epsilons(self) -> list[float]:
        """Epsilon spent so far by each DP client (memoised on the accountant history)."""
        dp = self.cfg.defense.client_dp
        out = []
        for c in self.clients:
            key = (tuple(c.party.dp.accountant.history), dp.delta, dp.accountant)
            if key not in self._eps_cache:
                self._eps_cache[key] = c.party.dp.epsilon(dp.delta)
            out.append(self._eps_cache[key])
        return out

    # ---- the run's formal privacy --------------------------------------------------
    def write_privacy(self):
        """``metrics/privacy.json``: formal epsilon of the server's view and of DP clients."""
        from .defenses.privacy import compute_privacy

        report = compute_privacy(
            self.cfg, tuple(self.data.shape), cut_choice=self.cut_choice,
            release_counts=[c.sends for c in self.clients] if self.counts_complete else None,
            dp_states=[c.party.dp.state_dict() for c in self.clients] if self.dp_on else None,
            n_members=[len(c.ids) for c in self.clients], steps=self.step)  # fmt: skip
        self.rd.write_metrics("privacy", report)
        return report


def train(cfg: Config, run_dir: str | Path, device: str = "auto", quiet: bool = False, on_round=None,
          secrets: Optional[Secrets] = None) -> dict:  # fmt: skip
    """Resolve ``cfg``, then train (or resume) the run in ``run_dir``; returns a small summary.

    ``secrets``: the clients' secrets for a new run (default: new ones, ``client_secrets.py``).
    """
    from .lock import locked

    refuse_audit_dir(run_dir)
    resolved = resolve(cfg, Path(run_dir), secrets)  # bad input fails here, before the folder exists
    with locked(run_dir):
        trainer = Trainer(resolved, Path(run_dir), resolve_device(device), quiet=quiet)
        return trainer.train(on_round=on_round)


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
