"""Empirical privacy lower bounds from canary scores (the statistics of ``eval/audit.py``).

A privacy audit plays the distinguishing game of the definition: for each canary slot a fair
coin decides between two neighbouring inputs (the canary or its partner, or the canary present
or absent), the mechanism runs, and an attack scores the slot (higher = "coin 1"). Any threshold
test on those scores has a false-positive rate ``FPR`` (coin 0 called 1) and a false-negative
rate ``FNR``; an ``(eps, delta)``-DP mechanism forces

    FPR + e^eps FNR >= 1 - delta   and   FNR + e^eps FPR >= 1 - delta

(Kairouz et al. 2015), so ``eps >= log((1 - delta - FPR) / FNR)`` and the same with the rates
swapped. With Clopper-Pearson upper bounds on both rates (each at ``1 - alpha/2``) this is a
lower bound on ``eps`` that holds with probability ``>= 1 - alpha`` (Jagielski, Ullman, Oprea 2020).

A ``mu``-GDP mechanism (Dong, Roth, Su 2022) forces ``FNR >= Phi(Phi^-1(1 - FPR) - mu)`` at every
threshold, so ``mu >= Phi^-1(1 - FPR) - Phi^-1(FNR)``; with the same upper bounds on the rates it is
a lower bound on ``mu`` at confidence ``1 - alpha``: no ``mu'``-GDP claim with ``mu'`` below it can
hold (Nasr et al. 2023 fit the trade-off curve the same way). It bounds ``mu``, not ``epsilon``: a
mechanism that is not Gaussian can give a large ``mu`` bound at a small ``epsilon`` (randomised
response with pure ``epsilon = 2`` yields ``mu >= 2.36``, whose GDP ``eps(delta = 1e-5)`` is 12.3), so
its ``eps(delta)`` is never reported as an epsilon bound. It audits a GDP claim (the release bound
of the view is one) against its ``mu``; the ``(eps, delta)`` route above is the assumption-free
epsilon bound.

Both routes treat the slots as independent Bernoulli trials (Clopper-Pearson): valid where each
slot's score depends only on its own randomness (the auditor's known-release test), not where one
view or one model trained on every canary scores all of them (then the trials are dependent). For
those, :func:`one_run` (below) is the valid route: it needs only the coins to be independent.

The threshold is chosen on a calibration half of the slots and the rates are counted on the other
half: choosing it on the scored slots would make the bound optimistic.

:func:`one_run_epsilon`: Steinke, Nasr, Jagielski 2023 ("Privacy auditing with one (1) training
run"), Theorem 3 with the delta term: an attack that guesses the coins of ``r`` of ``m`` slots and
gets ``v`` right bounds ``eps`` from below when ``P[Binomial(r, e^eps / (1 + e^eps)) >= v]`` plus
the ``2 m delta`` term is below ``alpha``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
from scipy.special import ndtri
from scipy.stats import binom

from .stats import cp_lower, cp_upper  # noqa: F401  (Clopper-Pearson, part of this module's API)

MAX_THRESHOLDS = 2048  # candidate thresholds scanned on the calibration half (quantiles)


def eps_from_rates(fpr, fnr, delta: float):
    """The largest ``eps`` that ``(FPR, FNR)`` rule out for ``(eps, delta)``-DP (0 when none)."""
    fpr, fnr = np.asarray(fpr, dtype=np.float64), np.asarray(fnr, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.log(np.maximum(1.0 - delta - fpr, 0.0)) - np.log(fnr)
        b = np.log(np.maximum(1.0 - delta - fnr, 0.0)) - np.log(fpr)
    out = np.fmax(a, b)
    return np.where(np.isnan(out), 0.0, np.maximum(out, 0.0))


def mu_from_rates(fpr, fnr):
    """``Phi^-1(1 - FPR) - Phi^-1(FNR)`` (0 when negative): the ``mu`` of GDP that ``(FPR, FNR)`` rule out
    below; symmetric in the two rates."""
    fpr, fnr = np.asarray(fpr, dtype=np.float64), np.asarray(fnr, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        out = ndtri(1.0 - fpr) - ndtri(fnr)
    return np.where(np.isnan(out), 0.0, np.maximum(out, 0.0))


def _counts(scores: np.ndarray, labels: np.ndarray, thresholds: np.ndarray):
    """``(false positives, false negatives)`` of the tests ``score >= th`` for every threshold."""
    neg, pos = np.sort(scores[~labels]), np.sort(scores[labels])
    fp = len(neg) - np.searchsorted(neg, thresholds, side="left")  # negatives >= th
    fn = np.searchsorted(pos, thresholds, side="left")  # positives < th
    return fp, fn


def _thresholds(scores: np.ndarray) -> np.ndarray:
    u = np.unique(scores)
    if len(u) > MAX_THRESHOLDS:
        u = np.unique(np.quantile(u, np.linspace(0, 1, MAX_THRESHOLDS)))
    return np.concatenate((u, [np.inf]))


@dataclass(frozen=True)
class Bound:
    """A lower bound from one threshold test counted on the evaluation half."""

    value: float  # the lower bound (confidence 1 - alpha)
    point: float  # the same statistic at the observed rates (an estimate, not a bound)
    threshold: float
    fpr: float
    fnr: float
    n_pos: int
    n_neg: int


def threshold_bound(scores, labels, cal: np.ndarray, ev: np.ndarray, kind: str, delta: float,
                    alpha: float = 0.05) -> Optional[Bound]:  # fmt: skip
    """The ``kind`` (``"eps"`` or ``"mu"``) lower bound of the threshold test chosen on the slots ``cal``
    (the one with the largest bound there) and counted on the slots ``ev``. None without both coins in
    both halves."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    sc, yc, se, ye = s[cal], y[cal], s[ev], y[ev]
    if min(yc.sum(), (~yc).sum(), ye.sum(), (~ye).sum()) == 0:
        return None
    th = _thresholds(sc)
    fp, fn = _counts(sc, yc, th)
    hi_fpr, hi_fnr = cp_upper(fp, (~yc).sum(), alpha / 2), cp_upper(fn, yc.sum(), alpha / 2)
    f = (lambda a, b: eps_from_rates(a, b, delta)) if kind == "eps" else mu_from_rates
    best = float(th[int(np.argmax(f(hi_fpr, hi_fnr)))])
    fp, fn = (int(v[0]) for v in _counts(se, ye, np.array([best])))
    n_neg, n_pos = int((~ye).sum()), int(ye.sum())
    lo_bound = float(f(cp_upper(fp, n_neg, alpha / 2), cp_upper(fn, n_pos, alpha / 2)))
    point = float(f(fp / n_neg, fn / n_pos))
    return Bound(lo_bound, point, best, fp / n_neg, fn / n_pos, n_pos, n_neg)


