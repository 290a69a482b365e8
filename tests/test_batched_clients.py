"""train.batched_clients: the clients' steps in one vmap equal the one-by-one loop (1e-5 relative,
every preset), and a batched run resumes bit-identically."""

import copy

import pytest
import torch

from collafuse_privacy.config import TrainConfig
from collafuse_privacy.models import PRESETS, build_unet
from collafuse_privacy.party import Party
from collafuse_privacy.training import train
from collafuse_privacy.training.batched import batched_clients, batched_train_steps

from test_training import _assert_same, _final_state, _killed_then_resumed
from conftest import tiny_config

SIZE = {"micro": 8, "tiny": 8, "small": 8, "base": 8}


def _grads_at_step(monkeypatch, parties, batches, batched: bool):
    """Each party's loss and its gradients as the step saw them (before clipping)."""
    seen = {}
    orig = Party.finish_step

    def record(self):
        seen[id(self)] = {n: p.grad.clone() for n, p in self.model.named_parameters() if p.grad is not None}
        orig(self)

    monkeypatch.setattr(Party, "finish_step", record)
    if batched:
        losses = batched_train_steps(parties, batches)
    else:
        losses = [p.train_step(*b) for p, b in zip(parties, batches)]
    monkeypatch.setattr(Party, "finish_step", orig)
    return losses, [seen.get(id(p)) for p in parties]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


@pytest.mark.parametrize("preset", list(PRESETS))
def test_batched_step_equals_the_one_by_one_loop(monkeypatch, preset):
    torch.manual_seed(0)
    S, train_cfg = SIZE[preset], TrainConfig(lr=1e-3, lr_warmup=1)
    parties = []
    for k in range(3):
        torch.manual_seed(100 + k)  # each client its own initialisation
        parties.append(Party(build_unet(preset, S, 1), train_cfg, torch.device("cpu")))
    g = torch.Generator().manual_seed(1)
    sizes = [5, 2, 0] if preset == "base" else [7, 3, 0]  # unequal batches and an empty one
    batches = [(torch.randn(n, 1, S, S, generator=g), torch.randint(0, 100, (n,), generator=g),
                torch.randn(n, 1, S, S, generator=g)) for n in sizes]  # fmt: skip
    twins = copy.deepcopy(parties)
    l_seq, g_seq = _grads_at_step(monkeypatch, parties, batches, batched=False)
    l_bat, g_bat = _grads_at_step(monkeypatch, twins, batches, batched=True)
    assert l_seq[2] is None and l_bat[2] is None and g_bat[2] is None  # no image: no step
    assert twins[2].sched.last_epoch == parties[2].sched.last_epoch == 0
    for k in range(2):
        assert abs(l_bat[k] - l_seq[k]) <= 1e-5 * abs(l_seq[k])
        assert g_bat[k].keys() == g_seq[k].keys() and g_seq[k]
        flat = lambda d: torch.cat([v.flatten() for v in d.values()])  # noqa: E731
        whole = _rel(flat(g_bat[k]), flat(g_seq[k]))
        assert whole <= 1e-5, f"client {k}: gradient {whole:.2e} relative"
        # every tensor to 1e-5 of its own norm, except those whose true gradient is 0 (an attention
        # key's bias: softmax ignores it), which hold float noise at 1e-10 of the whole
        floor = 1e-7 * float(flat(g_seq[k]).norm())
        for n in g_seq[k]:
            err = float((g_bat[k][n] - g_seq[k][n]).norm())
            assert err <= max(1e-5 * float(g_seq[k][n].norm()), floor), f"client {k}: {n} off by {err:.2e}"
        # the steps that followed: the same optimiser, schedule and EMA state
        assert twins[k].sched.last_epoch == parties[k].sched.last_epoch == 1
        assert twins[k].opt.state_dict()["state"].keys() == parties[k].opt.state_dict()["state"].keys()


def test_a_batched_run_resumes_bitwise_and_keeps_the_view(tmp_path):
    assert not batched_clients(None, torch.device("cpu")) and batched_clients(None, torch.device("cuda"))
    over = ["train.steps=7", "train.checkpoint_every=3", "record.shard_size=10", "data.clients=3"]
    cfg = tiny_config(*over, "train.batched_clients=true")
    train(cfg, tmp_path / "straight", device="cpu", quiet=True)
    _killed_then_resumed(cfg, tmp_path / "resumed")
    batched = _final_state(tmp_path / "straight")
    _assert_same(batched, _final_state(tmp_path / "resumed"))
    # the one-by-one loop draws the same: the same view, rows and order; losses within float tolerance
    train(tiny_config(*over, "train.batched_clients=false"), tmp_path / "loop", device="cpu", quiet=True)
    loop = _final_state(tmp_path / "loop")
    for name in loop[1]:
        for key in loop[1][name]:
            assert torch.equal(batched[1][name][key], loop[1][name][key])
    for a, b in zip(batched[3], loop[3]):
        assert a["client_n"] == b["client_n"] and a["sent"] == b["sent"]
        for x, y in zip(a["client_loss"], b["client_loss"]):
            assert (x is None and y is None) or abs(x - y) <= 1e-4 * abs(y)
