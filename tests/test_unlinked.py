"""The view's epsilon for the unlinked server (issue 25, defenses/unlinked.py): the secret-sampling bound
(a server that cannot know in which rounds an image was drawn, but may recognise its row when present).
The run's number against dp_accounting as an independent oracle: the per-round privacy loss
distribution built by dp_accounting (its Gaussian PLD mixed with a point mass at loss 0), self-composed
and solved for epsilon, on the run's own sampling rate, noise level and round count; Poisson and shuffle
sampling; add/remove infinite; refused with a one-line reason where an assumption fails."""

import json
import math

import dp_accounting
import pytest
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.pld import privacy_loss_distribution as pld

from collafuse_privacy.config import read_yaml
from collafuse_privacy.defenses.privacy import unlinked_privacy
from collafuse_privacy.defenses.unlinked import (ADD_REMOVE_REASON, refusal, secret_sampling_delta,
                                                 secret_sampling_epsilon)
from collafuse_privacy.errors import UserError
from collafuse_privacy.resolve import resolve

from conftest import tiny_config

# Poisson batches, fresh noise, OS secrets, a cut whose per-release mu is near 1 (8x8, T = 20: c = 0.7)
UNLINKED = ["train.sampling=poisson", "protocol.cut_ratio=0.7", "train.batch_size=64", "train.steps=6",
            "secrets.derive_from_seed=false"]  # fmt: skip
# the same with shuffled epochs, a batch large enough that an image is in up to 3 of the 6 batches
SHUFFLE = ["protocol.cut_ratio=0.7", "train.batch_size=256", "train.steps=6", "secrets.derive_from_seed=false"]
DISC = 1e-3  # the oracle's value discretisation: its pessimistic PLD is within ~1e-3 in the loss per round
TOL = 0.005  # relative: a few DISC over a handful of compositions, at epsilons of a few units


def _oracle_pld(mu, p, n):
    """dp_accounting's PLD of n chances, each "one N(mu, 1) row with probability p, else none" against
    "one N(0, 1) row ... else none": the Gaussian mechanism's PLD mixed with loss 0 (no row) of weight 1 - p."""
    gauss = pld.from_gaussian_mechanism(standard_deviation=1.0 / mu, sensitivity=1.0, value_discretization_interval=DISC)
    return gauss.compute_mixture(pld.identity(value_discretization_interval=DISC), p).self_compose(n)


def _oracle(mu, p, n, delta):
    return _oracle_pld(mu, p, n).get_epsilon_for_delta(delta)


def _sum_form(mu, p, n, delta):
    """dp_accounting's Poisson-subsampled Gaussian (the sum form: a member not drawn adds pure noise)."""
    acc = pld_privacy_accountant.PLDAccountant(dp_accounting.NeighboringRelation.REPLACE_ONE)
    acc.compose(dp_accounting.PoissonSampledDpEvent(p, dp_accounting.GaussianDpEvent(1.0 / mu)), n)
    return acc.get_epsilon(delta)


def _run_numbers(run):
    priv = json.loads((run / "metrics" / "privacy.json").read_text())
    meta = json.loads((run / "server_view" / "meta.json").read_text())
    cfg = read_yaml(run / "config.yaml")
    members = [len(c["members"]) for c in json.loads((run / "splits.json").read_text())["clients"]]
    # the run's own numbers, recomputed here from its files (not from the package's accounting)
    a, d = meta["abar_handover"], math.prod(meta["image_shape"])
    mu = math.sqrt(a / (1 - a)) * 2 * math.sqrt(d)
    p_server = (meta["timesteps"] - meta["t_c"]) / meta["timesteps"]
    return priv, meta, cfg, members, mu, p_server


def test_unlinked_epsilon_of_a_poisson_run_equals_dp_accountings_pld_on_its_own_rate_noise_and_rounds(tiny_run):
    priv, meta, cfg, members, mu, p_server = _run_numbers(tiny_run(*UNLINKED))
    u = priv["unlinked"]
    assert u["reason"] is None and meta["sampling"] == "poisson" and cfg["train"]["sampling"] == "poisson"
    assert u["sampling"] == "poisson"
    rounds, delta = priv["step"], u["delta"]
    assert rounds == 6 and 0.5 < mu < 1.5  # a cut where the secret draws matter
    for k, n in enumerate(members):
        rate = cfg["train"]["batch_size"] / n * p_server
        c = u["clients"][k]
        assert c["sample_rate"] == pytest.approx(rate, rel=1e-12) and c["chances"] == rounds
        assert c["epsilon_replace_one"] == pytest.approx(_oracle(mu, rate, rounds, delta), rel=TOL)
        assert c["epsilon_add_remove"] == "inf"
    worst = max(u["clients"], key=lambda c: c["sample_rate"])
    assert u["epsilon_replace_one"] == worst["epsilon_replace_one"] and u["epsilon_add_remove"] == "inf"
    assert u["add_remove_reason"] == ADD_REMOVE_REASON
    # power: the batch rate without P(t >= t_c), or one round less, give numbers outside the tolerance
    ro, rate = u["epsilon_replace_one"], cfg["train"]["batch_size"] / min(members) * p_server
    assert _oracle(mu, rate / p_server, rounds, delta) > (1 + 4 * TOL) * ro
    assert _oracle(mu, rate, rounds - 1, delta) < (1 - 4 * TOL) * ro
    assert priv["view"]["threat"].startswith("linked:") and u["threat"].startswith("unlinked:")
    assert "may recognise its row" in u["threat"]