def max_certifiable(n_pos: int, n_neg: int, delta: float, alpha: float = 0.05) -> tuple[float, float]:
    """``(eps, mu)``: the largest lower bounds ``n_pos`` / ``n_neg`` evaluation slots can give at all (a
    perfect attack: no errors); a larger formal value cannot be confirmed as tight with these canaries."""
    hf, hn = cp_upper(0, n_neg, alpha / 2), cp_upper(0, n_pos, alpha / 2)
    return float(eps_from_rates(hf, hn, delta)), float(mu_from_rates(hf, hn))


# ---- one run (Steinke, Nasr, Jagielski 2023) ------------------------------------------------


def one_run_p_value(m: int, r: int, v: int, eps: float, delta: float) -> float:
    """``P[>= v correct of r guesses]`` under ``(eps, delta)``-DP with ``m`` randomised slots: the
    randomised-response tail ``P[Binomial(r, q) >= v]``, ``q = e^eps / (1 + e^eps)``, plus
    ``2 m delta max_i P[v - i <= Binomial(r, q) < v] / i`` (their Theorem 3 / Algorithm 2)."""
    if not 0 <= v <= r <= m:
        raise ValueError(f"need 0 <= v <= r <= m, got v={v}, r={r}, m={m}")
    q = 1.0 / (1.0 + math.exp(-eps))
    tail = float(binom.sf(v - 1, r, q))
    if delta <= 0 or v == 0:
        return min(1.0, tail)
    pmf = binom.pmf(np.arange(v - 1, -1, -1), r, q)  # P[B = v-1], P[B = v-2], ..., P[B = 0]
    worst = float(np.max(np.cumsum(pmf) / np.arange(1, v + 1)))
    return min(1.0, tail + 2.0 * m * delta * worst)


