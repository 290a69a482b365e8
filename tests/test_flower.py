"""CollaFuse over Flower (issue 15): the parties alone, then the Flower apps.

The first tests need no Flower: they drive ``flower.nodes`` (the server and each client with
only their own state and disk) by hand and check that the run is bit-identical to the in-process
one. The tests marked ``flower`` run the real engines (simulation, and a localhost deployment with
a SuperNode killed mid-training); they are skipped where the extra is not installed.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from collafuse_privacy.errors import UserError
from collafuse_privacy.flower.collect import collect
from collafuse_privacy.flower.nodes import ClientNode, ServerNode
from collafuse_privacy.flower.plan import party_dir, prepare
from collafuse_privacy.io import load_state, load_tensors
from collafuse_privacy.training import train

try:
    import flwr  # noqa: F401

    HAVE_FLOWER = True
except ImportError:
    HAVE_FLOWER = False

needs_flower = pytest.mark.skipif(not HAVE_FLOWER, reason="needs the flower extra: pip install -e '.[flower]'")


def _equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a == b


def assert_same_run(a: Path, b: Path) -> int:
    """Every file of the in-process run ``a`` that a Flower run ``b`` must reproduce: the server's
    view, the final checkpoint's weights (byte for byte) and training state (value for value),
    ground truth, privacy, samples. Returns the number of files compared."""
    latest = max(p.name for p in (a / "checkpoints").iterdir() if p.name.startswith("step-"))
    n = 0
    for f in sorted(a.rglob("*")):
        rel = f.relative_to(a)
        if not f.is_file() or rel.parts[0] in ("flower", ".lock") or f.name == ".lock":
            continue
        if rel.parts[0] == "checkpoints" and rel.parts[1] not in (latest, "latest.json"):
            continue  # intermediate checkpoints are the parties' own (flower/<party>/checkpoints/)
        if rel.name in ("train.jsonl", "manifest.json") and rel.parts[0] in ("metrics", "checkpoints"):
            continue  # wall-clock seconds; a manifest hashes state.pt, compared by value below
        g = b / rel
        assert g.is_file(), f"the Flower run has no {rel}"
        if f.name == "state.pt":
            assert _equal(load_state(f), load_state(g)), f"{rel}: training state differs"
        else:
            assert hashlib.sha256(f.read_bytes()).digest() == hashlib.sha256(g.read_bytes()).digest(), f"{rel} differs"
        n += 1
    return n


def drive(run_dir: Path, clients: int, stop_after: int | None = None, sample: bool = True) -> None:
    """The Flower apps' exchange without Flower: every message goes to a fresh ClientNode (as a
    deployment starts a fresh ClientApp process per message)."""
    server = ServerNode(run_dir)
    while not server.done:
        start, n = server.next_message()
        per = [[m.tensors() if m is not None else None for m in ClientNode(run_dir, k).run(start, n)]
               for k in range(clients)]
        server.process(per)
        if stop_after is not None and server.step >= stop_after:
            return
    if sample:
        h = server.handovers(server.cfg.sample.n, server.cfg.seed)
        for k in range(clients):
            ClientNode(run_dir, k).finish(h[k] if h is not None else None, server.cfg.sample.n, server.cfg.seed)


@pytest.mark.parametrize("overrides", [
    (),
    ("protocol.kind=shared-noise", "model.server_conditioning=labels", "train.steps=5"),
    ("protocol.fixed_noise=true", "model.server_conditioning=client", "protocol.cut_ratio=0.3", "record.max_items=25"),
    ("defense.client_dp.enabled=true", "defense.client_dp.noise_multiplier=1.0", "defense.client_dp.log_every=2"),
], ids=["cut-image", "shared-noise-labels", "fixed-noise-client-truncated-view", "dp-sgd-clients"])
def test_parties_reproduce_the_in_process_run(tiny, tmp_path, overrides):
    """Server and clients on their own, one round per message, give the in-process run's files."""
    from collafuse_privacy.sampling import sample_run

    cfg = tiny("record.dtype=float32", *overrides)
    a, b = tmp_path / "in-process", tmp_path / "parties"
    train(cfg, a, device="cpu", quiet=True)
    sample_run(a, device="cpu")
    plan = prepare(cfg, b, rounds_per_message=1)
    drive(b, plan.clients)
    collect(b)
    assert assert_same_run(a, b) > 20


