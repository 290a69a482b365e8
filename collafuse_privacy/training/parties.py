"""The parties of a training run: a client (its member images, model, secret-seeded randomness),
the server (its model and its own generator) and one client's part of a round.

Each round a client draws a batch of its member images, a timestep ``t ~ U{0..T-1}`` and noise
``eps`` per image (Ho et al. 2020). Images with ``t < t_c`` train the client's own model and
never leave it; the others cross the cut as a protocol message (``collafuse_privacy/protocol/``,
DESIGN.md §1). The random streams are named here once: the server's from the config's seed, a
client's from its secret (``client_secrets.py``), so a client's draws are no function of
anything in the server's view.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ..checkpoint import ClientState, ServerState
from ..config import Config
from ..defenses.accounting import dp_sgd_noise_multiplier
from ..defenses.dp_sgd import PoissonSampler
from ..diffusion import q_sample
from ..models import build_unet
from ..party import Batcher, Party
from ..protocol import Cut, Message, Protocol, make_conditioning, protocol_for
from ..protocol.accountant import ReleaseAccountant
from ..protocol.fedavg import load_flat
from ..rng import generator, randint, randn, restore

# The random streams: generator(cfg.seed, SERVER_STREAM) for the server's own noise (cut-image's
# eps2); generator(secret, CLIENT_*) for a client's.
SERVER_STREAM = 1
CLIENT_DRAWS = 2  # t and eps
CLIENT_BATCHES = 3  # its batcher (shuffled epochs or Poisson sampling)
CLIENT_DP_NOISE = 4  # Opacus' noise
CLIENT_ORDER = 5  # the order of its message rows


def server_generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    """The server's own random stream (the run's ``seed``: the server may know it), drawing on ``device``."""
    return generator(seed, SERVER_STREAM, device=device)


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
    releases: Optional[ReleaseAccountant] = None  # the linked view's accountant of its member images

    def state(self) -> ClientState:
        """Its randomness and release counts (the checkpointed part besides its model)."""
        return ClientState(gen=self.gen.get_state(), order=self.order.get_state(), batcher=self.batcher.state_dict(),
                           release_counts=self.releases.state_dict()["release_counts"])  # fmt: skip

    def load_state(self, s: ClientState) -> None:
        """Restore :meth:`state` (``release_counts`` None: a checkpoint from before counting)."""
        restore(self.gen, s.gen, f"client {self.k}")
        restore(self.order, s.order, f"client {self.k}")
        self.batcher.load_state_dict(s.batcher)
        if s.release_counts is not None:
            self.releases.load_state_dict({"release_counts": s.release_counts})


class Server:
    """The shared server model for ``t >= t_c``; trains on what it receives."""

    def __init__(self, party: Party, protocol: Protocol, gen: torch.Generator):
        self.party, self.protocol, self.gen = party, protocol, gen
        self.inbox: list[Message] = []
        # fedavg: the global model is one the clients have not received yet (at first: its initial
        # model, which every client starts from); it goes to them at the start of the next round
        self.global_unsent = protocol.aggregates

    def receive(self, msg: Message) -> None:
        self.inbox.append(msg)

    def train_step(self) -> tuple[Optional[float], int]:
        """One step on this round's inbox; returns (loss, images). ``fedavg``: the uploads'
        average becomes the server's (global) model, its EMA steps; returns (None, 0)."""
        msgs, self.inbox = self.inbox, []
        if not msgs:
            return None, 0
        if self.protocol.aggregates:
            load_flat(self.party.model, self.protocol.average(msgs))
            self.party.ema.step(self.party.model.parameters())
            self.global_unsent = True
            return None, 0
        x_t, t, target, labels = self.protocol.model_inputs(msgs, self.gen, self.party.device)
        return self.party.train_step(x_t, t, target, labels), int(x_t.shape[0])

    def state(self, recorder, transport) -> ServerState:
        """Its checkpointed state besides its model: its generator, the recorder, the counters."""
        return ServerState(gen=self.gen.get_state(), recorder=recorder.state_dict(),
                           transport={"messages": transport.messages, "bytes": transport.bytes},
                           global_unsent=self.global_unsent if self.protocol.aggregates else None)  # fmt: skip

    def load_state(self, s: ServerState, recorder, transport) -> None:
        """Restore :meth:`state` (a fedavg checkpoint from before ``global_unsent`` was sent right
        after each average: its clients already hold the global model)."""
        restore(self.gen, s.gen, "the server")
        if self.protocol.aggregates:
            self.global_unsent = bool(s.global_unsent)
        transport.messages = int(s.transport["messages"])
        transport.bytes = int(s.transport["bytes"])
        recorder.load_state_dict(s.recorder)


def server_class_embeds(cfg: Config, num_classes: int) -> Optional[int]:
    """Size of the server model's class embedding (``model.server_conditioning``)."""
    return make_conditioning(cfg.model.server_conditioning).class_embeds(cfg.data.clients, num_classes)


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


