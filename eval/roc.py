"""Privacy metrics of membership scores (higher score = "member"), as in
ml_privacy_meter's audit and Carlini et al. 2022 ("Membership Inference Attacks
From First Principles": report TPR at low FPR on a log-log ROC).

* :func:`roc_curve`: every distinct threshold (ties grouped, no points dropped),
  from ``(0, 0)`` to ``(1, 1)``; identical to ``sklearn.metrics.roc_curve(...,
  drop_intermediate=False)``.
* :func:`auc`: trapezoidal area under that curve (= the Mann-Whitney probability
  that a member outscores a non-member, ties counting 1/2).
* :func:`tpr_at_fpr`: TPR at a given FPR on the ROC with **linear interpolation
  between consecutive vertices**. At a vertical segment (several members between
  two non-members) the top of the segment is used. Interpolation is the TPR of a
  test that randomises between the two neighbouring thresholds, so it is
  achievable.
* Resolution: a TPR at FPR ``f`` is given as a number only where the sample holds at
  least ``10 / f`` non-members (10 false positives at that FPR, :data:`MIN_FALSE_POSITIVES`):
  with fewer, the threshold rests on a handful of non-members and the point estimate is
  noise. There :func:`membership_metrics` records "not resolvable" and :func:`unresolved_tpr`
  gives Clopper-Pearson intervals of the TPR and of the FPR at the threshold that admits at
  most ``floor(f n)`` of the ``n`` non-members (no point estimate).
* balanced accuracy: the threshold is chosen on a calibration half (:func:`calibration_halves`),
  the accuracy measured on the other half (:func:`membership_metrics`).

Intervals: stratified bootstrap (members and non-members resampled within their
class, :func:`collafuse_privacy.eval.stats.bootstrap`), percentile 95%.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from .stats import Interval, bootstrap, cp_lower, cp_upper


def _check(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel().astype(bool)
    if s.shape != y.shape:
        raise ValueError(f"scores ({s.shape}) and labels ({y.shape}) differ in length")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    return s, y


def roc_curve(scores, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fpr, tpr, thresholds)`` over all distinct thresholds, descending; ``thresholds[0] = inf``.

    ``labels``: 1/True = member. Needs both classes present (else NaN rates).
    """
    s, y = _check(scores, labels)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.flatnonzero(s[1:] != s[:-1])  # last index of each tie group
    last = np.append(last, len(s) - 1)
    tps = np.cumsum(y)[last]
    fps = (last + 1) - tps
    P, N = int(tps[-1]) if len(tps) else 0, int(fps[-1]) if len(fps) else 0
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr = np.concatenate(([0.0], tps / P))
        fpr = np.concatenate(([0.0], fps / N))
    return fpr, tpr, np.concatenate(([np.inf], s[last]))


def auc(scores, labels) -> float:
    fpr, tpr, _ = roc_curve(scores, labels)
    return float(np.trapezoid(tpr, fpr)) if hasattr(np, "trapezoid") else float(np.trapz(tpr, fpr))


def interp_tpr(fpr: np.ndarray, tpr: np.ndarray, at) -> np.ndarray:
    """TPR on the ROC ``(fpr, tpr)`` (ascending) at FPRs ``at``: top of vertical segments,
    linear between consecutive distinct FPRs."""
    at = np.atleast_1d(np.asarray(at, dtype=np.float64))
    ufpr, first = np.unique(fpr, return_index=True)
    # top and bottom of each vertical segment
    top = np.maximum.reduceat(tpr, first)
    bottom = np.minimum.reduceat(tpr, first)
    i = np.clip(np.searchsorted(ufpr, at, side="right") - 1, 0, len(ufpr) - 1)
    nxt = np.minimum(i + 1, len(ufpr) - 1)
    span = ufpr[nxt] - ufpr[i]
    with np.errstate(invalid="ignore", divide="ignore"):
        w = np.where(span > 0, (at - ufpr[i]) / span, 0.0)
    return np.clip(top[i] + np.clip(w, 0, 1) * (bottom[nxt] - top[i]), 0.0, 1.0)


def tpr_at_fpr(scores, labels, fpr_target: float) -> float:
    fpr, tpr, _ = roc_curve(scores, labels)
    return float(interp_tpr(fpr, tpr, fpr_target)[0])


def best_threshold(scores, labels) -> float:
    """The threshold (``score >= threshold`` = member) of the largest balanced accuracy."""
    fpr, tpr, thresholds = roc_curve(scores, labels)
    return float(thresholds[int(np.argmax((tpr + 1.0 - fpr) / 2.0))])


def balanced_accuracy_at(scores, labels, threshold: float) -> float:
    """``(TPR + TNR) / 2`` of the test ``score >= threshold``."""
    s, y = _check(scores, labels)
    pred = s >= threshold
    return 0.5 * (float(pred[y].mean()) + float((~pred[~y]).mean()))


