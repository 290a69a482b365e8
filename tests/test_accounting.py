"""GDP release accounting (DESIGN.md §4): conversion vs numeric integration and Opacus,
the server view of runs (privacy.json), fixed vs fresh noise, the privacy-budgeted cut."""

import json
import math

import pytest
from scipy import integrate
from scipy.stats import norm

from collafuse_privacy.config import DiffusionConfig
from collafuse_privacy.defenses.accounting import (
    INF,
    dp_sgd_epsilon,
    epochs_bound,
    gaussian_epsilon,
    gdp_delta,
    gdp_epsilon,
    poisson_draws_bound,
    release_mu,
    smallest_cut,
)
from collafuse_privacy.defenses.privacy import format_privacy, privacy_report
from collafuse_privacy.protocol import Cut, make_protocol
from collafuse_privacy.errors import UserError
from collafuse_privacy.run.directory import read_run_config
from collafuse_privacy.training import train

from conftest import tiny_config


def _delta_by_integration(eps, mu):
    """Privacy profile of N(mu,1) vs N(0,1): integral of (p - e^eps q)_+, p > e^eps q for x > x0."""
    x0 = eps / mu + mu / 2
    f = lambda x: norm.pdf(x, loc=mu) - math.exp(eps) * norm.pdf(x)  # noqa: E731
    val, _ = integrate.quad(f, x0, x0 + 40, epsabs=1e-14, epsrel=1e-12, limit=200, points=[mu])
    return val


@pytest.mark.parametrize("mu", [0.3, 1.0, 2.0, 5.0])
@pytest.mark.parametrize("eps", [0.0, 0.5, 2.0, 6.0])
def test_gdp_delta_matches_numeric_integration(mu, eps):
    ref = _delta_by_integration(eps, mu)
    assert gdp_delta(eps, mu) == pytest.approx(ref, rel=1e-7, abs=1e-15)


@pytest.mark.parametrize("mu", [0.5, 1.0, 3.0, 20.0])
def test_gdp_epsilon_inverts_the_integrated_profile(mu):
    eps = gdp_epsilon(mu, 1e-5)
    assert _delta_by_integration(eps, mu) == pytest.approx(1e-5, rel=1e-6)


def test_large_mu_stays_finite_and_monotone():
    eps = [gdp_epsilon(mu, 1e-5) for mu in (10.0, 100.0, 1e3, 1e4)]
    assert all(math.isfinite(e) for e in eps) and eps == sorted(eps)
    assert eps[-1] == pytest.approx(1e8 / 2, rel=0.01)  # ~ mu^2 / 2 for huge mu
    assert gdp_epsilon(INF, 1e-5) == INF and gdp_epsilon(0.0, 1e-5) == 0.0


@pytest.mark.parametrize("sigma", [0.7, 1.0, 2.0, 5.0])
def test_one_gaussian_step_agrees_with_opacus_accountants(sigma):
    """Gaussian mechanism, one step, sample rate 1: mu = 1/sigma. PRV discretises (eps_error
    0.01 by default); RDP is an upper bound that must not be below the exact value."""
    exact = gaussian_epsilon(sigma, 1e-5)
    prv = dp_sgd_epsilon([(sigma, 1.0, 1)], 1e-5, "prv")
    rdp = dp_sgd_epsilon([(sigma, 1.0, 1)], 1e-5, "rdp")
    assert prv == pytest.approx(exact, abs=0.02)
    assert rdp >= exact - 1e-9 and rdp < exact * 1.5


def test_design_scale_numbers():
    """DESIGN.md §4: linear schedule, T = 1000, 32x32x3, one release, delta = 1e-5."""
    ab = Cut(DiffusionConfig(timesteps=1000), 0).abar.numpy()
    for t, expect in [(500, 655), (800, 27), (900, 8.9), (999, 2.9)]:
        assert gdp_epsilon(release_mu(float(ab[t]), (3, 32, 32)), 1e-5) == pytest.approx(expect, rel=0.02)


def _view(kind, t_c, T=20):
    return make_protocol(kind, Cut(DiffusionConfig(timesteps=T), t_c))


def test_view_privacy_edge_cases_and_composition():
    shape = (1, 8, 8)
    assert _view("shared-noise", 5).view_privacy(shape, 1, 1e-5) == (INF, INF)
    assert _view("cut-image", 0).view_privacy(shape, 1, 1e-5) == (INF, INF)
    assert _view("cut-image", 20).view_privacy(shape, 3, 1e-5) == (0.0, 0.0)
    mu1, e1 = _view("cut-image", 10).view_privacy(shape, 1, 1e-5)
    mu4, e4 = _view("cut-image", 10).view_privacy(shape, 4, 1e-5)
    assert mu4 == pytest.approx(2 * mu1) and e4 > e1 > 0
    assert mu1 == pytest.approx(release_mu(Cut(DiffusionConfig(timesteps=20), 10).abar_handover, shape))


