"""The Flower apps: a ``ServerApp`` that is the CollaFuse server and a ``ClientApp`` that is one client.

What travels (Flower ``Message`` API, flwr >= 1.20):

* server -> client ``query.identify``: nothing; the client answers with its id (``partition-id``
  of its SuperNode), which the protocol's messages carry anyway (``Message.client``).
* server -> client ``train``: ``{"start", "rounds"}``; the client answers with one ``ArrayRecord``
  per round that crossed the cut, named ``r<i>``, holding exactly ``Message.tensors()`` of that
  round (``x``; ``t``, ``eps`` in shared-noise; ``labels`` only where configured). Nothing else:
  no ids, no losses, no counts beyond the rows themselves.
* fedavg (``strategy.py``): Flower's own ``FedAvg`` strategy, one Flower round per upload period.
* server -> client ``query.finish``: the client's hand-over images (``ArrayRecord`` ``h``) and
  ``{"n", "seed"}``; the client finishes sampling and keeps its outputs (the reply is empty).

A cut-image or shared-noise client never waits on the server during training, so one message
carries ``rounds_per_message`` rounds (default ``train.checkpoint_every``): a deployment starts a
ClientApp process per message, seconds each, which must not be paid per round.

Failures: a client's :class:`UserError` (bad id, foreign folder, data that do not match the run's
splits, a non-finite loss) comes back as its reply's ``error`` text and ends the run with that
line; a client whose SuperNode went away is waited for (``node-timeout`` seconds) and, if it
comes back (a restarted SuperNode), resumes from its own last checkpoint, so the run still ends
bit-identical. The outcome is written to ``flower/result.json`` for the launcher.
"""

from __future__ import annotations

import sys
import time
import traceback
from pathlib import Path
from typing import Optional

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from ..errors import UserError
from ..io import atomic_write_json
from ..run.layout import FLOWER_RESULT, PARTY_ASSIGNMENT, client_name, party_dir
from .nodes import ClientNode, ServerNode
from .strategy import DEFAULT_ROUND_TIMEOUT, client_reply, reason as _reason, train_fedavg

DEFAULT_NODE_TIMEOUT = 120.0
# reply errors that mean "the node or message went away", not "the client failed"
_GONE = (3, 4, 5)  # flwr.common.constant.ErrorCode: MESSAGE_, REPLY_MESSAGE_, NODE_UNAVAILABLE


def _settings(context: Context, defaults: dict) -> dict:
    out = dict(defaults)
    out.update({k: v for k, v in context.run_config.items()})
    if "run-dir" not in out:
        raise UserError("the Flower run has no run-config 'run-dir' (start it with `collafuse-privacy flower run`, or "
                        "`flwr run --run-config run-dir=...`)")  # fmt: skip
    return out


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _write_result(run_dir, **fields) -> None:
    atomic_write_json(Path(run_dir) / FLOWER_RESULT, {"time": time.time(), **fields})