def flower_average(uploads) -> torch.Tensor:
    """What Flower's FedAvg (``aggregate_arrayrecords``) computes from these uploads, in numpy as
    Flower does: float32 arrays times Python-float weights ``n_k / sum n``, summed in order."""
    n = [int(u.n[0]) for u in uploads]
    acc = None
    for u, count in zip(uploads, n):
        term = u.w[0].numpy() * (count / sum(n))
        acc = term if acc is None else acc + term
    return torch.from_numpy(acc)


def drive_fedavg(run_dir: Path, clients: int, stop_after: int | None = None) -> None:
    """Flower's FedAvg strategy's exchange without Flower (``flower/strategy.py``): per upload
    period the server's global model to every client (a fresh ClientNode each time), their
    uploads averaged by the server and, as Flower would, in numpy; the two must agree."""
    server = ServerNode(run_dir)
    while not server.done:
        start, n = server.next_message()
        w = server.global_model()
        ups = [ClientNode(run_dir, k).train_local(start, n, w) for k in range(clients)]
        server.process([[None] * (n - 1) + [u.tensors()] for u in ups])
        server.check_average(flower_average(ups))
        if stop_after is not None and server.step >= stop_after:
            return
    for k in range(clients):
        ClientNode(run_dir, k).finish(None, server.cfg.sample.n, server.cfg.seed)


@pytest.mark.parametrize("overrides", [(), ("defense.client_dp.enabled=true", "defense.client_dp.noise_multiplier=1.0",
                                            "defense.client_dp.log_every=2")], ids=["fedavg", "fedavg-dp-sgd"])
def test_fedavg_parties_reproduce_the_in_process_run(tiny, tmp_path, overrides):
    """fedavg over the parties alone (one message per upload period; the server killed after a
    checkpoint and resumed) gives the in-process run's files: view, weights, state, samples."""
    from collafuse_privacy.sampling import sample_run

    cfg = tiny("protocol.kind=fedavg", "protocol.cut_ratio=1", "train.steps=7", "train.local_steps=2",
               "train.checkpoint_every=4", *overrides)  # fmt: skip
    a, b = tmp_path / "in-process", tmp_path / "parties"
    train(cfg, a, device="cpu", quiet=True)
    sample_run(a, device="cpu")
    plan = prepare(cfg, b)
    assert plan.rounds_per_message == 2
    drive_fedavg(b, plan.clients, stop_after=6)  # the server stops at 6; its checkpoint is round 4
    drive_fedavg(b, plan.clients)
    collect(b)
    assert assert_same_run(a, b) > 10


def test_a_client_ahead_of_the_server_and_a_resumed_server(tiny, tmp_path):
    """The server stops after a checkpoint while a client already ran further; a new server and
    new clients resume from their own checkpoints and the run still ends identical."""
    from collafuse_privacy.sampling import sample_run

    cfg = tiny("record.dtype=float32", "train.steps=6")
    a, b = tmp_path / "in-process", tmp_path / "parties"
    train(cfg, a, device="cpu", quiet=True)
    sample_run(a, device="cpu")
    plan = prepare(cfg, b)  # rounds per message = checkpoint_every = 2
    drive(b, plan.clients, stop_after=2, sample=False)
    ClientNode(b, 0).run(2, 2)  # client 0 runs rounds 3-4; the server never hears of them
    drive(b, plan.clients)  # a new server resumes at round 2; client 0 goes back to its round 2
    collect(b)
    assert assert_same_run(a, b) > 20


