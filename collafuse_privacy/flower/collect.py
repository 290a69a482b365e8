"""The evaluation harness's last step of a Flower run: join the parties' own records into the
standard run layout (``checkpoints/``, ``ground_truth/``, ``metrics/``, ``samples/``), so that
``evaluate``, ``attack`` and ``report`` read a Flower run exactly like an in-process one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors import safe_open

from ..checkpoint import TrainingState, commit_step_dir, damage, new_step_dir
from ..config import Config
from ..errors import UserError
from ..io import atomic_write_text, load_state, load_tensors, save_state, save_tensors
from ..protocol import PROTOCOLS
from ..run.directory import RunDir
from ..run.layout import (CHECKPOINTS, PARTY_LOG, PARTY_SAMPLES, PARTY_SENT, SERVER, SHARD_RE, STATE, client_name, party_dir,
                          party_file, step_name)
from ..sampling import write_samples
from ..training import train
from ..view import list_shards
from .plan import Plan, read_plan


def collect(run_dir, quiet: bool = True) -> dict:
    """After a finished Flower run: write the standard run layout from the parties' own records.

    ``checkpoints/step-N/`` with every party's weights (the files as the parties wrote them) and
    the joint training state, so the run resumes in-process like any other; ``ground_truth/``
    (the clients' records of what they sent, aligned with the view's rows); ``metrics/train.jsonl``;
    ``metrics/privacy.json``; and, when the clients sampled, ``samples/``.
    """
    run_dir = Path(run_dir)
    rd, plan = RunDir(run_dir), read_plan(run_dir)
    cfg = rd.config()
    total = cfg.train.steps
    parties = [SERVER] + [client_name(k) for k in range(plan.clients)]
    dirs = {}
    for p in parties:
        d = party_dir(run_dir, p) / CHECKPOINTS / step_name(total)
        why = damage(d) if d.is_dir() else "it does not exist (the run has not finished)"
        if why is not None:
            raise UserError(f"{p}'s checkpoint of the last round {d} cannot be used: {why}")
        dirs[p] = d
    state = TrainingState.joined([TrainingState.from_dict(load_state(dirs[p] / STATE)) for p in parties],
                                 plan.clients)  # fmt: skip
    tmp = new_step_dir(rd, total)
    for p in parties:
        for ema in (False, True):
            shutil.copyfile(dirs[p] / party_file(p, ema), tmp / party_file(p, ema))
    save_state(tmp / STATE, state.to_dict())
    commit_step_dir(rd, total, tmp)
    if not PROTOCOLS.get(cfg.protocol.kind).aggregates:  # fedavg: no image rows, no ground truth
        _ground_truth(run_dir, plan)
    _train_log(run_dir, plan)
    # The in-process trainer opens the joined checkpoint (a check that it is one) and writes the
    # run's formal privacy, exactly as at the end of an in-process run.
    summary = train(cfg, run_dir, device="cpu", quiet=quiet)
    sampled = _samples(run_dir, plan, cfg)
    return {**summary, "sampled": sampled}


def _truth_rows(v: dict, logs: list) -> list[torch.Tensor]:
    """The ids of a view shard's rows ``v``, from the clients' records ``logs[k] = (ids, rounds)``."""
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
    return out


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
        save_tensors(truth / f.name, {"image_id": torch.cat(_truth_rows(load_tensors(f), logs))})
    if truth.is_dir():
        names = {f.name for f in list_shards(RunDir(run_dir).view_train_dir)}
        for f in truth.iterdir():
            if SHARD_RE.search(f.name) and f.name not in names:
                f.unlink()


def _rows(path: Path) -> dict[int, dict]:
    if not path.is_file():
        return {}
    return {r["step"]: r for r in map(json.loads, path.read_text().splitlines()) if r}


def _train_log(run_dir: Path, plan: Plan) -> None:
    """``metrics/train.jsonl`` from the server's and the clients' own logs."""
    server = _rows(party_dir(run_dir, SERVER) / PARTY_LOG)
    clients = [_rows(party_dir(run_dir, k) / PARTY_LOG) for k in range(plan.clients)]
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
    files = [party_dir(run_dir, k) / PARTY_SAMPLES for k in range(plan.clients)]
    if not all(f.is_file() for f in files):
        return False
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