# ---- the server ---------------------------------------------------------------------------------------
class _Clients:
    """Talks to the client nodes: which Flower node is which client is learnt from their replies
    (every reply names its client), so a restarted SuperNode (a new node id) is simply asked again."""

    def __init__(self, grid: Grid, clients: int, timeout: float):
        self.grid, self.clients, self.timeout = grid, clients, timeout
        self.node: dict[int, int] = {}

    def ask(self, kind: str, content_for, what: str) -> dict[int, Message]:
        """Send a request to every client and return its reply, by client.

        ``content_for(k)`` builds client ``k``'s request, or ``content_for(None)`` one request for
        any node whose client is not known yet (it names its client in the reply). A client whose
        node goes away is asked again when a node for it comes back; none within ``timeout``
        seconds: UserError.
        """
        pending, replies = set(range(self.clients)), {}
        asked: dict[str, int] = {}  # message id -> node
        contacted: set[int] = set()
        short_since: Optional[float] = None
        while pending:
            alive = set(self.grid.get_node_ids())
            targets = self._targets(alive - contacted, pending, kind, content_for)
            if targets:
                msgs = [Message(c, dst_node_id=n, message_type=t) for n, (c, t) in targets.items()]
                for n, mid in zip(targets, self.grid.push_messages(msgs)):
                    asked[mid] = n
                contacted |= set(targets)
            for r in self.grid.pull_messages(list(asked)):
                n = asked.pop(r.metadata.reply_to_message_id, None)
                if n is not None and self._take(r, n, alive, pending, replies, what):
                    contacted.discard(n)  # gone (ask again whoever answers for it), or now known
            # a node that went away (no heartbeat) is not waited for; a new one is asked instead
            for mid, n in list(asked.items()):
                if n not in alive:
                    del asked[mid]
            short_since = self._waiting(pending, asked, short_since, what)
            if pending:
                time.sleep(0.2)
        return replies

    def _targets(self, fresh: set[int], pending: set[int], kind: str, content_for) -> dict[int, tuple]:
        """``node -> (content, message type)`` for the nodes not asked yet: a known client's
        request, or, for an unknown node, ``content_for(None)`` or ``query.identify``."""
        targets = {}
        for n in fresh:
            k = next((k for k, m in self.node.items() if m == n), None)
            if k is None:
                c = content_for(None)
                targets[n] = (c, kind) if c is not None else (RecordDict(), "query.identify")
            elif k in pending:
                targets[n] = (content_for(k), kind)
        return targets

    def _take(self, r: Message, n: int, alive: set[int], pending: set[int], replies: dict, what: str) -> bool:
        """Take node ``n``'s reply ``r``; True when ``n`` is to be asked again (it went away, or
        it only said who it is)."""
        if r.has_error():
            if r.error.code in _GONE or n not in alive:
                return True
            raise UserError(f"a client failed during {what}: {_reason(r)}")
        status = r.content.config_records.get("status")
        if status is not None and "error" in status:
            raise UserError(str(status["error"]))
        k = int(r.content.config_records["client"]["client"])
        if k in self.node and self.node[k] != n and self.node[k] in alive and k not in pending:
            raise UserError(f"two client nodes say they are client {k}: give each SuperNode its own partition-id")
        self.node[k] = n
        if r.metadata.message_type == "query.identify":
            return True
        if k in pending:
            replies[k] = r
            pending.discard(k)
        return False

    def _waiting(self, pending: set[int], asked: dict, short_since: Optional[float], what: str) -> Optional[float]:
        """Since when fewer nodes are asked than clients are pending (None: not short); UserError
        after ``timeout`` seconds of it."""
        if not (pending and len(set(asked.values())) < len(pending)):
            return None
        short_since = short_since or time.monotonic()
        if time.monotonic() - short_since > self.timeout:
            raise UserError(f"client(s) {sorted(pending)} have no node during {what} (none connected, or it went away "
                            f"and did not come back within {self.timeout:g} s): start their SuperNodes "
                            "(--node-config partition-id=K) and rerun the same command to resume")  # fmt: skip
        return short_since


def _rounds(reply: Message, rounds: int) -> list[Optional[dict]]:
    out: list[Optional[dict]] = [None] * rounds
    for name, rec in reply.content.array_records.items():
        i = int(name[1:])
        if not 0 <= i < rounds:
            raise UserError(f"a client sent round {i} of a {rounds}-round message")
        out[i] = rec.to_torch_state_dict()
    return out


def _train_split(server: ServerNode, nodes: _Clients) -> None:
    """CollaFuse: every client runs a message's rounds and sends what crossed; the server replays them."""
    total = server.cfg.train.steps
    while not server.done:
        start, n = server.next_message()
        cfg = ConfigRecord({"start": start, "rounds": n})
        replies = nodes.ask("train", lambda k: RecordDict({"config": cfg}), f"rounds {start + 1}..{start + n}")
        server.process([_rounds(replies[k], n) for k in range(server.plan.clients)])
        log(f"server: round {server.step}/{total}")


def server_main(grid: Grid, context: Context, defaults: dict) -> None:
    s = _settings(context, defaults)
    run_dir = Path(s["run-dir"])
    try:
        server = ServerNode(run_dir, s.get("device", "cpu"))
        nodes = _Clients(grid, server.plan.clients, float(s.get("node-timeout", DEFAULT_NODE_TIMEOUT)))
        if server.step:
            log(f"server: resuming at round {server.step} of {server.cfg.train.steps}")
        extra = {}
        if server.protocol.aggregates:  # fedavg: on Flower's own FedAvg strategy
            extra["flower_fedavg_rounds"] = train_fedavg(grid, server, float(s.get("round-timeout", DEFAULT_ROUND_TIMEOUT)))
        else:
            _train_split(server, nodes)
        if bool(s.get("sample", True)):
            sample_n, seed = server.cfg.sample.n, server.cfg.seed
            h = server.handovers(sample_n, seed)

            def finish(k):
                if k is None:
                    return None  # the hand-over images are per client: ask who it is first
                rec = RecordDict({"config": ConfigRecord({"n": sample_n, "seed": seed})})
                if h is not None:
                    rec["handover"] = ArrayRecord(torch_state_dict={"h": h[k].contiguous()})
                return rec

            nodes.ask("query.finish", finish, "sampling")
            log(f"server: {sample_n} hand-over images per client sent; the clients finished sampling")
        _write_result(run_dir, ok=True, step=server.step, **extra)
    except UserError as exc:
        _write_result(run_dir, ok=False, error=str(exc))
        raise
    except Exception as exc:  # noqa: BLE001 - the launcher gets one line, the log the traceback
        _write_result(run_dir, ok=False, error=f"the server failed: {type(exc).__name__}: {exc}")
        traceback.print_exc()
        raise


