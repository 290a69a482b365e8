"""The view's epsilon for the unlinked server (issue 25, defenses/unlinked.py): the run's number against
dp_accounting as an independent oracle, on the run's own sampling rate, noise level and rounds, under
both adjacencies; refused with a one-line reason where an assumption fails."""

import json
import math

import dp_accounting
import pytest
from dp_accounting.pld import pld_privacy_accountant

from collafuse_privacy.config import read_yaml
from collafuse_privacy.defenses.privacy import unlinked_privacy
from collafuse_privacy.defenses.unlinked import refusal, unlinked_epsilon
from collafuse_privacy.errors import UserError
from collafuse_privacy.resolve import resolve

from conftest import tiny_config

# Poisson batches, fresh noise, OS secrets, a cut whose per-release mu is near 1 (8x8, T = 20: c = 0.7)
UNLINKED = ["train.sampling=poisson", "protocol.cut_ratio=0.7", "train.batch_size=64", "train.steps=6",
            "secrets.derive_from_seed=false"]  # fmt: skip


def _oracle(mu, rate, rounds, delta, relation):
    acc = pld_privacy_accountant.PLDAccountant(relation)  # dp_accounting's default discretisation (1e-4)
    acc.compose(dp_accounting.PoissonSampledDpEvent(rate, dp_accounting.GaussianDpEvent(1.0 / mu)), rounds)
    return acc.get_epsilon(delta)


def test_unlinked_epsilon_of_a_run_equals_dp_accounting_on_its_own_rate_noise_and_rounds(tiny_run):
    run = tiny_run(*UNLINKED)
    priv = json.loads((run / "metrics" / "privacy.json").read_text())
    meta = json.loads((run / "server_view" / "meta.json").read_text())
    cfg = read_yaml(run / "config.yaml")
    members = [len(c["members"]) for c in json.loads((run / "splits.json").read_text())["clients"]]
    u = priv["unlinked"]
    assert u["reason"] is None and meta["sampling"] == "poisson" and cfg["train"]["sampling"] == "poisson"
    # the run's own numbers, recomputed here from its files (not from the package's accounting)
    a, d = meta["abar_handover"], math.prod(meta["image_shape"])
    mu = math.sqrt(a / (1 - a)) * 2 * math.sqrt(d)
    p_server = (meta["timesteps"] - meta["t_c"]) / meta["timesteps"]
    rounds, delta = priv["step"], u["delta"]
    assert rounds == 6 and 0.5 < mu < 1.5  # a cut where amplification matters
    rel = dp_accounting.NeighboringRelation
    for k, n in enumerate(members):
        rate = cfg["train"]["batch_size"] / n * p_server
        c = u["clients"][k]
        assert c["sample_rate"] == pytest.approx(rate, rel=1e-12)
        assert c["epsilon_replace_one"] == pytest.approx(_oracle(mu, rate, rounds, delta, rel.REPLACE_ONE), rel=1e-9)
        assert c["epsilon_add_remove"] == pytest.approx(_oracle(mu, rate, rounds, delta, rel.ADD_OR_REMOVE_ONE), rel=1e-9)
    worst = max(u["clients"], key=lambda c: c["sample_rate"])
    assert u["epsilon_replace_one"] == worst["epsilon_replace_one"] and u["epsilon_add_remove"] == worst["epsilon_add_remove"]
    # power: the batch rate without P(t >= t_c), one round less, or the other adjacency give other numbers
    rate = cfg["train"]["batch_size"] / min(members) * p_server
    ro = u["epsilon_replace_one"]
    assert _oracle(mu, rate / p_server, rounds, delta, rel.REPLACE_ONE) > 1.5 * ro
    assert _oracle(mu, rate, rounds - 1, delta, rel.REPLACE_ONE) < ro / (1 + 1e-6)
    assert u["epsilon_add_remove"] < ro / (1 + 1e-6)
    # and the linked number of the same run is the larger one (it assumes a stronger server)
    assert priv["view"]["epsilon"] > ro
    assert priv["view"]["threat"].startswith("linked:") and u["threat"].startswith("unlinked:")


@pytest.mark.parametrize("override, names", [
    ("protocol.fixed_noise=true", "protocol.fixed_noise"),
    ("train.sampling=shuffle", "train.sampling = shuffle"),
    ("model.server_conditioning=labels", "model.server_conditioning = labels"),
    ("secrets.derive_from_seed=true", "secrets.derive_from_seed"),
])  # fmt: skip
def test_refused_in_one_line_naming_the_assumption(override, names):
    cfg = tiny_config(*UNLINKED, override)
    u = unlinked_privacy(cfg, (1, 8, 8), [640, 650], 6)
    assert u.epsilon_replace_one is None and u.epsilon_add_remove is None
    assert u.reason.startswith("not reported: ") and names in u.reason and "\n" not in u.reason
    # the same config with that one setting back is reported
    assert unlinked_privacy(tiny_config(*UNLINKED), (1, 8, 8), [640, 650], 6).reason is None


