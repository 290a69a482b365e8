"""Bootstrap confidence intervals shared by every score in ``eval/``.

``bootstrap(stat, *arrays)`` resamples the rows of all arrays jointly (the same
indices for each), optionally within strata (e.g. members and non-members kept
at their sizes, so every resample has both classes), and returns the statistic
on the full data with a percentile interval. Also one-sided Clopper-Pearson bounds on a
rate (``cp_upper``, ``cp_lower``: the audit's rates, and TPR/FPR where a sample does not
resolve a point estimate).
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
from scipy.stats import beta

from collafuse_privacy.numbers import Interval, to_json  # noqa: F401  (Interval is part of this module's API)


def bootstrap(
    stat: Callable[..., float],
    *arrays,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    strata: Optional[np.ndarray] = None,
) -> Interval:
    """``stat(*arrays)`` with a percentile bootstrap interval over rows.

    ``arrays``: same length ``n`` along axis 0, resampled with the same indices.
    ``strata``: optional ``[n]`` labels; rows are resampled within each stratum.
    """
    arrays = [np.asarray(a) for a in arrays]
    n = len(arrays[0])
    if any(len(a) != n for a in arrays):
        raise ValueError("bootstrap: arrays differ in length")
    value = float(stat(*arrays))
    if n < 2 or n_boot <= 0:
        return Interval(value, float("nan"), float("nan"), level, 0)
    rng = np.random.default_rng(seed)
    groups = [np.arange(n)] if strata is None else [np.flatnonzero(np.asarray(strata) == s) for s in np.unique(strata)]
    stats = np.empty(n_boot)
    for b in range(n_boot):
        idx = np.concatenate([g[rng.integers(0, len(g), len(g))] for g in groups])
        stats[b] = stat(*[a[idx] for a in arrays])
    stats = stats[np.isfinite(stats)]  # resamples whose statistic is undefined are left out, and counted
    if len(stats) == 0:
        return Interval(value, float("nan"), float("nan"), level, 0)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(stats, [alpha, 1.0 - alpha])
    return Interval(value, float(lo), float(hi), level, len(stats))


def mean_ci(values, **kwargs) -> Interval:
    """Mean of ``values`` with a bootstrap interval."""
    return bootstrap(lambda v: float(np.mean(v)), np.asarray(values, dtype=np.float64), **kwargs)


def cp_upper(k, n, alpha: float):
    """One-sided Clopper-Pearson upper bound at confidence ``1 - alpha`` on a rate with ``k`` of ``n``
    (array in, array out; 1 where ``n = 0``)."""
    k, n = np.asarray(k, dtype=np.float64), np.asarray(n, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = beta.ppf(1.0 - alpha, k + 1.0, np.maximum(n - k, 1e-300))
    return np.where((k >= n) | (n <= 0), 1.0, out)


def cp_lower(k, n, alpha: float):
    """One-sided Clopper-Pearson lower bound at confidence ``1 - alpha`` (0 where ``k = 0``)."""
    k, n = np.asarray(k, dtype=np.float64), np.asarray(n, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = beta.ppf(alpha, np.maximum(k, 1e-300), n - k + 1.0)
    return np.where((k <= 0) | (n <= 0), 0.0, out)
