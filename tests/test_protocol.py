"""What crosses the cut, checked against DESIGN.md §1."""

import json

import pytest
import torch

from collafuse_privacy.data import load_dataset
from collafuse_privacy.protocol import split_protocols, Cut, CutImageMessage, SharedNoiseMessage, make_protocol, \
    protocol_for
from collafuse_privacy.training import train
from collafuse_privacy.view import ServerView, load_shards

from conftest import tiny_config


def _truth(run_dir):
    return load_shards(run_dir / "ground_truth" / "train")["image_id"]


def _clean(cfg, ids):
    return load_dataset(cfg.data).images[ids]


def _client_batch(cut, n, g):
    """What a client sends in training: one image repeated, t ~ U{t_c..T-1}, fresh eps."""
    x0_one = torch.rand(1, 1, 8, 8, generator=g) * 2 - 1
    x0 = x0_one.expand(n, -1, -1, -1)
    t = torch.randint(cut.t_c, cut.T, (n,), generator=g)
    eps1 = torch.randn(x0.shape, generator=g)
    return x0_one, x0, t, eps1


@pytest.mark.parametrize("kind", split_protocols())
@pytest.mark.parametrize("cut_ratio", [0.3, 0.75])
def test_server_training_input_has_the_marginal_q_for_every_protocol(kind, cut_ratio):
    """Whatever crosses the cut, the server trains on x_t ~ q(x_t | x0) at its own timesteps
    t_c..T-1 with a target noise that is exactly what makes up x_t (DESIGN.md §1); where the
    protocol sends the noise, the server recovers x0 exactly."""
    cfg = tiny_config(f"protocol.kind={kind}", f"protocol.cut_ratio={cut_ratio}")
    cut = Cut.from_config(cfg)
    proto = make_protocol(kind, cut)
    g = torch.Generator().manual_seed(0)
    n = 40_000
    x0_one, x0, t, eps1 = _client_batch(cut, n, g)
    msg = proto.encode(0, x0, t, eps1, ids=torch.arange(n), secret=0)
    assert set(msg.tensors()) == {"x", *proto.row_fields()} and not {"ids", "x0"} & set(msg.tensors())
    msg = proto.decode(0, msg.tensors())  # what a network transport would rebuild
    x_t, t_srv, target = proto.server_batch([msg], torch.Generator().manual_seed(1), torch.device("cpu"))
    assert t_srv.min() >= cut.t_c and t_srv.max() <= cut.T - 1
    assert len(t_srv.unique()) == cut.T - cut.t_c  # the server covers its whole range
    a = cut.abar[t_srv].float().view(-1, 1, 1, 1)
    # per timestep: mean sqrt(abar) x0 and per-pixel variance 1 - abar, as under q(x_t | x0)
    for s in t_srv.unique():
        sel = t_srv == s
        xs, m, ab = x_t[sel], int(sel.sum()), float(cut.abar[s])
        assert (xs.mean(0) - ab**0.5 * x0_one[0]).abs().max() < 5 * ((1 - ab) / m) ** 0.5, f"mean off at t={int(s)}"
        assert abs(xs.var(0).mean() - (1 - ab)) < 6 * (1 - ab) * (2 / (m * 64)) ** 0.5 + 1e-3, f"variance off at t={int(s)}"
    z = (x_t - a.sqrt() * x0) / (1 - a).sqrt()
    assert abs(z.mean()) < 0.01 and abs(z.var() - 1) < 0.01
    rows = {k: v for k, v in msg.tensors().items()}
    if proto.sends_noise:
        # the target is the client's own noise, exactly what makes up x_t: x0 follows
        torch.testing.assert_close(x_t, a.sqrt() * x0 + (1 - a).sqrt() * target, rtol=0, atol=2e-5)
        # exact up to float32 rounding of x_t, which the division by sqrt(abar) amplifies
        err = (proto.recover_x0(rows) - x0.double()).abs()
        assert (err * a.double().sqrt()).max() < 1e-6
        assert proto.release_mu((1, 8, 8)) == float("inf")
    else:
        with pytest.raises(ValueError):
            proto.recover_x0(rows)
        # the server's target is its own noise, independent of the client's
        assert abs(torch.corrcoef(torch.stack([target.flatten(), eps1.flatten()]))[0, 1]) < 0.01
        assert 0 < proto.release_mu((1, 8, 8)) < float("inf")
    # levels the view says its rows are at, and the bytes a row costs
    lo, hi = proto.level_range()
    levels = proto.row_levels(rows)
    assert levels.min() >= lo and levels.max() <= hi and len(levels) == n
    assert proto.bytes_per_row((1, 8, 8)) == sum(v[0].numel() * v.element_size() for v in msg.tensors().values())


@pytest.mark.parametrize("kind", split_protocols())
def test_cut_edge_cases_for_every_protocol(kind):
    cfg = tiny_config(f"protocol.kind={kind}")
    T = cfg.diffusion.timesteps
    nothing = make_protocol(kind, Cut(cfg.diffusion, T))
    assert nothing.cut.sends_nothing and nothing.release_mu((1, 8, 8)) == 0.0
    assert nothing.view_privacy((1, 8, 8), 5, 1e-5) == (0.0, 0.0)
    with pytest.raises(ValueError, match="c = 1"):
        nothing.model_range("server")
    clean = make_protocol(kind, Cut(cfg.diffusion, 0))
    assert clean.cut.sends_clean and clean.cut.abar_handover == 1.0 and clean.release_mu((1, 8, 8)) == float("inf")
    with pytest.raises(ValueError, match="c = 0"):
        clean.model_range("client")
    mid = make_protocol(kind, Cut(cfg.diffusion, 7))
    assert mid.cut.handover_level == 6 and mid.cut.abar_handover == float(mid.cut.abar[6])
    r = mid.model_range("server")
    assert r.t_off == 7 and len(r) == T - 7
    torch.testing.assert_close(r.abar * (r.hand_a or 1.0), mid.cut.abar[7:], rtol=1e-12, atol=0)
    assert mid.model_range("client").t_off == 0 and len(mid.model_range("client")) == 7


