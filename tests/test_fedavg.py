"""``protocol.kind: fedavg``, the federated baseline (issue 26, in process).

Checked: every client starts from the server's initial model; an upload round's view rows are the
clients' models and member counts, and the server's model after it is exactly their
member-weighted average (recomputed here from the view alone), which every client continues
from; between uploads the clients train on their own; the view holds nothing but the uploads
(no ground truth, no ids); a kill and resume gives the same bits; privacy.json says what bounds
the view (nothing without DP-SGD; the clients' DP-SGD epsilon with it, DP-SGD's adjacency); the
image attacks say why they do not apply and the model attacks run on the global model and, as
``client:K``, on client K's last upload; configs
fedavg cannot honour, and Flower runs whose checkpoints would not end an upload period, are
refused in one line.
"""

import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from collafuse_privacy.cli import main
from collafuse_privacy.config import load_config
from collafuse_privacy.errors import UserError
from collafuse_privacy.flower.plan import prepare
from collafuse_privacy.io import load_state, load_tensors
from collafuse_privacy.models import build_unet
from collafuse_privacy.protocol import make_protocol, Cut
from collafuse_privacy.protocol.fedavg import flat_parameters
from collafuse_privacy.training import train
from collafuse_privacy.view import ServerView, list_shards

from test_training import _assert_same, _final_state, _killed_then_resumed
from conftest import tiny_config

FEDAVG = ["protocol.kind=fedavg", "protocol.cut_ratio=1", "train.steps=7", "train.local_steps=3",
          "train.checkpoint_every=3"]  # fmt: skip


def _checkpoint(run):
    ck = run / "checkpoints"
    return ck / json.loads((ck / "latest.json").read_text())["dir"]


def test_the_server_averages_the_uploads_and_every_client_continues_from_it(tmp_path):
    run = tmp_path / "run"
    out = train(tiny_config(*FEDAVG), run, device="cpu", quiet=True)
    assert out["steps"] == 7 and out["messages"] == 2 * 3  # uploads after rounds 3, 6 and the last, 7
    log = [json.loads(x) for x in (run / "metrics" / "train.jsonl").read_text().splitlines()]
    assert [r["sent"] for r in log] == [[0, 0], [0, 0], [1, 1], [0, 0], [0, 0], [1, 1], [1, 1]]
    assert all(n > 0 for r in log for n in r["client_n"]) and all(r["server_n"] == 0 for r in log)
    view = ServerView.load(run)
    assert set(view.messages) == {"x", "n", "client", "round"}  # the models, member counts, envelope
    assert view.messages["round"].tolist() == [2, 2, 5, 5, 6, 6] and view.messages["client"].tolist() == [0, 1] * 3
    assert not (run / "ground_truth").exists()
    # the last round's average, recomputed from the view alone in the arithmetic of Flower's own
    # FedAvg (numpy: float32 uploads times Python-float weights, summed in client order), is the
    # server's model, bit for bit
    last = view.messages["round"] == 6
    w, n = view.messages["x"][last].numpy(), [int(x) for x in view.messages["n"][last]]
    acc = None
    for row, count in zip(w, n):
        term = row * (count / sum(n))
        acc = term if acc is None else acc + term
    assert acc.dtype == np.float32
    d = _checkpoint(run)
    model = build_unet("micro", 8, 1)
    model.load_state_dict(load_tensors(d / "server.safetensors"))
    assert torch.equal(flat_parameters(model), torch.from_numpy(acc))
    exact = (w.astype(np.float64) * (np.array(n, dtype=np.float64) / sum(n))[:, None]).sum(0)
    assert np.abs(acc - exact).max() < 1e-6
    # a checkpoint holds every party's own model: each client's is its last upload, and the
    # server's average goes to the clients at the start of the next round
    for k in range(2):
        model.load_state_dict(load_tensors(d / f"client-{k}.safetensors"))
        assert torch.equal(flat_parameters(model), view.messages["x"][last][k])
    assert load_state(d / "state.pt")["global_unsent"] is True
    # between uploads the clients' models differ from each other (their own data and draws)
    first, second = view.messages["x"][view.messages["round"] == 5]
    assert not torch.equal(first, second)
    # the member counts the server learns are the clients' split sizes
    splits = json.loads((run / "splits.json").read_text())
    assert view.messages["n"][:2].tolist() == [len(c["members"]) for c in splits["clients"]]


def test_every_client_continues_from_the_global_model(tmp_path):
    """After an upload round the clients' next local step starts from the server's average."""
    from collafuse_privacy.training import Session, Trainer

    trainer = Trainer(Session.resolve(tiny_config(*FEDAVG), tmp_path / "run", None, "cpu", True))
    for _ in range(3):
        trainer.train_round()  # rounds 1-3: the uploads after round 3 are averaged
    assert trainer.server.global_unsent
    g = flat_parameters(trainer.server.party.model)
    seen = []
    for c in trainer.clients:
        step = c.party.train_step

        def first(*a, _step=step, _c=c, **kw):
            seen.append(torch.equal(flat_parameters(_c.party.model), g))
            _c.party.train_step = _step
            return _step(*a, **kw)

        c.party.train_step = first
    trainer.train_round()
    assert seen == [True, True] and not trainer.server.global_unsent


