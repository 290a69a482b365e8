"""Release accounting for what crosses the cut (DESIGN.md §4): pure functions.

In ``cut-image`` one release of an image is ``h = sqrt(abar) x0 + sqrt(1 - abar) eps``
with ``abar = abar[t_c - 1]``. Scaled by ``1 / sqrt(1 - abar)`` it is a Gaussian
mechanism with unit noise and mean ``sqrt(abar / (1 - abar)) x0``; with pixels in
[-1, 1] and ``d = C*H*W`` the L2 sensitivity of ``x0`` is ``D = 2 sqrt(d)``, so one
release is mu-GDP (Dong, Roth, Su 2022) with ``mu = sqrt(abar / (1 - abar)) * D``.
``R`` independent releases (fresh noise each epoch) compose to ``sqrt(R) * mu``;
with ``fixed_noise`` every re-send is the same ``h`` and ``R = 1``.
``shared-noise`` sends ``eps`` beside ``x_t``: ``mu = eps = inf``. ``t_c = 0``
sends ``x0`` itself: infinite too. ``t_c = T`` sends nothing: ``mu = 0``.

Conversions (all in log space, so large ``mu`` neither overflows nor loses digits):

- ``delta(eps) = Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2)``  (GDP -> (eps, delta))
- trade-off curve: ``TPR = Phi(Phi^-1(FPR) + mu)``: no test of "member" vs
  "non-member" at false-positive rate ``FPR`` has a higher true-positive rate.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import optimize
from scipy.special import log_ndtr, ndtr, ndtri

INF = float("inf")


def sensitivity(image_shape) -> float:
    """L2 sensitivity ``D = 2 sqrt(d)`` of an image with pixels in [-1, 1]."""
    return 2.0 * math.sqrt(float(np.prod(image_shape)))


def release_mu(abar: float, image_shape, releases: int = 1, sensitivity_l2: float | None = None) -> float:
    """mu-GDP of ``releases`` independent hand-over images at noise level ``abar``.

    ``abar``: ``abar[t_c - 1]`` (1.0 for ``t_c = 0``: clean images, infinite mu).
    ``sensitivity_l2``: the L2 distance that must be hidden (default ``2 sqrt(d)``,
    the worst case; pass an actual member/nearest-non-member distance for the
    distance-specific curve).
    """
    if releases <= 0 or abar <= 0.0:
        return 0.0
    if abar >= 1.0:
        return INF
    D = sensitivity(image_shape) if sensitivity_l2 is None else float(sensitivity_l2)
    return math.sqrt(releases) * math.sqrt(abar / (1.0 - abar)) * D


def gdp_delta(eps: float, mu: float) -> float:
    """``delta(eps)`` of mu-GDP (Dong et al. 2022, Cor. 2.13), computed in log space."""
    if mu == 0.0:
        return 0.0
    if math.isinf(mu):
        return 1.0
    a = log_ndtr(-eps / mu + mu / 2.0)
    b = eps + log_ndtr(-eps / mu - mu / 2.0)
    if b >= a:  # rounding at the far tail
        return 0.0
    return float(math.exp(a) * -math.expm1(b - a))


def gdp_epsilon(mu: float, delta: float) -> float:
    """Smallest ``eps >= 0`` with ``delta(eps) <= delta`` for mu-GDP (inf for mu = inf)."""
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must lie in (0, 1), got {delta}")
    if math.isinf(mu):
        return INF
    if mu == 0.0 or gdp_delta(0.0, mu) <= delta:
        return 0.0
    hi = max(1.0, mu * mu / 2.0 + mu * 10.0)
    while gdp_delta(hi, mu) > delta:
        hi *= 2.0
    return float(optimize.brentq(lambda e: math.log(gdp_delta(e, mu) + 1e-300) - math.log(delta), 0.0, hi,
                                 xtol=1e-12, rtol=1e-12))  # fmt: skip


def gdp_tpr(fpr, mu: float):
    """The GDP trade-off bound ``TPR = Phi(Phi^-1(FPR) + mu)`` (array in, array out)."""
    fpr = np.asarray(fpr, dtype=np.float64)
    if math.isinf(mu):
        return np.where(fpr > 0, 1.0, 0.0)
    with np.errstate(divide="ignore"):
        return ndtr(ndtri(np.clip(fpr, 0.0, 1.0)) + mu)


def view_mu(meta: dict, releases: int | None = None, sensitivity_l2: float | None = None) -> float:
    """mu-GDP of a run's server view from its ``server_view/meta.json``.

    ``releases``: releases per image (default: 1, the fixed-noise count; pass the
    epochs actually run for fresh noise).
    """
    t_c, T = int(meta["t_c"]), int(meta["timesteps"])
    if t_c >= T:
        return 0.0
    if meta["protocol"] == "shared-noise" or t_c == 0:
        return INF
    d = meta["data"]
    shape = (int(d["channels"]), int(d["image_size"]), int(d["image_size"]))
    return release_mu(float(meta["abar_handover"]), shape, releases or 1, sensitivity_l2)