def test_dp_sgd_clients_draw_poisson_batches_whatever_train_sampling_says():
    cfg = tiny_config(*UNLINKED, "train.sampling=shuffle", "defense.client_dp.enabled=true",
                      "defense.client_dp.noise_multiplier=1.0")  # fmt: skip
    assert cfg.client_sampling == "poisson" and unlinked_privacy(cfg, (1, 8, 8), [640], 6).reason is None
    assert tiny_config(*UNLINKED, "train.sampling=shuffle").client_sampling == "shuffle"


def test_trained_shuffle_run_reports_the_reason(tiny_run):
    priv = json.loads((tiny_run() / "metrics" / "privacy.json").read_text())
    assert priv["unlinked"]["epsilon_replace_one"] is None
    assert "train.sampling = shuffle" in priv["unlinked"]["reason"]  # the first assumption that fails


def test_edge_cases():
    assert unlinked_epsilon(math.inf, 0.1, 5, 1e-5, "replace-one") == math.inf  # shared-noise, c = 0
    assert unlinked_epsilon(0.0, 0.1, 5, 1e-5, "add-remove") == 0.0  # c = 1
    assert unlinked_epsilon(1.0, 0.0, 5, 1e-5, "add-remove") == 0.0
    with pytest.raises(ValueError, match="adjacency"):
        unlinked_epsilon(1.0, 0.1, 5, 1e-5, "swap")
    assert refusal(sampling="poisson", fixed_noise=False, sends_labels=False, derived_secrets=False) is None
    # above the PLD's reach: the bound without amplification, still finite and larger than at a smaller mu
    assert unlinked_epsilon(200.0, 0.05, 10, 1e-5, "replace-one") > unlinked_epsilon(50.0, 0.05, 10, 1e-5, "replace-one")


def test_target_threat_unlinked_picks_the_smallest_cut_meeting_it():
    from collafuse_privacy.defenses.unlinked import view_unlinked
    from collafuse_privacy.protocol import Cut

    over = [*UNLINKED, "train.steps=50", "protocol.target_epsilon=1", "protocol.target_threat=unlinked"]
    res = resolve(tiny_config(*over))
    cfg, choice = res.cfg, res.cut_choice
    assert choice.threat == "unlinked" and choice.epsilon <= 1 and cfg.t_c == choice.t_c
    n = min(len(m) for m in res.splits.members)

    def eps(t_c):
        c = Cut(cfg.diffusion, t_c)
        return view_unlinked(c.abar_handover, t_c, c.T, (1, 8, 8), batch_size=64, n_members=n, rounds=50, delta=1e-5,
                             adjacency="replace-one")[0]  # fmt: skip

    assert eps(choice.t_c) == pytest.approx(choice.epsilon) and eps(choice.t_c - 1) > 1  # one step less does not
    # the linked target of the same config needs a larger cut: the linked number assumes a stronger server
    linked = resolve(tiny_config(*over[:-1]))
    assert linked.cut_choice.t_c > choice.t_c


@pytest.mark.parametrize("override, words", [
    ("secrets.derive_from_seed=true", "secrets.derive_from_seed"),
    ("train.sampling=shuffle", "train.sampling = shuffle"),
    ("protocol.fixed_noise=true", "protocol.fixed_noise"),
])  # fmt: skip
def test_target_threat_unlinked_refused_where_its_assumptions_fail(override, words):
    over = [*UNLINKED, "protocol.target_epsilon=1", "protocol.target_threat=unlinked", override]
    with pytest.raises(UserError, match="protocol.target_threat=unlinked") as e:
        resolve(tiny_config(*over))
    assert words in str(e.value) and "\n" not in str(e.value)


def test_report_shows_both_formal_numbers_each_with_its_threat_model(tiny_run):
    from collafuse_privacy.eval.report.analyse import reading
    from collafuse_privacy.eval.report.collect import collect
    from collafuse_privacy.eval.report.render import tables

    poisson, shuffle = tiny_run(*UNLINKED), tiny_run()
    priv = json.loads((poisson / "metrics" / "privacy.json").read_text())["unlinked"]
    notes: dict = {}
    main = tables(collect([poisson, shuffle]), notes)["settings"]
    head = main[0]
    linked_col, unlinked_col = head.index("formal eps (view, linked)"), head.index(
        "formal eps (view, unlinked: replace-one / add-remove)")
    rows = {r[0]: r for r in main[1:]}
    assert len(rows) == 2
    cells = [r[unlinked_col] for r in rows.values()]
    want = f"{priv['epsilon_replace_one']:.3g} / {priv['epsilon_add_remove']:.3g}"
    assert any(c.startswith(want) for c in cells)
    assert any(c.startswith("n/a [") for c in cells)  # the shuffle run: refused, its reason in a footnote
    footnotes = " ".join(notes["settings"])
    assert "train.sampling = shuffle" in footnotes and "linked:" in footnotes and "unlinked:" in footnotes
    assert all(r[linked_col] not in ("n/a", "-") for r in rows.values())
    text = " ".join(reading(collect([poisson, shuffle])))
    assert "unlinked server" in text and f"eps={priv['epsilon_replace_one']:.3g}" in text
