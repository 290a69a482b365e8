"""The server's side of a training round, one driver for every deployment.

:class:`ServerRounds` receives a round's messages in client order, takes the server's step,
refuses a non-finite loss (nothing of that round is saved: the last checkpoint stays the resume
point), closes the round in the view recorder, appends the round's ``train.jsonl`` row and
checkpoints on the schedule (every ``train.checkpoint_every`` rounds and at the last). The
in-process trainer (``loop.py``) and a Flower server (``flower/nodes.py``) both drive it; they
differ only in what they checkpoint and what else their row holds.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Iterable, Optional

import torch

from ..config import Config
from ..errors import UserError
from ..io import append_jsonl
from ..protocol import Message, Transport
from ..run.directory import RunDir
from ..view import ViewRecorder
from .parties import Server


def check_losses(step: int, losses: Iterable[tuple[str, Optional[float]]], rd: RunDir) -> None:
    """A non-finite loss ends training at round ``step``: nothing of it is saved, the last
    checkpoint (of ``rd``) stays the resume point."""
    for who, x in losses:
        if x is not None and not math.isfinite(x):
            last = rd.latest()
            raise UserError(
                f"round {step}: the {who} loss is {x}; training stopped, nothing of this round was saved "
                f"({'the last checkpoint is round ' + str(last.step) if last else 'no checkpoint yet'}). The same "
                "config will diverge again: lower train.lr or check the data"
            )


def at_checkpoint(cfg: Config, step: int) -> bool:
    """Round ``step`` ends with a checkpoint (every ``train.checkpoint_every`` rounds, and the last)."""
    return step % cfg.train.checkpoint_every == 0 or step == cfg.train.steps


class ServerRounds:
    """Drives the server through rounds: ``step`` is the rounds done; ``rd`` is where its
    ``train.jsonl`` and checkpoints go; ``save()`` writes its checkpoint of round ``step``."""

    def __init__(self, cfg: Config, server: Server, recorder: ViewRecorder, transport: Transport, rd: RunDir,
                 log_path, save: Callable[[], None], step: int = 0):  # fmt: skip
        self.cfg, self.server, self.recorder, self.transport = cfg, server, recorder, transport
        self.rd, self.log_path, self.save, self.step = rd, log_path, save, step

    def deliver(self, msgs: list[Optional[Message]], truth: Optional[list[Optional[torch.Tensor]]] = None) -> None:
        """This round's messages, in client order (None: nothing crossed); ``truth``: the ids of
        each message's rows, for the evaluation harness (in process only)."""
        for k, msg in enumerate(msgs):
            if msg is not None:
                self.transport.send(msg)
                if truth is not None:
                    self.recorder.attach_truth(truth[k])

    def server_step(self, row: dict) -> dict:
        """The server's step on what was delivered; closes the round (``row`` gets its loss)."""
        row["server_loss"], row["server_n"] = self.server.train_step()
        self.recorder.end_round()
        self.step += 1
        return row

    def record(self, row: dict, t0: float, client_losses: Iterable[Optional[float]] = ()) -> dict:
        """Check the round's losses, then its log row and, on the schedule, the checkpoint."""
        losses = [("server", row["server_loss"])] + [(f"client {k}", x) for k, x in enumerate(client_losses)]
        check_losses(row["step"], losses, self.rd)
        row["seconds"] = round(time.perf_counter() - t0, 4)
        append_jsonl(self.log_path, [row])
        if at_checkpoint(self.cfg, self.step):
            self.save()
        return row

    def run_round(self, row: dict, msgs: list[Optional[Message]], t0: float, truth=None, client_losses=(),
                  extra: Optional[Callable[[int], dict]] = None) -> dict:  # fmt: skip
        """One whole round of the server: deliver, step, ``extra(step)`` into the row, check the
        losses, log, checkpoint. ``t0``: when the round began (its row's ``seconds``)."""
        self.deliver(msgs, truth)
        self.server_step(row)
        if extra is not None:
            row.update(extra(self.step))
        return self.record(row, t0, client_losses)
