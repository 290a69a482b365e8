"""eval/roc.py against scikit-learn and hand-worked cases."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from collafuse_privacy.eval.roc import auc, balanced_accuracy, interp_tpr, membership_metrics, roc_curve, tpr_at_fpr


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


def test_balanced_accuracy_is_best_threshold():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 200)
    s = rng.normal(size=200) + y
    brute = max(((s >= t)[y == 1].mean() + (s < t)[y == 0].mean()) / 2 for t in np.r_[s, np.inf])
    assert abs(balanced_accuracy(s, y) - brute) < 1e-12


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
    m = membership_metrics(s, y, n_boot=200)
    for k, iv in m.items():
        assert iv.lo <= iv.value <= iv.hi, k
    # AUC of N(1,1) vs N(0,1) is Phi(1/sqrt(2)) = 0.760
    assert m["auc"].lo < 0.760 < m["auc"].hi
    assert abs(auc(-s, y) - (1 - auc(s, y))) < 1e-12