def calibration_halves(labels, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint halves of the rows ``(calibrate, evaluate)``, each holding half of the members
    and half of the non-members (seeded): thresholds and best-of choices are made on the first and
    scored on the second, never on the same data."""
    y = np.asarray(labels).astype(bool)
    rng = np.random.default_rng([seed, 0xCA11B])
    cal, ev = [], []
    for cls in (True, False):
        idx = rng.permutation(np.flatnonzero(y == cls))
        cal.append(idx[: len(idx) // 2])
        ev.append(idx[len(idx) // 2 :])
    return np.sort(np.concatenate(cal)), np.sort(np.concatenate(ev))


MIN_FALSE_POSITIVES = 10  # a TPR at FPR f needs at least 10 / f non-members for a point estimate


def resolvable(fpr_target: float, n_nonmembers: int) -> bool:
    """Whether ``n_nonmembers`` resolve a false-positive rate of ``fpr_target``: at least
    :data:`MIN_FALSE_POSITIVES` of them would be false positives at that rate."""
    return n_nonmembers > 0 and fpr_target * n_nonmembers >= MIN_FALSE_POSITIVES - 1e-9


def unresolved_why(fpr_target: float, n_nonmembers: int) -> str:
    need = int(np.ceil(MIN_FALSE_POSITIVES / fpr_target - 1e-9))
    return (f"not resolvable: FPR {fpr_target:g} needs at least {need} non-members ({MIN_FALSE_POSITIVES} false "
            f"positives) for a point estimate, there are {n_nonmembers}")  # fmt: skip


def unresolved_tpr(scores, labels, fpr_target: float, level: float = 0.95) -> dict:
    """What the sample does say about TPR at ``fpr_target`` where it cannot resolve it (no point estimate):
    at the threshold that admits at most ``floor(fpr_target n)`` of the ``n`` non-members (``score`` strictly
    above the next non-member's), two-sided Clopper-Pearson intervals at ``level`` of its TPR (members above
    it) and of its FPR (the non-members above it are few, so the FPR is itself only loosely known)."""
    s, y = _check(scores, labels)
    neg, pos = np.sort(s[~y])[::-1], s[y]
    n, m = len(neg), len(pos)
    k = int(np.floor(fpr_target * n + 1e-9))
    th = neg[k] if k < n else -np.inf  # positives: score > th, so at most k non-members pass
    fp, tp = int((neg > th).sum()), int((pos > th).sum())
    a = (1 - level) / 2

    def cp(x, total):  # two-sided: each end one-sided at (1 - level) / 2
        return [float(cp_lower(x, total, a)), float(cp_upper(x, total, a))]

    return {"fpr_target": fpr_target, "level": level, "tpr_interval": cp(tp, m) if m else None,
            "fpr_interval": cp(fp, n) if n else None, "true_positives": tp, "n_members": m,
            "false_positives": fp, "n_nonmembers": n}  # fmt: skip


FPR_TARGETS = {"tpr_at_1pct_fpr": 0.01, "tpr_at_0.1pct_fpr": 0.001}


def membership_metrics(scores, labels, n_boot: int = 1000, seed: int = 0,
                       level: float = 0.95) -> tuple[dict[str, Optional[Interval]], dict[str, str]]:  # fmt: skip
    """AUC, balanced accuracy and TPR at 1% and 0.1% FPR as :class:`Interval`s, and the reasons
    for those that cannot be given.

    * TPR at an FPR ``f`` with fewer than ``10 / f`` non-members is not resolved by the sample: ``None``
      and the reason (:func:`unresolved_tpr` gives its intervals).
    * Balanced accuracy: the threshold is chosen on a calibration half of the candidates and the
      accuracy measured on the other half (bootstrap over that half, threshold fixed), so with no
      signal it is centred on 0.5 rather than biased upwards by choosing on the scored data.
    """
    s, y = _check(scores, labels)
    y = y.astype(np.int64)
    n_non = int((y == 0).sum())
    kw = dict(n_boot=n_boot, seed=seed, level=level, strata=y)
    out: dict[str, Optional[Interval]] = {"auc": bootstrap(auc, s, y, **kw)}
    notes: dict[str, str] = {}
    cal, ev = calibration_halves(y, seed)
    if min(y[cal].sum(), (1 - y[cal]).sum(), y[ev].sum(), (1 - y[ev]).sum()) > 0:
        th = best_threshold(s[cal], y[cal])
        out["balanced_accuracy"] = bootstrap(lambda a, b: balanced_accuracy_at(a, b, th), s[ev], y[ev],
                                             **{**kw, "strata": y[ev]})  # fmt: skip
    else:
        out["balanced_accuracy"] = None
        notes["balanced_accuracy"] = "too few candidates to calibrate a threshold on one half and score the other"
    for key, f in FPR_TARGETS.items():
        if resolvable(f, n_non):
            out[key] = bootstrap(lambda a, b, f=f: tpr_at_fpr(a, b, f), s, y, **kw)
        else:
            out[key] = None
            notes[key] = unresolved_why(f, n_non)
    return out, notes


def tpr_band(scores, labels, fpr_grid, n_boot: int = 500, seed: int = 0, level: float = 0.95):
    """Empirical TPR at each FPR of ``fpr_grid`` with a stratified bootstrap band.

    Returns ``(value, lo, hi)`` arrays of the grid's length.
    """
    s, y = _check(scores, labels)
    grid = np.asarray(fpr_grid, dtype=np.float64)
    fpr, tpr, _ = roc_curve(s, y)
    value = interp_tpr(fpr, tpr, grid)
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(y), np.flatnonzero(~y)]
    boots = np.empty((n_boot, len(grid)))
    for b in range(n_boot):
        idx = np.concatenate([g[rng.integers(0, len(g), len(g))] for g in groups])
        f, t, _ = roc_curve(s[idx], y[idx])
        boots[b] = interp_tpr(f, t, grid)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(boots, [alpha, 1.0 - alpha], axis=0)
    return value, lo, hi
