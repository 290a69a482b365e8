"""The federated baseline over Flower: ``protocol.kind: fedavg`` on Flower's own ``FedAvg`` strategy.

A Flower round is one upload period. The strategy sends every client node the global model
(``ArrayRecord`` ``arrays``: ``w``, the parameters flattened) with ``{"start", "rounds", "global"}``;
each client loads it (``global``: the message starts after an average), trains ``rounds`` rounds
on its own (:meth:`~.nodes.ClientNode.train_local`) and answers with its upload (``arrays``:
``w``) and its member count (``MetricRecord`` ``num-examples``, FedAvg's weight) and its id
(``ConfigRecord`` ``client``: the uploads are named by client in the server's view anyway).

The average is Flower's: :meth:`CollaFuseFedAvg.aggregate_train` puts the replies in client order
and calls ``FedAvg.aggregate_train`` (``aggregate_arrayrecords``), the server replays the rounds
and averages the same uploads itself (``ServerRounds``, as in process), and the two must be the
same bits (:meth:`~.nodes.ServerNode.check_average`), so the run equals the in-process one.

Every client takes part in every round (``fraction_train=1``); a client that does not answer
within ``round-timeout`` seconds ends the run in one line, and the same command resumes it from
the last checkpoint (the parties' own).
"""

from __future__ import annotations

from typing import Iterable

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from ..errors import UserError
from ..protocol.fedavg import flat_parameters
from .nodes import ClientNode, ServerNode
from .plan import chunk_end

WEIGHT = "num-examples"  # FedAvg's weight: the client's member count
DEFAULT_ROUND_TIMEOUT = 3600.0


def arrays(w: torch.Tensor) -> ArrayRecord:
    """A flat parameter vector as the ``ArrayRecord`` FedAvg averages (one array, ``w``)."""
    return ArrayRecord(torch_state_dict={"w": w.detach().reshape(-1).cpu().contiguous()})


def messages_left(server: ServerNode) -> int:
    """Flower rounds (upload periods) from the server's round to the last."""
    step, n = server.step, 0
    while step < server.cfg.train.steps:
        step, n = chunk_end(step, server.plan, server.cfg), n + 1
    return n


def reason(reply: Message) -> str:
    """A failed reply's reason in one line."""
    text = (reply.error.reason or "").strip().splitlines()
    return text[-1] if text else f"error code {reply.error.code}"


class CollaFuseFedAvg(FedAvg):
    """Flower's ``FedAvg`` with every client in every round, the replies put in client order
    before Flower averages them, and the server's own record of each round."""

    def __init__(self, server: ServerNode, timeout: float):
        k = server.plan.clients
        super().__init__(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=k, min_evaluate_nodes=0,
                         min_available_nodes=k, weighted_by_key=WEIGHT)  # fmt: skip
        self.server, self.timeout = server, timeout

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:  # fmt: skip
        start, n = self.server.next_message()
        # ``arrays`` is the server's model: its initial one, then each average (check_average)
        cfg = ConfigRecord({"start": start, "rounds": n, "global": self.server.global_model() is not None})
        return super().configure_train(server_round, arrays, cfg, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        start, n = self.server.next_message()
        ordered = self._in_client_order(list(replies), f"rounds {start + 1}..{start + n}")
        agg, metrics = super().aggregate_train(server_round, ordered)  # Flower's own weighted average
        per = []
        for k, r in enumerate(ordered):
            up = self.server.protocol.upload_of(k, r.content.array_records["arrays"].to_torch_state_dict()["w"],
                                                int(r.content.metric_records["metrics"][WEIGHT]))  # fmt: skip
            per.append([None] * (n - 1) + [up.tensors()])
        self.server.process(per)  # the rounds replayed; the server averages the uploads itself
        self.server.check_average(agg.to_torch_state_dict()["w"])
        print(f"server: round {self.server.step}/{self.server.cfg.train.steps} (FedAvg)", flush=True)
        return agg, metrics

    def _in_client_order(self, replies: list[Message], what: str) -> list[Message]:
        clients = self.server.plan.clients
        by_client: dict[int, Message] = {}
        for r in replies:
            if r.has_error():
                raise UserError(f"a client failed during {what}: {reason(r)} (rerun the same command to resume)")
            status = r.content.config_records.get("status")
            if status is not None and "error" in status:
                raise UserError(str(status["error"]))
            k = int(r.content.config_records["client"]["client"])
            if k in by_client:
                raise UserError(f"two client nodes say they are client {k}: give each SuperNode its own partition-id")
            by_client[k] = r
        missing = sorted(set(range(clients)) - set(by_client))
        if missing:
            raise UserError(f"client(s) {missing} did not answer {what} within {self.timeout:g} s: start their "
                            "SuperNodes (--node-config partition-id=K) and rerun the same command to resume")  # fmt: skip
        return [by_client[k] for k in range(clients)]


def train_fedavg(grid: Grid, server: ServerNode, timeout: float = DEFAULT_ROUND_TIMEOUT) -> int:
    """Train a fedavg run to its last round with Flower's ``FedAvg`` strategy (resuming at the
    server's last checkpoint); returns the Flower rounds it ran."""
    left = messages_left(server)
    if left:
        strategy = CollaFuseFedAvg(server, timeout)
        strategy.start(grid, arrays(flat_parameters(server.server.party.model)), num_rounds=left, timeout=timeout)
    return left


def client_reply(msg: Message, node: ClientNode, who: ConfigRecord) -> Message:
    """A client's answer to a FedAvg training message: its upload, member count and id."""
    cfg = msg.content.config_records["config"]
    w = msg.content.array_records["arrays"].to_torch_state_dict()["w"] if bool(cfg["global"]) else None
    up = node.train_local(int(cfg["start"]), int(cfg["rounds"]), w)
    return Message(RecordDict({"arrays": arrays(up.w[0]), "metrics": MetricRecord({WEIGHT: int(up.n.reshape(-1)[0])}),
                               "client": who}), reply_to=msg)  # fmt: skip