def one_run_bound(m: int, r: int, v: int, delta: float, alpha: float = 0.05) -> float:
    """The largest ``eps`` whose p-value for ``v`` of ``r`` correct guesses is below ``alpha`` (0 when none)."""
    if r == 0 or one_run_p_value(m, r, v, 0.0, delta) >= alpha:
        return 0.0
    lo, hi = 0.0, 1.0
    while one_run_p_value(m, r, v, hi, delta) < alpha:
        lo, hi = hi, hi * 2
        if hi > 1e3:
            return lo
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if one_run_p_value(m, r, v, mid, delta) < alpha else (lo, mid)
    return lo


@dataclass(frozen=True)
class OneRun:
    epsilon: float  # the lower bound on the evaluation slots
    guesses: int
    correct: int
    slots: int
    abstain_fraction: float  # chosen on the calibration slots
    calibration: float = 0.0  # the bound on the calibration slots (where the abstain fraction was chosen)


ABSTAIN_GRID = (0.0, 0.5, 0.8, 0.9, 0.95, 0.98, 0.99)


def one_run(scores, labels, cal: np.ndarray, ev: np.ndarray, delta: float, alpha: float = 0.05) -> OneRun:
    """Steinke et al.'s bound on the evaluation slots: guess the coin of the most confident slots (the
    ``1 - f`` largest ``|score - median|``, with the sign of ``score - median``), abstain on the rest;
    the fraction ``f`` is chosen on the calibration slots (where it gives the largest bound).

    Valid for dependent scores (one view or one model scoring every slot): the theorem needs only
    the coins to be independent and the guesses to be a function of the output. The calibration
    slots' coins are known to the guesser, so they count as fixed inputs: the bound is over the
    ``m = len(ev)`` evaluation slots."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(bool)

    def guess(idx, f):
        x = s[idx]
        c = x - np.median(x)
        keep = np.argsort(-np.abs(c), kind="mergesort")[: max(1, int(round(len(idx) * (1 - f))))]
        return len(keep), int(((c[keep] > 0) == y[idx][keep]).sum())

    def bound(idx, f):
        r, v = guess(idx, f)
        return one_run_bound(len(idx), r, v, delta, alpha)

    on_cal = {f: bound(cal, f) for f in ABSTAIN_GRID}
    f = max(ABSTAIN_GRID, key=lambda f: on_cal[f])
    r, v = guess(ev, f)
    return OneRun(one_run_bound(len(ev), r, v, delta, alpha), r, v, len(ev), f, on_cal[f])


@dataclass(frozen=True)
class Stratum:
    """The GDP route's mu bound within the slots of one release count (independent scores only)."""

    releases: int
    slots: int
    mu_lb: Optional[float]  # None where the stratum lacks both coins in both halves
    formal_mu: float  # the largest formal mu of its slots (at their releases and distance)
    alpha: float  # its share of the confidence budget (alpha / number of strata, a union bound)


def stratified_mu(scores, labels, cal: np.ndarray, ev: np.ndarray, releases, formal_mu, delta: float,
                  alpha: float = 0.05, min_slots: int = 40) -> list[Stratum]:  # fmt: skip
    """mu bounds per release count. With fresh noise a canary's release count is binomial and its formal
    ``mu`` grows as ``sqrt(count)``: a bound over all slots pools a mixture of trade-off curves and sits below
    the curve of the largest count the formal number uses. Each count with at least ``min_slots`` slots is
    bounded on its own slots (threshold on its calibration slots, rates on its evaluation slots), at
    confidence ``1 - alpha / k`` for ``k`` strata, so that all of them hold together at ``1 - alpha``."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    r = np.asarray(releases)
    f = np.asarray(formal_mu, dtype=np.float64)
    in_cal = np.zeros(len(s), dtype=bool)
    in_cal[cal] = True
    in_ev = np.zeros(len(s), dtype=bool)
    in_ev[ev] = True
    counts = [int(c) for c in np.unique(r) if c > 0 and (r == c).sum() >= min_slots]
    out = []
    for c in counts:
        sel = r == c
        b = threshold_bound(s, y, np.flatnonzero(sel & in_cal), np.flatnonzero(sel & in_ev), "mu", delta,
                            alpha / len(counts))  # fmt: skip
        out.append(Stratum(c, int(sel.sum()), None if b is None else b.value, float(f[sel].max()), alpha / len(counts)))
    return out


def halves(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded split of ``n`` slots into ``(calibration, evaluation)`` halves."""
    perm = np.random.default_rng([seed, 0xA0D17]).permutation(n)
    return np.sort(perm[: n // 2]), np.sort(perm[n // 2 :])