def test_client_checks_before_it_runs(tiny, tmp_path):
    cfg = tiny()
    run = tmp_path / "run"
    prepare(cfg, run)
    with pytest.raises(UserError, match="client id 2 is out of range: the run has 2 clients"):
        ClientNode(run, 2)
    with pytest.raises(UserError, match="client id -1 is out of range"):
        ClientNode(run, -1)
    with pytest.raises(UserError, match="is client 1's folder"):
        ClientNode(run, 0, client_dir=party_dir(run, "client-1"))
    with pytest.raises(UserError, match="does not match the run's splits"):
        ClientNode(run, 0, data=party_dir(run, "client-1") / "data.safetensors")
    d = load_tensors(party_dir(run, "client-0") / "data.safetensors")
    d["images"][0, 0, 0, 0] += 0.5  # one pixel changed
    from collafuse_privacy.io import save_tensors

    save_tensors(tmp_path / "changed.safetensors", d)
    with pytest.raises(UserError, match="does not match the run's splits"):
        ClientNode(run, 0, data=tmp_path / "changed.safetensors")
    with pytest.raises(UserError, match="does not exist"):
        ClientNode(run, 0, data=tmp_path / "missing.safetensors")
    with pytest.raises(UserError, match="run directory does not exist"):
        ServerNode(tmp_path / "elsewhere")
    (run / "flower" / "plan.json").unlink()
    with pytest.raises(UserError, match="not prepared for Flower"):
        ServerNode(run)


def test_messages_carry_only_the_protocol_payload(tiny, tmp_path):
    """What a client returns per round is exactly ``Message.tensors()``: no ids, no losses."""
    run = tmp_path / "run"
    prepare(tiny(), run)
    sent = ClientNode(run, 0).run(0, 2)
    for m in sent:
        if m is not None:
            assert set(m.tensors()) == {"x"}  # cut-image, no labels configured


# ---- the real engines -------------------------------------------------------------------------------
@pytest.mark.flower
@needs_flower
def test_simulation_engine_is_bit_identical(tiny, tmp_path):
    from collafuse_privacy.flower.launch import run_flower
    from collafuse_privacy.sampling import sample_run

    cfg = tiny("record.dtype=float32")
    a, b = tmp_path / "in-process", tmp_path / "sim"
    train(cfg, a, device="cpu", quiet=True)
    sample_run(a, device="cpu")
    out = run_flower(cfg, b, engine="simulation", quiet=True, rounds_per_message=1)
    assert out["steps"] == cfg.train.steps and out["sampled"]
    assert assert_same_run(a, b) > 20


@pytest.mark.flower
@needs_flower
@pytest.mark.parametrize("engine", ["simulation", "deployment"])
def test_fedavg_on_flowers_own_strategy_is_bit_identical(tiny, tmp_path, engine):
    """protocol.kind fedavg through Flower's FedAvg strategy (its own aggregate_arrayrecords
    computes every average; the server checks it against its own): the in-process run's files."""
    from collafuse_privacy.flower.launch import run_flower
    from collafuse_privacy.sampling import sample_run

    cfg = tiny("protocol.kind=fedavg", "protocol.cut_ratio=1", "train.steps=7", "train.local_steps=2",
               "train.checkpoint_every=4")  # fmt: skip
    a, b = tmp_path / "in-process", tmp_path / engine
    train(cfg, a, device="cpu", quiet=True)
    sample_run(a, device="cpu")
    out = run_flower(cfg, b, engine=engine, quiet=True)
    assert out["steps"] == 7 and out["sampled"]
    assert assert_same_run(a, b) > 10
    result = json.loads((b / "flower" / "result.json").read_text())
    assert result["ok"] and result["flower_fedavg_rounds"] == 4  # upload periods ending at rounds 2, 4, 6, 7


@pytest.mark.flower
@needs_flower
def test_deployment_survives_a_killed_supernode(tiny, tmp_path, capfd):
    """Localhost deployment; one SuperNode is killed (-9) after the server's first checkpoint and
    restarted by the launcher; the client resumes from its own checkpoint; the run ends identical."""
    from collafuse_privacy.flower.launch import run_flower
    from collafuse_privacy.sampling import sample_run

    cfg = tiny("record.dtype=float32", "train.steps=6")
    a, b = tmp_path / "in-process", tmp_path / "deploy"
    train(cfg, a, device="cpu", quiet=True)
    sample_run(a, device="cpu")
    killed = []

    def killer():
        log = party_dir(b, "server") / "train.jsonl"
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if log.is_file() and sum(1 for _ in open(log)) >= 2:
                out = subprocess.run(["pgrep", "-f", "flower-supernode.*partition-id=1"], capture_output=True, text=True)
                pids = [int(p) for p in out.stdout.split()]
                if pids:
                    os.kill(pids[0], signal.SIGKILL)
                    killed.append(pids[0])
                return
            time.sleep(0.2)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    out = run_flower(cfg, b, engine="deployment", quiet=True, node_timeout=180)
    t.join(5)
    assert killed, "no SuperNode was killed"
    assert "a SuperNode stopped (exit -9); restarting it" in capfd.readouterr().err
    assert out["steps"] == 6
    assert assert_same_run(a, b) > 20