# ---- a client ----------------------------------------------------------------------------------------
_CACHE: dict[tuple, ClientNode] = {}  # simulation: a ClientApp's process outlives a message


def _client(context: Context, defaults: dict) -> ClientNode:
    s = _settings(context, defaults)
    nc = context.node_config
    if "partition-id" not in nc:
        raise UserError("this SuperNode has no partition-id: start it with --node-config 'partition-id=K'")
    folder = Path(nc.get("client-dir") or party_dir(s["run-dir"], client_name(nc["partition-id"])))
    stamp = (folder / PARTY_ASSIGNMENT).stat().st_mtime_ns if (folder / PARTY_ASSIGNMENT).is_file() else None
    # a cached client is the same client of the same prepared run (prepare rewrites its assignment)
    key = (str(s["run-dir"]), str(nc["partition-id"]), str(folder), str(nc.get("data", "")), stamp)
    node = _CACHE.get(key)
    if node is None:
        node = ClientNode(s["run-dir"], nc["partition-id"], s.get("device", "cpu"), nc.get("client-dir") or None,
                          nc.get("data") or None)  # fmt: skip
        _CACHE.clear()
        _CACHE[key] = node
    return node


def _error_reply(msg: Message, exc: UserError) -> Message:
    _CACHE.clear()
    return Message(RecordDict({"status": ConfigRecord({"error": str(exc)})}), reply_to=msg)


def _who(node: ClientNode) -> ConfigRecord:
    return ConfigRecord({"client": node.k})


def client_identify(msg: Message, context: Context, defaults: dict) -> Message:
    try:
        node = _client(context, defaults)
    except UserError as exc:
        return _error_reply(msg, exc)
    return Message(RecordDict({"client": _who(node)}), reply_to=msg)


def client_train(msg: Message, context: Context, defaults: dict) -> Message:
    cfg = msg.content.config_records["config"]
    try:
        node = _client(context, defaults)
        if "arrays" in msg.content.array_records:  # fedavg: Flower's FedAvg round (strategy.py)
            return client_reply(msg, node, _who(node))
        sent = node.run(int(cfg["start"]), int(cfg["rounds"]))
    except UserError as exc:
        return _error_reply(msg, exc)
    out = RecordDict({"client": _who(node)})
    for i, m in enumerate(sent):
        if m is not None:
            out[f"r{i}"] = ArrayRecord(torch_state_dict={k: v.detach().cpu().contiguous() for k, v in m.tensors().items()})
    return Message(out, reply_to=msg)


def client_finish(msg: Message, context: Context, defaults: dict) -> Message:
    cfg = msg.content.config_records["config"]
    h = None
    if "handover" in msg.content.array_records:
        h = msg.content.array_records["handover"].to_torch_state_dict()["h"]
    try:
        node = _client(context, defaults)
        node.finish(h, int(cfg["n"]), int(cfg["seed"]))
    except UserError as exc:
        return _error_reply(msg, exc)
    return Message(RecordDict({"client": _who(node)}), reply_to=msg)


def make_apps(defaults: Optional[dict] = None) -> tuple[ServerApp, ClientApp]:
    """A ``(ServerApp, ClientApp)`` pair; ``defaults`` stand in for the run config (the simulation
    engine's ``run_simulation`` passes none)."""
    defaults = dict(defaults or {})
    server_app, client_app = ServerApp(), ClientApp()

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        server_main(grid, context, defaults)

    @client_app.query("identify")
    def _identify(msg: Message, context: Context) -> Message:
        return client_identify(msg, context, defaults)

    @client_app.train()
    def _train(msg: Message, context: Context) -> Message:
        return client_train(msg, context, defaults)

    @client_app.query("finish")
    def _finish(msg: Message, context: Context) -> Message:
        return client_finish(msg, context, defaults)

    return server_app, client_app


# the apps a deployment loads by name (flower/app/pyproject.toml: collafuse_privacy.flower.apps:server_app)
# (one name per assignment: `flwr run` finds them by static analysis of this file)
_APPS = make_apps()
server_app = _APPS[0]
client_app = _APPS[1]