def test_release_bounds():
    assert epochs_bound(10, 8, 40) == 2 and epochs_bound(11, 8, 40) == 3 and epochs_bound(0, 8, 40) == 0
    b = poisson_draws_bound(100, 0.1, 500)
    assert 10 < b < 40  # mean 10; the all-images tail bound sits well above it


def test_smallest_cut_is_the_first_that_meets_the_target():
    ab = Cut(DiffusionConfig(timesteps=200), 0).abar_table.numpy()  # index t_c: the hand-over abar
    for target, R in [(1.0, 1), (10.0, 1), (10.0, 9), (1e4, 1)]:
        t_c, mu, eps = smallest_cut(ab, (1, 16, 16), R, target, 1e-5)
        assert eps <= target and 0 < t_c <= 200
        if t_c < 200:
            assert eps == pytest.approx(_view("cut-image", t_c, 200).view_privacy((1, 16, 16), R, 1e-5)[1])
        prev = _view("cut-image", t_c - 1, 200).view_privacy((1, 16, 16), R, 1e-5)[1]
        assert prev > target
    assert smallest_cut(ab, (1, 16, 16), 9, 10.0, 1e-5)[0] >= smallest_cut(ab, (1, 16, 16), 1, 10.0, 1e-5)[0]


# ---- runs --------------------------------------------------------------------------

SMALL = ["data.max_images=80", "train.steps=12"]  # ~28 members per client: ~3.4 epochs of batch 8


def _privacy(run):
    return json.loads((run / "metrics" / "privacy.json").read_text())


def test_every_run_writes_privacy_json(tiny_run):
    rep = _privacy(tiny_run())
    v = rep["view"]
    assert rep["protocol"] == "cut-image" and rep["t_c"] == 10
    assert math.isfinite(v["epsilon"]) and v["epsilon"] > 0 and v["releases_per_image"] >= 1
    assert set(rep["client_dp"]) >= {"enabled", "epsilon", "delta", "noise_multiplier", "max_grad_norm",
                                      "accountant", "sample_rate", "steps", "grad_sample_mode"}  # fmt: skip
    assert rep["client_dp"]["epsilon"] == "inf"
    assert _privacy(tiny_run("protocol.kind=shared-noise"))["view"]["epsilon"] == "inf"


def test_fixed_noise_spends_less_than_fresh_noise(tmp_path):
    fresh, fixed = tmp_path / "fresh", tmp_path / "fixed"
    train(tiny_config(*SMALL), fresh, device="cpu", quiet=True)
    train(tiny_config(*SMALL, "protocol.fixed_noise=true"), fixed, device="cpu", quiet=True)
    a, b = _privacy(fresh)["view"], _privacy(fixed)["view"]
    assert a["epochs"] > 3 and a["releases_per_image"] >= 2 and b["releases_per_image"] == 1
    assert b["epsilon"] < a["epsilon"] and b["epsilon"] == pytest.approx(a["per_release"]["epsilon"])
    # counted releases: never more than the epochs bound
    assert a["releases_per_image"] <= math.ceil(a["epochs"])


def test_privacy_report_recomputes_and_formats(tmp_path, tiny_run):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run(), run)
    before = _privacy(run)
    (run / "metrics" / "privacy.json").unlink()
    report = privacy_report(run)
    assert _privacy(run) == before
    text = format_privacy(report)
    assert "server view: cut-image" in text and "client DP-SGD: off" in text


def test_target_epsilon_picks_the_cut_and_records_it(tmp_path, capsys):
    over = [*SMALL, "protocol.fixed_noise=true", "protocol.target_epsilon=25", "protocol.cut_ratio=0.1"]
    train(tiny_config(*over), tmp_path, device="cpu", quiet=False)
    assert "is the smallest cut meeting it" in capsys.readouterr().err
    rep = _privacy(tmp_path)
    choice, cfg = rep["cut_choice"], read_run_config(tmp_path)
    assert cfg.protocol.cut_ratio == choice["cut_ratio"] == rep["cut_ratio"] != 0.1
    assert rep["view"]["epsilon"] <= 25 and choice["t_c"] == cfg.t_c
    ab = Cut(cfg.diffusion, 0).abar.numpy()
    assert gdp_epsilon(release_mu(float(ab[cfg.t_c - 2]), (1, 8, 8)), 1e-5) > 25  # one step less does not
    # the same command resumes (the unresolved config resolves to the same cut)
    train(tiny_config(*over), tmp_path, device="cpu", quiet=True)


def test_target_epsilon_refused_for_shared_noise():
    with pytest.raises(UserError, match="target_epsilon"):
        tiny_config("protocol.kind=shared-noise", "protocol.target_epsilon=5")