def test_unlinked_epsilon_of_a_shuffle_run_equals_dp_accountings_pld_on_its_epochs_bound(tiny_run):
    priv, meta, cfg, members, mu, p_server = _run_numbers(tiny_run(*SHUFFLE))
    u = priv["unlinked"]
    assert u["reason"] is None and meta["sampling"] == "shuffle" and u["sampling"] == "shuffle"
    rounds, delta, B = priv["step"], u["delta"], cfg["train"]["batch_size"]
    for k, n in enumerate(members):
        epochs = math.ceil(rounds * B / n)  # the most batches of shuffled epochs an image can be in
        c = u["clients"][k]
        assert epochs == 3 and c["chances"] == epochs and c["sample_rate"] == pytest.approx(p_server, rel=1e-12)
        assert c["epsilon_replace_one"] == pytest.approx(_oracle(mu, p_server, epochs, delta), rel=TOL)
    ro = u["epsilon_replace_one"]
    assert _oracle(mu, p_server, 2, delta) < (1 - 4 * TOL) * ro and _oracle(mu, 1.0, 3, delta) > (1 + 4 * TOL) * ro  # power
    assert u["epsilon_add_remove"] == "inf"


def test_the_sum_form_is_not_a_bound_for_rows_that_are_absent():
    """dp_accounting's Poisson-subsampled Gaussian (an image not drawn adds noise at the same place) gives
    a smaller epsilon than the pair "no row / one row" needs: at its epsilon the pair's delta, by
    dp_accounting's own PLD, exceeds the target. Ours meets it."""
    mu, p, n, delta = 4.0, 0.05, 10, 1e-5
    s, ours = _sum_form(mu, p, n, delta), secret_sampling_epsilon(mu, p, n, delta)
    assert s < ours
    exact = _oracle_pld(mu, p, n)
    assert exact.get_delta_for_epsilon(s) > 2 * delta
    assert exact.get_delta_for_epsilon(ours * 1.01) <= delta
    assert secret_sampling_delta(ours, mu, p, n, delta) == pytest.approx(delta, rel=1e-6)


@pytest.mark.parametrize("override, names", [
    ("protocol.fixed_noise=true", "protocol.fixed_noise"),
    ("model.server_conditioning=labels", "model.server_conditioning = labels"),
    ("secrets.derive_from_seed=true", "secrets.derive_from_seed"),
])  # fmt: skip
def test_refused_in_one_line_naming_the_assumption(override, names):
    cfg = tiny_config(*UNLINKED, override)
    u = unlinked_privacy(cfg, (1, 8, 8), [640, 650], 6)
    assert u.epsilon_replace_one is None and u.epsilon_add_remove is None
    assert u.reason.startswith("not reported: ") and names in u.reason and "\n" not in u.reason
    # the same config with that one setting back is reported, with Poisson or shuffled batches
    for base in (UNLINKED, SHUFFLE):
        assert unlinked_privacy(tiny_config(*base), (1, 8, 8), [640, 650], 6).reason is None


def test_dp_sgd_clients_draw_poisson_batches_whatever_train_sampling_says():
    cfg = tiny_config(*UNLINKED, "train.sampling=shuffle", "defense.client_dp.enabled=true",
                      "defense.client_dp.noise_multiplier=1.0")  # fmt: skip
    u = unlinked_privacy(cfg, (1, 8, 8), [640], 6)
    assert cfg.client_sampling == "poisson" and u.reason is None and u.sampling == "poisson" and u.chances == 6
    assert tiny_config(*UNLINKED, "train.sampling=shuffle").client_sampling == "shuffle"


def test_trained_run_with_derived_secrets_reports_the_reason(tiny_run):
    priv = json.loads((tiny_run() / "metrics" / "privacy.json").read_text())
    assert priv["unlinked"]["epsilon_replace_one"] is None
    assert "secrets.derive_from_seed" in priv["unlinked"]["reason"]