def make_server(cfg: Config, model, protocol: Protocol, device: torch.device) -> Server:
    """The server around its ``model``, with its own random stream."""
    return Server(Party(model, cfg.train, device), protocol, server_generator(cfg.seed, device))


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
        batcher = PoissonSampler(len(ids), min(1.0, cfg.train.batch_size / len(ids)), generator(secret, CLIENT_BATCHES))
    else:
        batcher = Batcher(len(ids), generator(secret, CLIENT_BATCHES))
    return Client(k=k, images=images.to(device), labels=labels.to(device), ids=ids, party=party,
                  gen=generator(secret, CLIENT_DRAWS, device=device), batcher=batcher, secret=secret,
                  order=generator(secret, CLIENT_ORDER),
                  releases=ReleaseAccountant(protocol_for(cfg), tuple(images.shape[1:]), len(ids)))  # fmt: skip


def _make_private(cfg: Config, party: Party, n: int, secret: int, device: torch.device):
    """Opacus DP-SGD for a client with ``n`` members; returns its Poisson sampler."""
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
        generator=generator(secret, CLIENT_DP_NOISE, device=device),
    )
    return PoissonSampler(n, q, generator(secret, CLIENT_BATCHES))


# ---- one client's round (in process and in a Flower client) ----------------------------------------
@dataclass
class ClientRound:
    """What one client's round produced: its local loss (None: no local image), how many images
    it trained on locally, the message it sent (None: nothing crossed) and, for the evaluation
    harness only, the ids of that message's rows (never sent)."""

    loss: Optional[float]
    local: int
    message: Optional[Message]
    ids: Optional[torch.Tensor]


@dataclass
class ClientDraw:
    """A client's draws of one round: the batch's positions among its members, the images (their
    labels and ids), a timestep and noise per image, and which images stay (``t < t_c``)."""

    pos: torch.Tensor
    x0: torch.Tensor
    y: torch.Tensor
    ids: torch.Tensor
    t: torch.Tensor
    eps: torch.Tensor
    local: torch.Tensor
    remote: torch.Tensor

    def local_batch(self, cut: Cut) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(x_t, t, eps)`` of the client's own steps ``t < t_c``: nothing of this leaves the client."""
        m = self.local
        return q_sample(self.x0[m], self.t[m], self.eps[m], cut.abar), self.t[m], self.eps[m]


def client_draw(c: Client, cfg: Config, protocol: Protocol, dev: torch.device) -> ClientDraw:
    """1. a batch of client ``c``'s members, a timestep and noise per image (from its own generators)."""
    cut = protocol.cut
    pos = c.batcher.next(cfg.train.batch_size)
    x0, y, ids = c.images[pos.to(dev)], c.labels[pos.to(dev)], c.ids[pos]
    t = randint(cut.T, len(pos), c.gen)  # on the generator's device (the party's)
    eps = randn(x0.shape, c.gen).to(dev)
    local, remote = (t < cut.t_c).to(dev), (t >= cut.t_c).to(dev)
    return ClientDraw(pos, x0, y, ids, t.to(dev), eps, local, remote)


def client_send(c: Client, d: ClientDraw, protocol: Protocol, loss: Optional[float]) -> ClientRound:
    """3. what crosses the cut for ``t >= t_c`` (DESIGN.md §1), its rows in a uniformly random order:
    neither the draw order nor the order of the client's data is sent. ``loss``: of its own step."""
    n_local, n_remote = int(d.local.sum()), int(d.remote.sum())
    if n_remote == 0:
        return ClientRound(loss, n_local, None, None)
    rows = protocol.shuffle_rows(d.remote, c.order)
    r = rows.to(d.x0.device)
    msg = protocol.encode(c.k, d.x0[r], d.t[r], d.eps[r], ids=d.ids[rows], secret=c.secret, labels=d.y[r])
    c.releases.step(d.pos[rows])
    return ClientRound(loss, n_local, msg, d.ids[rows])


def client_round(c: Client, cfg: Config, protocol: Protocol, dev: torch.device) -> ClientRound:
    """Client ``c``'s part of one round: draw, train its own steps, encode what crosses the cut.

    Touches only the client's own state (its generators, batcher, model, release counts); never
    waits on the server, so a client can run many rounds ahead of it (the Flower apps do). With
    ``train.batched_clients`` the in-process trainer runs the three parts for all clients at once
    (``loop.py``, ``batched.py``): each client's streams are its own, so the draws are the same.
    """
    d = client_draw(c, cfg, protocol, dev)
    loss = c.party.train_step(*d.local_batch(protocol.cut))  # 2. the client's own steps
    return client_send(c, d, protocol, loss)


# ---- fedavg: the uploads and the global model sent back ------------------------------------------
def uploads_due(cfg: Config, step: int) -> bool:
    """Round ``step`` (1-based) ends with an upload: every ``train.local_steps`` rounds and at the last."""
    return step % cfg.train.local_steps == 0 or step == cfg.train.steps


def client_upload(c: Client, protocol: Protocol) -> Message:
    """Client ``c``'s upload: its model's parameters and its member count (``fedavg``)."""
    return protocol.upload(c.k, c.party.model, len(c.ids))


def receive_global(c: Client, w: torch.Tensor) -> None:
    """Client ``c`` continues from the global model ``w`` (its optimiser state and EMA are its own)."""
    load_flat(c.party.model, w)