@pytest.mark.flower
@needs_flower
@pytest.mark.parametrize("args,message", [
    (["--engine", "deployment", "--superlink", "127.0.0.1:9"], "cannot reach the SuperLink at 127.0.0.1:9"),
    (["--engine", "simulation", "--superlink", "127.0.0.1:9"], "--superlink applies to --engine deployment only"),
])
def test_flower_run_bad_input_is_one_line(tmp_path, args, message):
    from conftest import TINY

    sets = [x for kv in TINY for x in ("--set", kv)]
    cmd = [sys.executable, "-m", "collafuse_privacy", "flower", "run", *sets, "--out", str(tmp_path / "r"), *args]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and message in lines[0], p.stderr


def test_a_trained_in_process_run_is_not_taken_over(tiny, tiny_run, tmp_path):
    with pytest.raises(UserError, match="holds an in-process run"):
        prepare(tiny("record.dtype=float32"), tiny_run())
    run = tmp_path / "fl"  # nor an unfinished Flower run by `train` (it would drop the server's view)
    prepare(tiny(), run)
    with pytest.raises(UserError, match="is a Flower run that has not finished"):
        train(tiny(), run, device="cpu", quiet=True)


@pytest.mark.flower
@needs_flower
@pytest.mark.parametrize("second,message", [
    ("partition-id=7", "client id 7 is out of range: the run has 2 clients"),
    ("partition-id=1 data='{data0}'", "client 1: its data"),
], ids=["id-out-of-range", "data-not-the-split"])
def test_a_bad_supernode_stops_the_run_with_one_line(tmp_path, second, message):
    """SuperNodes started by hand against a SuperLink started by hand (the multi-machine case):
    a SuperNode with a partition-id outside the run, or with another client's data."""
    from conftest import TINY

    from collafuse_privacy.flower.launch import _Proc, _bin, _thread_env, free_port, reachable

    run = tmp_path / "r"
    sets = [x for kv in TINY for x in ("--set", kv)]
    cli = [sys.executable, "-m", "collafuse_privacy"]
    subprocess.run([*cli, "flower", "prepare", *sets, "--out", str(run)], check=True, capture_output=True)
    env = {**_thread_env(None), "FLWR_HOME": str(tmp_path / "home")}
    port = free_port()
    link = _Proc([_bin("flower-superlink"), "--insecure", "--port", str(port)], tmp_path / "link.log", env)
    procs = [link]
    try:
        while reachable(f"127.0.0.1:{port}", 1.0) is not None:
            time.sleep(0.3)
        data0 = party_dir(run, "client-0") / "data.safetensors"
        for cfg in ("partition-id=0", second.format(data0=data0)):
            procs.append(_Proc([_bin("flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{port}", "--port",
                                str(free_port()), "--node-config", cfg], tmp_path / "node.log", env))
        p = subprocess.run([*cli, "flower", "run", *sets, "--out", str(run), "--superlink", f"127.0.0.1:{port}",
                            "--node-timeout", "60"], capture_output=True, text=True, timeout=400)
    finally:
        for q in procs:
            q.stop()
    assert p.returncode == 2, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip() and "flower train" not in ln]
    assert len(lines) == 1 and message in lines[0], p.stderr


def test_a_client_needs_only_its_folder(tiny, tmp_path):
    """On its own machine a client has its folder and nothing else of the run."""
    import shutil

    run = tmp_path / "run"
    prepare(tiny(), run)
    shutil.copytree(party_dir(run, "client-1"), tmp_path / "elsewhere")
    alone = ClientNode(tmp_path / "not-here", 1, client_dir=tmp_path / "elsewhere").run(0, 2)
    local = ClientNode(run, 1).run(0, 2)
    assert len(alone) == len(local) == 2
    for a, b in zip(alone, local):
        assert (a is None) == (b is None)
        if a is not None:
            assert _equal(a.tensors(), b.tensors())
    with pytest.raises(UserError, match="client id 2 is out of range"):
        ClientNode(tmp_path / "not-here", 2, client_dir=tmp_path / "elsewhere")
