"""Release accounting for what crosses the cut (DESIGN.md §4): pure functions.

In ``cut-image`` one release of an image is ``h = sqrt(abar) x0 + sqrt(1 - abar) eps``
with ``abar`` the hand-over level's (``Cut.abar_handover``). Scaled by ``1 / sqrt(1 - abar)`` it is a Gaussian
mechanism with unit noise and mean ``sqrt(abar / (1 - abar)) x0``; with pixels in
[-1, 1] and ``d = C*H*W`` the L2 sensitivity of ``x0`` is ``D = 2 sqrt(d)``, so one
release is mu-GDP (Dong, Roth, Su 2022) with ``mu = sqrt(abar / (1 - abar)) * D``.
``R`` independent releases (fresh noise each epoch) compose to ``sqrt(R) * mu``;
with ``fixed_noise`` every re-send is the same ``h`` and ``R = 1``.
Which protocol sends what, and so which of these applies, is the protocol's business
(:meth:`collafuse_privacy.protocol.Protocol.release_mu`): ``shared-noise`` sends ``eps``
beside ``x_t`` (``mu = inf``), ``t_c = 0`` sends ``x0`` itself (``inf``), ``t_c = T``
sends nothing (``mu = 0``).

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

    ``abar``: the hand-over level's, ``Cut.abar_handover`` (1.0 for ``t_c = 0``: clean images, infinite mu).
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


# ---- releases per image -------------------------------------------------------


def epochs_bound(rounds: int, batch: int, n_members: int) -> int:
    """Times any one image can be drawn by a client that walks seeded epochs of its
    ``n_members`` images, ``batch`` per round: ``ceil(rounds * batch / n_members)``."""
    if rounds <= 0 or n_members <= 0:
        return 0
    return int(math.ceil(rounds * batch / n_members - 1e-12))


POISSON_TAIL = 1e-6  # failure probability of poisson_draws_bound: it is added to the view's delta


def poisson_draws_bound(rounds: int, sample_rate: float, n_members: int, tail: float = POISSON_TAIL) -> int:
    """Draws of the most-drawn image under Poisson sampling (rate ``q`` per round), a bound
    that holds for all ``n_members`` images at once with probability ``>= 1 - tail``
    (union bound over the images of the Binomial(rounds, q) upper tail)."""
    from scipy.stats import binom

    if rounds <= 0 or n_members <= 0 or sample_rate <= 0:
        return 0
    return int(binom.isf(tail / n_members, rounds, min(1.0, sample_rate))) + 1


def planned_releases(fixed_noise: bool, draws_bound: int) -> int:
    """Releases per image known before training: 1 with ``fixed_noise`` (every re-send is
    the same ``h``), else the number of times an image can be drawn (a send happens only
    for the drawn images with ``t >= t_c``, so this over-counts: conservative)."""
    if draws_bound <= 0:
        return 0
    return 1 if fixed_noise else int(draws_bound)


# ---- the privacy-budgeted cut ---------------------------------------------------


def smallest_cut(
    handover_abar, image_shape, releases: int, target_epsilon: float, delta: float
) -> tuple[int, float, float]:
    """The smallest ``t_c`` in ``0..T`` whose ``cut-image`` view meets ``(target_epsilon, delta)``.

    ``handover_abar``: ``[T + 1]``, the hand-over image's ``abar`` for each ``t_c = 0..T``
    (``Cut.abar_table``: decreasing, 1.0 at ``t_c = 0``). Returns ``(t_c, mu, epsilon)``;
    ``t_c = T`` (send nothing, epsilon 0) always qualifies.
    """
    if not target_epsilon >= 0.0:
        raise ValueError(f"target_epsilon must be >= 0, got {target_epsilon}")
    abar = np.asarray(handover_abar, dtype=np.float64)
    T = len(abar) - 1
    for t_c in range(1, T):  # t_c = 0 sends clean images: never private
        mu = release_mu(float(abar[t_c]), image_shape, releases)
        # delta(eps) is decreasing in eps: eps(mu) <= target  <=>  delta(target) <= delta
        if gdp_delta(target_epsilon, mu) <= delta:
            return t_c, mu, gdp_epsilon(mu, delta)
    return T, 0.0, 0.0


# ---- DP-SGD (Opacus' accountants) -----------------------------------------------


def gaussian_epsilon(noise_multiplier: float, delta: float) -> float:
    """One Gaussian mechanism with noise ``sigma`` times the sensitivity is ``1/sigma``-GDP;
    its exact ``epsilon(delta)``."""
    return gdp_epsilon(INF if noise_multiplier == 0 else 1.0 / noise_multiplier, delta)


def dp_sgd_epsilon(history, delta: float, accountant: str = "prv") -> float:
    """Epsilon of DP-SGD from an Opacus accountant history
    ``[(noise_multiplier, sample_rate, steps), ...]`` (Opacus ``prv`` or ``rdp``)."""
    from opacus.accountants import create_accountant

    history = [(float(s), float(q), int(n)) for s, q, n in history if int(n) > 0]
    if not history:
        return 0.0
    if any(s == 0.0 for s, _, _ in history):
        return INF
    acc = create_accountant(mechanism=accountant)
    acc.history = history
    return float(acc.get_epsilon(delta=delta))


def dp_sgd_noise_multiplier(target_epsilon: float, delta: float, sample_rate: float, steps: int,
                            accountant: str = "prv") -> float:  # fmt: skip
    """Smallest noise multiplier (Opacus' bisection, tolerance 0.01 in epsilon) whose
    ``steps`` steps at ``sample_rate`` spend at most ``target_epsilon``."""
    from opacus.accountants.utils import get_noise_multiplier

    return float(get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta, sample_rate=sample_rate,
                                      steps=max(1, int(steps)), accountant=accountant))  # fmt: skip