def test_every_client_starts_from_the_servers_initial_model(tmp_path):
    run = tmp_path / "run"
    train(tiny_config(*FEDAVG, "train.steps=1", "train.local_steps=5", "train.checkpoint_every=1"), run,
          device="cpu", quiet=True)  # fmt: skip
    rows = ServerView.load(run).messages
    # one round of local training from the same start: close to each other, far from two random inits
    gap = float((rows["x"][0] - rows["x"][1]).abs().max())
    a, b = (flat_parameters(build_unet("micro", 8, 1)) for _ in range(2))
    assert gap < 0.1 * float((a - b).abs().max())


def test_fedavg_resumes_bitwise(tmp_path):
    cfg = tiny_config(*FEDAVG)
    train(cfg, tmp_path / "straight", device="cpu", quiet=True)
    _killed_then_resumed(cfg, tmp_path / "resumed", at=5)
    a, b = _final_state(tmp_path / "straight"), _final_state(tmp_path / "resumed")
    _assert_same(a, b)


@pytest.mark.parametrize("dp", [False, True])
def test_privacy_json_says_what_bounds_the_view(tmp_path, dp):
    extra = ["defense.client_dp.enabled=true", "defense.client_dp.noise_multiplier=1.0"] if dp else []
    run = tmp_path / "run"
    train(tiny_config(*FEDAVG, *extra), run, device="cpu", quiet=True)
    p = json.loads((run / "metrics" / "privacy.json").read_text())
    view = p["view"]
    assert view["mu"] is None and view["releases_per_image"] == 3 and "fedavg" in view["threat"]
    assert "add/remove" in view["adjacency"] and p["unlinked"]["epsilon_replace_one"] is None
    if dp:
        eps = p["client_dp"]["epsilon"]
        assert math.isfinite(eps) and eps > 0 and view["epsilon"] == eps
    else:
        assert view["epsilon"] == "inf"


def test_attacks_on_a_fedavg_view(tmp_path):
    run = tmp_path / "run"
    train(tiny_config(*FEDAVG), run, device="cpu", quiet=True)
    r = CliRunner().invoke(main, ["attack", "--run", str(run), "--type", "reconstruction"])
    assert r.exit_code == 0 and "holds the clients' uploaded models, not images" in r.output, r.output
    r = CliRunner().invoke(main, ["attack", "--run", str(run), "--type", "membership", "--method", "view-lrt",
                                  "--method", "loss"])  # fmt: skip
    assert r.exit_code == 0, r.output
    res = json.loads((run / "metrics" / "membership.json").read_text())
    methods = res["methods"] if "methods" in res else res
    text = json.dumps(methods)
    assert "uploaded models, not images" in text  # view-lrt: not applicable, with the reason
    server = json.loads((run / "metrics" / "membership.json").read_text())["targets"]["server"]
    assert server["gdp"] is None and "no GDP accounting" in server["gdp_note"]  # no GDP route for models
    view = ServerView.load(run)
    assert view.server_state is not None  # the global model is the server's own
    # client:K is client K's last upload, read from the view (no release, no client checkpoint file)
    rows = view.messages
    for k in range(2):
        last = (rows["client"] == k) & (rows["round"] == 6)
        assert torch.equal(flat_parameters(view.client_model(k)), rows["x"][last][0]) and view.upload_round(k) == 6
    r = CliRunner().invoke(main, ["attack", "--run", str(run), "--type", "membership", "--method", "loss",
                                  "--method", "lira", "--target", "client:1"])  # fmt: skip
    assert r.exit_code == 0, r.output
    entry = json.loads((run / "metrics" / "membership.json").read_text())["targets"]["client:1"]
    assert "client 1's upload of round 6" in json.dumps(entry) and "fedavg" in entry["gdp_note"]
    assert not entry["methods"]["lira"]["applicable"] and "ref_batch" in entry["methods"]["lira"]["reason"]
    with pytest.raises(UserError, match="no upload"):
        view.client_model(2)


def test_configs_fedavg_cannot_honour_are_refused(tmp_path):
    for over, key in [("protocol.cut_ratio=0.5", "protocol.cut_ratio"), ("model.server_conditioning=client",
                      "server_conditioning"), ("model.client_preset=micro", "client_preset")]:  # fmt: skip
        with pytest.raises(UserError, match=key):
            load_config(None, ["protocol.kind=fedavg", "protocol.cut_ratio=1", over])
    with pytest.raises(UserError, match="train.local_steps"):
        load_config(None, ["protocol.kind=fedavg", "protocol.cut_ratio=1", "train.local_steps=0"])
    with pytest.raises(UserError, match="multiple of train.local_steps"):
        prepare(tiny_config(*FEDAVG, "train.checkpoint_every=4"), tmp_path / "flower")
    with pytest.raises(UserError, match="one upload period"):
        prepare(tiny_config(*FEDAVG), tmp_path / "flower", rounds_per_message=2)
    proto = make_protocol("fedavg", Cut(tiny_config().diffusion, 20))
    with pytest.raises(ValueError, match="uploads its model"):
        proto.encode(0, torch.zeros(1, 1, 8, 8), torch.zeros(1, dtype=torch.long), torch.zeros(1, 1, 8, 8),
                     ids=torch.zeros(1), secret=0)  # fmt: skip
    assert list_shards(tmp_path) == []