def test_tail_schedule_is_the_chain_after_the_cut():
    cut = Cut(tiny_config().diffusion, 6)
    torch.testing.assert_close(cut.tail_abar * cut.abar_handover, cut.abar[6:], rtol=1e-12, atol=0)
    assert cut.tail_scheduler.config.num_train_timesteps == cut.T - 6


def test_cut_one_sends_nothing(tmp_path):
    cfg = tiny_config("protocol.cut_ratio=1.0")
    out = train(cfg, tmp_path / "run", device="cpu", quiet=True)
    assert out["messages"] == 0 and out["bytes_sent"] == 0 and out["recorded"] == 0
    assert ServerView.load(tmp_path / "run").messages == {}
    rows = [json.loads(l) for l in (tmp_path / "run" / "metrics" / "train.jsonl").read_text().splitlines()]
    assert all(r["server_n"] == 0 and sum(r["sent"]) == 0 for r in rows)


@pytest.mark.parametrize("kind", ["cut-image", "shared-noise"])
def test_cut_zero_gives_the_server_everything(tmp_path, kind):
    cfg = tiny_config(f"protocol.kind={kind}", "protocol.cut_ratio=0", "record.dtype=float32")
    out = train(cfg, tmp_path / "run", device="cpu", quiet=True)
    n_images = cfg.train.steps * cfg.train.batch_size * cfg.data.clients
    assert out["recorded"] == n_images  # every image crossed
    view = ServerView.load(tmp_path / "run")
    x0 = _clean(cfg, _truth(tmp_path / "run"))
    if kind == "cut-image":
        assert torch.equal(view.messages["x"], x0)  # h = x0: the server sees clean images
    else:
        # x_t and the noise it was drawn with: the server recovers every image exactly (float32 rounding of
        # x_t aside, which the division by sqrt(abar) amplifies: compared at the scale of x_t)
        assert view.messages["t"].min() >= 0
        x0_hat = protocol_for(cfg).recover_x0(view.messages).float()
        a = Cut.from_config(cfg).abar[view.messages["t"].long()].float()
        err = (x0_hat - x0).abs().flatten(1).max(1).values
        assert (err * a.sqrt()).max() < 1e-6


def test_shared_noise_view_contains_eps_and_reveals_x0(tmp_path):
    cfg = tiny_config("protocol.kind=shared-noise", "protocol.cut_ratio=0.4", "record.dtype=float32")
    train(cfg, tmp_path / "run", device="cpu", quiet=True)
    view = ServerView.load(tmp_path / "run")
    assert set(view.messages) == {"x", "t", "eps", "client", "round"}  # no ids, no clean images
    t = view.messages["t"]
    assert t.min() >= cfg.t_c
    a = Cut.from_config(cfg).abar[t].float().view(-1, 1, 1, 1)
    x0_hat = (view.messages["x"] - (1 - a).sqrt() * view.messages["eps"]) / a.sqrt()
    x0 = _clean(cfg, _truth(tmp_path / "run"))
    # exact up to float32 rounding of x_t, which the division by sqrt(abar) amplifies
    err = (x0_hat - x0).abs().flatten(1).max(1).values
    assert (err * a.flatten().sqrt()).max() < 1e-6
    assert err.median() < 1e-5


def test_cut_image_view_holds_only_h(tmp_path):
    cfg = tiny_config("protocol.kind=cut-image", "protocol.cut_ratio=0.4")
    train(cfg, tmp_path / "run", device="cpu", quiet=True)
    view = ServerView.load(tmp_path / "run")
    assert set(view.messages) == {"x", "client", "round"}
    assert view.meta.handover_level == cfg.t_c - 1
    meta = (tmp_path / "run" / "server_view" / "meta.json").read_text()
    assert "members" not in meta and "seed" not in meta and "indices" not in meta and "image_id" not in view.messages


@pytest.mark.parametrize("fixed", [True, False])
def test_fixed_noise_resends_the_same_handover(tmp_path, fixed):
    # 2 clients x ~50 members, 30 rounds of 8: every image is sent several times
    cfg = tiny_config(
        "protocol.kind=cut-image", "protocol.cut_ratio=0.3", f"protocol.fixed_noise={str(fixed).lower()}",
        "data.max_images=130", "train.steps=30", "train.checkpoint_every=30", "record.dtype=float32",
    )
    train(cfg, tmp_path / "run", device="cpu", quiet=True)
    view = ServerView.load(tmp_path / "run")
    ids = _truth(tmp_path / "run")
    repeated = 0
    for i in ids.unique():
        rows = view.messages["x"][ids == i]
        if len(rows) > 1:
            repeated += 1
            same = bool((rows - rows[0]).abs().max() == 0)
            assert same == fixed
    assert repeated > 10


def test_messages_carry_no_ids():
    for cls in (SharedNoiseMessage, CutImageMessage):
        fields = set(cls.__dataclass_fields__)
        assert not fields & {"ids", "image_id", "x0", "index"}
