"""CollaFuse training in one process: N clients and one server, round by round.

Each round every client runs its part (``parties.client_round``): it trains its own model on
its images with ``t < t_c`` and sends the others across the cut. After all clients have sent,
the server takes one optimiser step on what it received this round (``driver.ServerRounds``).
Every image is thus seen by exactly one denoiser, so the total denoiser work equals a plain DDPM
loop over the same images.

Everything random draws from a ``torch.Generator`` (one per party, one per client batcher) whose
state is checkpointed (``checkpoint.TrainingState``); a resumed run is bit-identical to an
uninterrupted one on the CPU.

Batches: ``train.sampling: shuffle`` walks seeded epochs over a client's members; ``poisson``
draws each member independently at rate ``train.batch_size / members`` per round (the batch size
varies; an empty batch trains nothing and sends nothing). Both draw from the client's secret,
which the unlinked epsilon rests on (``defenses/unlinked.py``).

Defences (DESIGN.md §4, ``defenses/``): with ``defense.client_dp.enabled`` each client's
:class:`~collafuse_privacy.party.Party` is made private with Opacus DP-SGD and draws its batch by
Poisson sampling at rate ``train.batch_size / members``. ``protocol.target_epsilon`` is resolved
into a cut before the trainer starts (``resolve.py``). Every run ends by writing
``metrics/privacy.json`` (``privacy.py``).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Callable, Optional

from tqdm import tqdm

from ..checkpoint import TrainingState, load_checkpoint, save_checkpoint
from ..run.layout import SERVER, client_name
from ..client_secrets import Secrets
from ..config import Config
from ..errors import UserError
from ..io import truncate_jsonl
from ..lock import locked
from ..models import num_params
from ..party import Party
from ..view import seal_view
from .driver import ServerRounds
from .batched import batched_clients, batched_train_steps
from ..protocol.fedavg import flat_parameters
from .parties import client_dp_on, client_draw, client_round, client_send, client_upload, receive_global, uploads_due
from .privacy import DPClients, write_privacy
from .session import Session, refuse_audit_dir


class Trainer:
    """Runs (or resumes) the training of a :class:`Session` in its run directory."""

    def __init__(self, session: Session):
        self.session = s = session
        self.cfg, self.run_dir, self.rd, self.device, self.quiet = s.cfg, s.run_dir, s.rd, s.device, s.quiet
        self.cut, self.protocol = s.cut, s.protocol
        p = s.start()
        self.server, self.clients, self.recorder, self.transport = p.server, p.clients, p.recorder, p.transport
        self.resumed = s.resumed
        self.rounds = ServerRounds(self.cfg, self.server, self.recorder, self.transport, self.rd,
                                   self.rd.train_log_path, self.save_checkpoint)  # fmt: skip
        self.dp = DPClients(self.cfg, self.clients) if client_dp_on(self.cfg) else None
        self.counts_complete = True
        if self.resumed:
            self._load_latest()
            self.rd.write_config(self.cfg)  # train.steps may have grown
        if self.dp is not None:
            self.dp.check_budget(self.step)
        if s.cut_choice is not None and not self.quiet:
            print(s.cut_choice.message, file=sys.stderr)

    @property
    def step(self) -> int:
        """Rounds done."""
        return self.rounds.step

    # ---- the loop -----------------------------------------------------------
    def train_round(self) -> dict:
        """One round: every client trains locally and sends; then the server steps (logged and
        checkpointed on the schedule)."""
        t0 = time.perf_counter()
        row = {"step": self.step + 1, "client_loss": [], "client_n": [], "sent": []}
        if self.server.global_unsent:  # fedavg: the last average (at first the initial model) goes to every client
            self._send_global()
        if batched_clients(self.cfg.train.batched_clients, self.device):
            draws = [client_draw(c, self.cfg, self.protocol, self.device) for c in self.clients]
            losses = batched_train_steps([c.party for c in self.clients], [d.local_batch(self.cut) for d in draws])
            results = [client_send(c, d, self.protocol, x) for c, d, x in zip(self.clients, draws, losses)]
        else:
            results = [client_round(c, self.cfg, self.protocol, self.device) for c in self.clients]
        for r in results:
            row["client_loss"].append(r.loss)
            row["client_n"].append(r.local)
            row["sent"].append(len(r.message) if r.message is not None else 0)
        msgs, truth = [r.message for r in results], [r.ids for r in results]
        if self.protocol.aggregates and uploads_due(self.cfg, self.step + 1):  # fedavg: nothing else crosses
            msgs, truth, row["sent"] = [client_upload(c, self.protocol) for c in self.clients], None, [1] * len(msgs)
        return self.rounds.run_round(row, msgs, t0, truth=truth, client_losses=row["client_loss"], extra=self._dp_row)

    def _send_global(self) -> None:
        """fedavg: every client continues from the server's global model (a checkpoint holds each
        party's own model: the clients' last local models, the server's average, not yet sent)."""
        w = flat_parameters(self.server.party.model)
        for c in self.clients:
            receive_global(c, w)
        self.server.global_unsent = False

    def _dp_row(self, step: int) -> dict:
        """The DP clients' epsilon spent, every ``defense.client_dp.log_every`` rounds and at the last."""
        if self.dp is None:
            return {}
        if step % self.cfg.defense.client_dp.log_every == 0 or step == self.cfg.train.steps:
            return {"client_dp_epsilon": self.dp.epsilons()}
        return {}

    def train(self, on_round: Optional[Callable[[int], None]] = None) -> dict:
        """Train until ``train.steps`` rounds are done, checkpointing on the way."""
        total = self.cfg.train.steps
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
        ema_s = ema_c = None
        while self.step < total:
            row = self.train_round()
            cl = [x for x in row["client_loss"] if x is not None]
            if row["server_loss"] is not None:
                ema_s = row["server_loss"] if ema_s is None else 0.95 * ema_s + 0.05 * row["server_loss"]
            if cl:
                m = sum(cl) / len(cl)
                ema_c = m if ema_c is None else 0.95 * ema_c + 0.05 * m
            bar.update(1)
            bar.set_postfix(server=f"{ema_s:.4f}" if ema_s is not None else "-",
                            client=f"{ema_c:.4f}" if ema_c is not None else "-")  # fmt: skip
            if on_round is not None:
                on_round(self.step)

    # ---- checkpoints ----------------------------------------------------------
    def parties(self) -> list[tuple[str, Party]]:
        return [(SERVER, self.server.party)] + [(client_name(c.k), c.party) for c in self.clients]

    def state(self) -> TrainingState:
        """The run's training state now (the parties' optimiser states are added on saving)."""
        return TrainingState(self.step, server=self.server.state(self.recorder, self.transport),
                             clients=[c.state() for c in self.clients])  # fmt: skip

    def save_checkpoint(self) -> None:
        self.recorder.flush()
        save_checkpoint(self.rd, self.parties(), self.state(), self.cfg.train.keep_checkpoints)
        self.seal_view()

    def seal_view(self) -> None:
        """``server_view/manifest.json`` last: what ``ServerView.load`` verifies (view.py)."""
        seal_view(self.run_dir, self.step, self.recorder.count, self.cfg)

    def _load_latest(self) -> None:
        loaded = load_checkpoint(self.rd, self.parties())
        if loaded is None:
            self._rewind(0)
            return
        d, state, note = loaded
        if note and not self.quiet:
            print(note, file=sys.stderr)
        try:
            if state.clients is None or state.server is None or len(state.clients) != len(self.clients):
                raise ValueError("not a whole run's state")
            self.counts_complete = state.counts_complete  # checkpoints from before counting
            for c, s in zip(self.clients, state.clients):
                c.load_state(s)
            self.server.load_state(state.server, self.recorder, self.transport)
            self.rounds.step = state.step
        except (RuntimeError, KeyError, ValueError, TypeError):
            raise UserError(f"checkpoint {d}/state.pt does not fit this run") from None
        self._rewind(self.step)

    def _rewind(self, step: int) -> None:
        """Drop log rows and view shards written after ``step`` (an interrupted tail)."""
        truncate_jsonl(self.rd.train_log_path, lambda r: r.get("step", 0) <= step)
        if step == 0:
            self.recorder.load_state_dict({"count": 0, "round": 0})

    def write_privacy(self):
        """``metrics/privacy.json``: formal epsilon of the server's view and of DP clients."""
        s = self.session
        return write_privacy(self.rd, self.cfg, tuple(s.data.shape), s.cut_choice, self.clients, self.step,
                             counts_complete=self.counts_complete, dp_on=self.dp is not None)  # fmt: skip


def train(cfg: Config, run_dir: str | Path, device: str = "auto", quiet: bool = False, on_round=None,
          secrets: Optional[Secrets] = None) -> dict:  # fmt: skip
    """Resolve ``cfg``, then train (or resume) the run in ``run_dir``; returns a small summary.

    ``secrets``: the clients' secrets for a new run (default: new ones, ``client_secrets.py``).
    """
    refuse_audit_dir(run_dir)
    session = Session.resolve(cfg, run_dir, secrets, device, quiet)  # bad input fails here, before the folder exists
    with locked(run_dir):
        return Trainer(session).train(on_round=on_round)
