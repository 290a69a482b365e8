"""The audit of the unlinked claim (eval/audit_unlinked.py): the view-only one-run bounds against the
unlinked epsilon, with the power to fail (an understated formal number is caught)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from collafuse_privacy.defenses.unlinked import secret_sampling_epsilon
from collafuse_privacy.eval import audit_stats as st
from collafuse_privacy.eval.audit_unlinked import unlinked_check
from collafuse_privacy.run.schemas import UnlinkedPrivacy

DELTA = 1e-5


def _claim(eps):
    return UnlinkedPrivacy(epsilon_replace_one=eps, epsilon_add_remove=math.inf, delta=DELTA, rounds=1)


def _secret_sampling_slots(m: int, mu: float, p: float, n: int, seed: int = 0):
    """``m`` replace-one slots of the exact mechanism the unlinked bound covers, scored by the strongest
    attacker it allows: one that recognises each of the slot's rows (``k ~ Bin(n, p)`` of them) and sums
    their log likelihood ratios, ``N(+-mu^2/2, mu^2)`` each."""
    rng = np.random.default_rng(seed)
    coin = rng.random(m) < 0.5
    k = rng.binomial(n, p, size=m)
    s = np.where(coin, 1.0, -1.0) * k * mu * mu / 2 + mu * np.sqrt(k) * rng.standard_normal(m)
    return s, coin


def test_the_strongest_recognising_attacker_stays_below_the_bound():
    mu, p, n, m = 1.5, 0.5, 4, 20000  # up to four chances, each taken with probability 1/2
    s, coin = _secret_sampling_slots(m, mu, p, n)
    cal, ev = st.halves(m, 0)
    formal = secret_sampling_epsilon(mu, p, n, DELTA)
    ok = unlinked_check(_claim(formal), {"recognise": s, "noise": np.zeros(m)}, coin, cal, ev, 0.05)
    assert ok.check == "passed" and 3.0 < ok.epsilon_lb <= formal, ok.message  # measured 4.83 <= 14.7
    assert ok.ratio == pytest.approx(ok.epsilon_lb / formal) and ok.best == "recognise"


def test_an_understated_unlinked_epsilon_fails_the_check():
    """The check's power: an accountant that halved the per-release mu (a release at the wrong noise
    level) claims 4.38 for a mechanism whose strongest attacker certifies 4.94 on 10,000 slots."""
    mu, m = 2.0, 20000
    s, coin = _secret_sampling_slots(m, mu, 1.0, 1)
    cal, ev = st.halves(m, 0)
    assert unlinked_check(_claim(secret_sampling_epsilon(mu, 1.0, 1, DELTA)), {"recognise": s}, coin, cal, ev,
                          0.05).check == "passed"  # fmt: skip
    for wrong in (secret_sampling_epsilon(mu / 2, 1.0, 1, DELTA), 1.0):
        bad = unlinked_check(_claim(wrong), {"recognise": s, "noise": np.zeros(m)}, coin, cal, ev, 0.05)
        assert bad.check == "failed" and "recognise's epsilon" in bad.message and "noise's" not in bad.message


def test_chance_scores_pass_and_certify_nothing():
    rng = np.random.default_rng(1)
    m = 2000
    coin = rng.random(m) < 0.5
    cal, ev = st.halves(m, 1)
    r = unlinked_check(_claim(1.0), {"view-lrt": rng.standard_normal(m)}, coin, cal, ev, 0.05)
    assert r.check == "passed" and r.epsilon_lb < 0.5 and r.max_certifiable_epsilon > 1.0


def test_no_unlinked_number_is_not_audited_and_says_why():
    coin = np.array([True, False] * 10)
    cal, ev = st.halves(20, 0)
    refused = UnlinkedPrivacy(epsilon_replace_one=None, epsilon_add_remove=None, delta=DELTA, rounds=1,
                              reason="not reported: protocol.fixed_noise re-sends the same h")  # fmt: skip
    r = unlinked_check(refused, {"view-lrt": np.zeros(20)}, coin, cal, ev, 0.05)
    assert r.check == "not audited" and "fixed_noise" in r.message and r.bounds == {}
    assert unlinked_check(None, {}, coin, cal, ev, 0.05).check == "not audited"
