"""eval/roc.py against scikit-learn and hand-worked cases."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from collafuse_privacy.eval.roc import (auc, best_threshold, calibration_halves, interp_tpr, membership_metrics,
                                       resolvable, roc_curve, tpr_at_fpr, unresolved_tpr)  # fmt: skip


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_roc_and_auc_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 500)
    s = np.round(rng.normal(size=500) + 0.7 * y, 1)  # rounding makes many ties
    fpr, tpr, thr = roc_curve(s, y)
    f2, t2, th2 = sk_roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr, f2)
    np.testing.assert_allclose(tpr, t2)
    np.testing.assert_allclose(thr[1:], th2[1:])
    assert abs(auc(s, y) - roc_auc_score(y, s)) < 1e-12


def test_best_threshold_is_the_best_balanced_accuracy():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 200)
    s = rng.normal(size=200) + y
    bacc = lambda t: ((s >= t)[y == 1].mean() + (s < t)[y == 0].mean()) / 2  # noqa: E731
    brute = max(bacc(t) for t in np.r_[s, np.inf])
    assert abs(bacc(best_threshold(s, y)) - brute) < 1e-12


def test_calibration_halves_are_disjoint_stratified_and_seeded():
    y = np.r_[np.ones(41), np.zeros(60)].astype(int)
    a, b = calibration_halves(y, seed=3)
    assert not set(a) & set(b) and len(a) + len(b) == len(y)
    assert y[a].sum() == 20 and (1 - y[a]).sum() == 30
    assert np.array_equal(a, calibration_halves(y, seed=3)[0]) and not np.array_equal(a, calibration_halves(y, 4)[0])


def test_balanced_accuracy_without_signal_is_at_chance():
    """Scores independent of membership: the threshold is chosen on one half and the accuracy
    measured on the other, so its interval covers 0.5 about 95% of the time (choosing the
    threshold on the scored data pushes the interval above 0.5 in most runs)."""
    covered = 0
    for seed in range(20):
        rng = np.random.default_rng(seed)
        y = np.r_[np.ones(300), np.zeros(300)].astype(int)
        m, _ = membership_metrics(rng.normal(size=600), y, n_boot=200, seed=seed)
        covered += m["balanced_accuracy"].lo <= 0.5 <= m["balanced_accuracy"].hi
    assert covered >= 16, covered


def test_tpr_below_the_resolution_of_the_sample_is_not_a_number():
    """A point estimate of TPR at FPR f needs 10 / f non-members (10 false positives): 600 resolve neither
    1% (1,000 needed) nor 0.1%; 1,000 resolve 1%."""
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(600), np.zeros(600)].astype(int)
    s = rng.normal(size=1200) + y
    m, notes = membership_metrics(s, y, n_boot=100)
    assert m["tpr_at_1pct_fpr"] is None and "1000 non-members (10 false positives)" in notes["tpr_at_1pct_fpr"]
    assert m["tpr_at_0.1pct_fpr"] is None and "10000 non-members" in notes["tpr_at_0.1pct_fpr"]
    assert not resolvable(0.01, 999) and resolvable(0.01, 1000)
    y2 = np.r_[np.ones(1000), np.zeros(1000)].astype(int)
    m2, notes2 = membership_metrics(rng.normal(size=2000) + y2, y2, n_boot=100)
    assert m2["tpr_at_1pct_fpr"] is not None and "tpr_at_1pct_fpr" not in notes2


def test_an_unresolved_tpr_gets_clopper_pearson_intervals_that_cover():
    """Where no point estimate is given: at the threshold admitting at most floor(f n) non-members, the
    95% Clopper-Pearson intervals of TPR and FPR cover the true rates of that threshold in about 95% of
    samples (scores N(1, 1) for members, N(0, 1) for non-members: rates are normal tails)."""
    from scipy.stats import norm

    hits_t = hits_f = 0
    reps = 200
    for seed in range(reps):
        rng = np.random.default_rng(seed)
        y = np.r_[np.ones(300), np.zeros(300)].astype(bool)
        s = rng.normal(size=600) + y
        r = unresolved_tpr(s, y, 0.01)
        th = np.sort(s[~y])[::-1][3]  # floor(0.01 x 300) = 3 false positives at most
        assert r["false_positives"] <= 3 and set(r) >= {"tpr_interval", "fpr_interval"} and "tpr" not in r
        lo, hi = r["tpr_interval"]
        hits_t += lo <= norm.sf(th - 1) <= hi
        lo, hi = r["fpr_interval"]
        hits_f += lo <= norm.sf(th) <= hi
    assert hits_t >= 0.9 * reps and hits_f >= 0.9 * reps, (hits_t, hits_f)


def test_tpr_at_fpr_interpolates_linearly_between_vertices():
    # members 0.9, 0.8; non-member 0.7; member 0.6; non-members 0.5, 0.4, 0.3, 0.2
    s = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2])
    y = np.array([1, 1, 0, 1, 0, 0, 0, 0])
    # vertices: (0, 2/3) -> (0.2, 2/3) -> (0.2, 1) -> ... ; at FPR 0.1 halfway on a flat segment
    assert tpr_at_fpr(s, y, 0.0) == pytest.approx(2 / 3)
    assert tpr_at_fpr(s, y, 0.1) == pytest.approx(2 / 3)
    assert tpr_at_fpr(s, y, 0.2) == pytest.approx(1.0)  # top of the vertical segment
    # a diagonal segment: tied member and non-member
    s2, y2 = np.array([1.0, 0.5, 0.5, 0.0]), np.array([1, 1, 0, 0])
    assert tpr_at_fpr(s2, y2, 0.25) == pytest.approx(0.75)  # halfway from (0, .5) to (.5, 1)
    fpr, tpr, _ = roc_curve(s2, y2)
    assert np.all(np.diff(interp_tpr(fpr, tpr, np.linspace(0, 1, 50))) >= 0)


def test_metrics_intervals():
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(300), np.zeros(300)].astype(int)
    s = rng.normal(size=600) + 1.0 * y
    m, notes = membership_metrics(s, y, n_boot=200)
    assert set(notes) == {"tpr_at_1pct_fpr", "tpr_at_0.1pct_fpr"}  # 300 non-members resolve neither (10 / FPR)
    for k, iv in m.items():
        if iv is not None:
            assert iv.lo <= iv.value <= iv.hi, k
    # AUC of N(1,1) vs N(0,1) is Phi(1/sqrt(2)) = 0.760
    assert m["auc"].lo < 0.760 < m["auc"].hi
    assert abs(auc(-s, y) - (1 - auc(s, y))) < 1e-12
