"""``checkpoint.TrainingState``: ``state.pt`` typed; ``to_dict`` writes exactly the dict it read,
for a whole run's checkpoint, a Flower server's and a Flower client's own, and a checkpoint from
before release counting."""

import pytest
import torch

from collafuse_privacy.checkpoint import TrainingState, client_name
from collafuse_privacy.flower.nodes import ClientNode, ServerNode
from collafuse_privacy.flower.plan import prepare
from collafuse_privacy.io import load_state
from collafuse_privacy.training import SERVER_STREAM, server_generator, train
from collafuse_privacy.rng import generator

from conftest import tiny_config


def _same(a, b) -> bool:
    """Equal values, equal types and the same key order (``torch.save`` keeps it)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def _states(run_dir):
    return sorted((run_dir / "checkpoints").glob("step-*/state.pt"))


@pytest.mark.parametrize("dp", [False, True], ids=["plain", "dp-sgd"])
def test_a_fresh_runs_state_round_trips_unchanged(tmp_path, dp):
    over = ["train.steps=2", "train.checkpoint_every=1"]
    if dp:
        over += ["defense.client_dp.enabled=true", "defense.client_dp.noise_multiplier=1.0"]
    train(tiny_config(*over), tmp_path / "run", device="cpu", quiet=True)
    paths = _states(tmp_path / "run")
    assert len(paths) == 2
    for p in paths:
        d = load_state(p)
        s = TrainingState.from_dict(d)
        assert _same(s.to_dict(), d)
        assert s.step == int(d["step"]) and len(s.clients) == 2 and s.counts_complete
        assert _same(s.release_counts, d["release_counts"])
        want = [d["parties"][client_name(k)]["dp"] for k in range(2)] if dp else []
        assert _same(s.dp_states(2), want)


def test_a_checkpoint_from_before_counting_round_trips(tmp_path):
    train(tiny_config("train.steps=2"), tmp_path / "run", device="cpu", quiet=True)
    d = load_state(_states(tmp_path / "run")[-1])
    del d["release_counts"]
    d["recorder"].pop("received")
    s = TrainingState.from_dict(d)
    assert not s.counts_complete and s.release_counts is None
    assert _same(s.to_dict(), d)


def test_the_flower_parties_own_states_round_trip_and_join(tmp_path):
    run = tmp_path / "run"
    prepare(tiny_config("train.steps=2", "train.checkpoint_every=2"), run)
    server = ServerNode(run)
    start, n = server.next_message()
    server.process([[m.tensors() if m is not None else None for m in ClientNode(run, k).run(start, n)]
                    for k in range(2)])  # fmt: skip
    own = [load_state(run / "flower" / who / "checkpoints" / "step-00000002" / "state.pt")
           for who in ("server", "client-0", "client-1")]  # fmt: skip
    parts = [TrainingState.from_dict(d) for d in own]
    for d, s in zip(own, parts):
        assert _same(s.to_dict(), d)
    assert parts[0].clients is None and parts[1].server is None and parts[2].client == 1
    joined = TrainingState.joined(parts, 2).to_dict()
    assert list(joined) == ["step", "parties", "server_gen", "client_gens", "order_gens", "batchers", "release_counts",
                            "recorder", "transport"]  # fmt: skip
    assert _same(joined["client_gens"], [own[1]["gen"], own[2]["gen"]])


def test_the_servers_stream_is_named_once():
    assert torch.equal(server_generator(7).get_state(), generator(7, SERVER_STREAM).get_state())