def test_edge_cases():
    assert secret_sampling_epsilon(math.inf, 0.1, 5, 1e-5) == math.inf  # shared-noise, c = 0
    assert secret_sampling_epsilon(0.0, 0.1, 5, 1e-5) == 0.0  # c = 1
    assert secret_sampling_epsilon(1.0, 0.0, 5, 1e-5) == 0.0
    assert secret_sampling_epsilon(1.0, 0.1, 0, 1e-5) == 0.0
    with pytest.raises(ValueError, match="delta"):
        secret_sampling_epsilon(1.0, 0.1, 5, 0.0)
    assert refusal(fixed_noise=False, sends_labels=False, derived_secrets=False) is None
    # one chance taken for sure: one Gaussian release
    from collafuse_privacy.defenses.accounting import gdp_epsilon

    assert secret_sampling_epsilon(2.0, 1.0, 1, 1e-5) == pytest.approx(gdp_epsilon(2.0, 1e-5), rel=1e-8)
    # large mu, many rounds: finite, growing with mu, and the truncated tail keeps it an upper bound
    big = secret_sampling_epsilon(200.0, 0.05, 900, 1e-5)
    assert math.isfinite(big) and big > secret_sampling_epsilon(50.0, 0.05, 900, 1e-5)
    assert secret_sampling_delta(big, 200.0, 0.05, 900, 1e-5) <= 1e-5 * (1 + 1e-6)
    # c = 1 and a cut that sends nothing: add/remove 0, not infinite
    u = unlinked_privacy(tiny_config(*UNLINKED, "protocol.cut_ratio=1"), (1, 8, 8), [640, 650], 6)
    assert u.epsilon_replace_one == 0.0 and u.epsilon_add_remove == 0.0 and u.add_remove_reason is None


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
        return view_unlinked(c.abar_handover, t_c, c.T, (1, 8, 8), sampling="poisson", batch_size=64, n_members=n,
                             rounds=50, delta=1e-5).epsilon  # fmt: skip

    assert eps(choice.t_c) == pytest.approx(choice.epsilon) and eps(choice.t_c - 1) > 1  # one step less does not
    # the linked target of the same config needs a larger cut: the linked number assumes a stronger server
    linked = resolve(tiny_config(*over[:-1]))
    assert linked.cut_choice.t_c > choice.t_c
    # shuffled epochs: resolved too (the secret-sampling bound covers them)
    shuffled = resolve(tiny_config(*over, "train.sampling=shuffle")).cut_choice
    assert shuffled.threat == "unlinked" and shuffled.epsilon <= 1 and "shuffled epochs" in shuffled.message


@pytest.mark.parametrize("override, words", [
    ("secrets.derive_from_seed=true", "secrets.derive_from_seed"),
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
    assert priv["epsilon_add_remove"] == "inf"
    want = f"{priv['epsilon_replace_one']:.3g} / inf"
    assert any(c.startswith(want) for c in cells)
    assert any(c.startswith("n/a [") for c in cells)  # the derived-secrets run: refused, its reason in a footnote
    footnotes = " ".join(notes["settings"])
    assert "secrets.derive_from_seed" in footnotes and "linked:" in footnotes and "unlinked:" in footnotes
    assert "may recognise its row" in footnotes and "presence reveals the image" in footnotes
    assert all(r[linked_col] not in ("n/a", "-") for r in rows.values())
    text = " ".join(reading(collect([poisson, shuffle])))
    assert "unlinked server" in text and f"eps={priv['epsilon_replace_one']:.3g}" in text


def test_view_meta_check_compares_sampling_and_reads_views_from_before_the_field(tiny_run, tmp_path):
    from collafuse_privacy.run.codec import read_json
    from collafuse_privacy.run.directory import RunDir
    from collafuse_privacy.run.schemas import ViewMeta
    from collafuse_privacy.view import check_meta

    edited = tmp_path / "meta.json"
    for run, other in ((tiny_run(*UNLINKED), "shuffle"), (tiny_run(), "poisson")):
        rd = RunDir(run)
        raw, cfg = json.loads(rd.meta_path.read_text()), rd.config()
        check_meta(rd.meta(), cfg, rd.meta_path)
        edited.write_text(json.dumps({**raw, "sampling": other}))
        with pytest.raises(UserError, match="says sampling = '" + other):
            check_meta(read_json(edited, ViewMeta), cfg, edited)
    # a view written before the field (the last run: shuffled batches, no DP-SGD) still loads ...
    raw.pop("sampling")
    edited.write_text(json.dumps(raw))
    old = read_json(edited, ViewMeta)
    assert old.sampling is None
    check_meta(old, cfg, edited)
    dp = tiny_config("defense.client_dp.enabled=true", "defense.client_dp.noise_multiplier=1.0")
    check_meta(old, dp, edited)  # DP-SGD clients always drew Poisson
    # ... but not under a config whose clients draw Poisson batches without DP-SGD
    with pytest.raises(UserError, match="sampling"):
        check_meta(old, tiny_config("train.sampling=poisson"), edited)
