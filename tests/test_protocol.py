"""What crosses the cut, checked against DESIGN.md §1."""

import json

import pytest
import torch

from collafuse_privacy.data import Splits, load_dataset
from collafuse_privacy.diffusion import abar_at, alphas_cumprod, make_scheduler
from collafuse_privacy.io import load_tensors
from collafuse_privacy.models import build_unet
from collafuse_privacy.protocol import CutImageMessage, SharedNoiseMessage
from collafuse_privacy.training import Party, Server, client_message, generator, train
from collafuse_privacy.view import ServerView, load_shards

from conftest import tiny_config


def _truth(run_dir):
    return load_shards(run_dir / "ground_truth" / "train")["image_id"]


def _clean(cfg, ids):
    return load_dataset(cfg.data).images[ids]


@pytest.mark.parametrize("cut", [0.3, 0.75])
def test_cut_image_server_input_has_the_marginal_q(cut):
    """Client sends h = x_{t_c-1}; the server's x_t must be distributed as q(x_t | x0)."""
    cfg = tiny_config("protocol.kind=cut-image", f"protocol.cut_ratio={cut}")
    sched = make_scheduler(cfg.diffusion)
    T, t_c = cfg.diffusion.timesteps, cfg.t_c
    g = torch.Generator().manual_seed(0)
    x0_one = torch.rand(1, 1, 8, 8, generator=g) * 2 - 1
    n = 40_000
    x0 = x0_one.expand(n, -1, -1, -1)
    t = torch.full((n,), t_c)
    eps1 = torch.randn(x0.shape, generator=g)
    msg = client_message(cfg, sched, 0, x0, t, eps1, torch.arange(n))
    assert isinstance(msg, CutImageMessage) and set(msg.tensors()) == {"x"}
    server = Server(Party(build_unet("micro", 8, 1), cfg, torch.device("cpu")), cfg, sched, generator(1))
    x_t, t_srv, target, _ = server.model_inputs([msg])
    assert t_srv.min() >= t_c and t_srv.max() <= T - 1
    assert len(t_srv.unique()) == T - t_c  # the server covers its whole range
    a = alphas_cumprod(sched)[t_srv].float().view(-1, 1, 1, 1)
    # Per timestep: mean sqrt(abar) x0 and per-pixel variance 1 - abar, as under q(x_t | x0).
    for s in t_srv.unique():
        sel = t_srv == s
        xs = x_t[sel]
        m = int(sel.sum())
        ab = float(alphas_cumprod(sched)[s])
        mean_err = (xs.mean(0) - ab**0.5 * x0_one[0]).abs().max()
        assert mean_err < 5 * ((1 - ab) / m) ** 0.5, f"mean off at t={int(s)}"
        var = xs.var(0).mean()
        assert abs(var - (1 - ab)) < 6 * (1 - ab) * (2 / (m * 64)) ** 0.5 + 1e-3, f"variance off at t={int(s)}"
    # Pooled: standardised residuals are N(0, 1).
    z = (x_t - a.sqrt() * x0) / (1 - a).sqrt()
    assert abs(z.mean()) < 0.01 and abs(z.var() - 1) < 0.01
    # The server's target is its own eps2, which is independent of the client's eps1.
    assert abs(torch.corrcoef(torch.stack([target.flatten(), eps1.flatten()]))[0, 1]) < 0.01


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
        assert view.messages["t"].min() >= 0


def test_shared_noise_view_contains_eps_and_reveals_x0(tmp_path):
    cfg = tiny_config("protocol.kind=shared-noise", "protocol.cut_ratio=0.4", "record.dtype=float32")
    train(cfg, tmp_path / "run", device="cpu", quiet=True)
    view = ServerView.load(tmp_path / "run")
    assert set(view.messages) == {"x", "t", "eps", "client", "round"}  # no ids, no clean images
    t = view.messages["t"]
    assert t.min() >= cfg.t_c
    a = alphas_cumprod(make_scheduler(cfg.diffusion))[t].float().view(-1, 1, 1, 1)
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
    assert view.meta["handover_level"] == cfg.t_c - 1
    assert "members" not in json.dumps(view.meta) and "image_id" not in view.messages


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
