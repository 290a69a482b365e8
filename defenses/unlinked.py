"""The view's formal epsilon for the *unlinked* server (issue 25, DESIGN.md §2, §4): pure functions.

The linked number (:mod:`.accounting`, ``privacy.json`` ``view``) composes the most releases any
image got, as if the server knew in which rounds every image was released. The server of our
threat model does not: the clients draw their batches and the timesteps from secrets, so whether
an image sends a row in a round is a coin the server cannot see. It may still recognise the
target's row when one is present (in DP the other images are worst case: the adversary may choose
them far from the target), so no hiding among the other rows is assumed.

**The bound (secret sampling, replace-one).** One release of an image is a Gaussian mechanism of
per-release ``mu`` (:func:`.accounting.release_mu`, sensitivity ``2 sqrt(d)``: one image replaced
by any other). An image gets ``n`` chances to send a row, each taken independently with
probability ``p``:

* ``train.sampling: poisson`` (and DP-SGD clients): ``n = rounds``, ``p = q * P(t >= t_c)`` with
  ``q = min(1, batch_size / members)`` (each member independently each round) and
  ``P(t >= t_c) = (T - t_c) / T`` (both protocols draw ``t ~ U{0..T-1}`` per image,
  ``training.client_round``);
* ``train.sampling: shuffle``: ``n = E = accounting.epochs_bound(rounds, batch_size, members)``,
  the most batches an image can be in (a deterministic schedule from the client's secret
  permutation), ``p = P(t >= t_c)``: each appearance crosses the cut with an independent secret
  timestep. The schedule is secret, but even a server that knew it learns only which rounds hold
  an appearance and so their count ``A <= E``; given ``A`` the view is the composition below with
  ``n = A``, whose profile grows with ``A`` (``Bin(A + 1, p)`` dominates ``Bin(A, p)`` and the
  GDP profile grows with ``k``), so ``n = E`` bounds every image of the client.

Per chance, the view is a post-processing of the pair ``P = (1-p) {no row} + p N(mu, 1)`` against
``Q = (1-p) {no row} + p N(0, 1)`` (in units of the release noise; the other rows are
independent of the target and identically distributed under both neighbours, and telling the
target's row apart from them can only help the server, so this pair dominates). The privacy loss
is 0 without a row and ``N(mu^2/2, mu^2)`` with one, so ``n`` chances have the exact profile

    delta(eps) = sum_k Binom(k; n, p) * delta_GDP(eps; sqrt(k) * mu)

(:func:`secret_sampling_delta`); :func:`secret_sampling_epsilon` solves it for ``eps`` at the
view's delta (brentq), the k-sum truncated where the binomial tail is below ``1e-12 * delta``,
that tail mass counted as ``delta`` spent (an upper bound). No dp_accounting at run time: it is the
test oracle only (``tests/test_unlinked.py``, the ``test`` extra).

**Add/remove**: infinite. Adding the target adds a row in some round with probability
``1 - (1-p)^n``; a server that recognises it knows the image is there, so no finite epsilon holds
at any ``delta < 1 - (1-p)^n`` (:data:`ADD_REMOVE_REASON`).

**Not the sum form.** dp_accounting's ``PoissonSampledDpEvent(p, GaussianDpEvent(1/mu))`` analyses
the *sum* form, where an image not drawn still contributes pure noise at the same place; in our
protocol it sends no row, and the pair above is strictly weaker privacy: on the demo's c = 0.5
cell (``benchmarks/unlinked_epsilon.py``) the sum form says 861 where this pair needs 938, so the
sum-form number is violated by a concrete neighbouring pair and is not a bound here. It appears
only in that benchmark, as what the other rows would give *if* they hid the target's.

Valid only while its assumptions hold (:func:`refusal` names the first that fails; the number is
then not reported): fresh noise (fixed noise keeps the linked one-release bound), no labels or
other per-row side information crossing the cut, OS secrets (not derived from the seed: the draws
must be secret).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from .accounting import INF, epochs_bound, gdp_delta, release_mu

TAIL = 1e-12  # the binomial tail left out of the k-sum, relative to delta (counted as spent)
ADD_REMOVE_REASON = "a row's presence reveals the image under add/remove"
SAMPLINGS = ("poisson", "shuffle")


def server_draw_probability(t_c: int, T: int) -> float:
    """``P(t >= t_c)`` for ``t ~ U{0..T-1}`` (both protocols draw the timestep so, per image)."""
    return max(0, T - int(t_c)) / int(T)


def _terms(p: float, n: int, delta: float) -> tuple[list[int], list[float], float]:
    """``(ks, weights, tail)``: ``Binom(k; n, p)`` for ``k = 1..K`` with ``K`` the first count whose
    upper tail ``P(k > K)`` is at most ``TAIL * delta``; ``tail`` = that tail mass."""
    from scipy.stats import binom

    K = min(n, int(binom.isf(TAIL * delta, n, p)) + 1)
    while K > 0 and binom.sf(K - 1, n, p) <= TAIL * delta:  # isf is approximate at the far tail
        K -= 1
    while K < n and binom.sf(K, n, p) > TAIL * delta:
        K += 1
    ks = list(range(1, K + 1))
    return ks, [float(w) for w in binom.pmf(ks, n, p)], float(binom.sf(K, n, p)) if K < n else 0.0


def secret_sampling_delta(eps: float, mu: float, p: float, n: int, delta_for_truncation: float = 1e-5) -> float:
    """``sum_k Binom(k; n, p) delta_GDP(eps; sqrt(k) mu)`` plus the binomial tail left out (an upper
    bound of the exact profile; the tail is below ``TAIL * delta_for_truncation``)."""
    if mu == 0.0 or p == 0.0 or n <= 0:
        return 0.0
    ks, w, tail = _terms(p, n, delta_for_truncation)
    return sum(wk * gdp_delta(eps, math.sqrt(k) * mu) for wk, k in zip(w, ks)) + tail


def secret_sampling_epsilon(mu: float, p: float, n: int, delta: float) -> float:
    """Smallest ``eps >= 0`` with ``secret_sampling_delta(eps) <= delta``: the replace-one epsilon of
    ``n`` independent chances, each sending one row of per-release ``mu`` with probability ``p``.

    ``mu = inf``: infinite (a row reveals the image; ``p > 0``); ``mu = 0``, ``p = 0`` or ``n = 0``: 0.
    """
    from scipy import optimize

    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must lie in (0, 1), got {delta}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must lie in [0, 1], got {p}")
    if n <= 0 or p == 0.0 or mu == 0.0:
        return 0.0
    if math.isinf(mu):
        return INF
    ks, w, tail = _terms(p, int(n), delta)
    budget = delta - tail  # the tail is spent

    def excess(eps: float) -> float:
        d = sum(wk * gdp_delta(eps, math.sqrt(k) * mu) for wk, k in zip(w, ks))
        return math.log(d + 1e-300) - math.log(budget)

    if excess(0.0) <= 0.0:
        return 0.0
    hi = max(1.0, mu * mu / 2.0 + mu * 10.0)
    while excess(hi) > 0.0:
        hi *= 2.0
    return float(optimize.brentq(excess, 0.0, hi, xtol=1e-12, rtol=1e-10))


def chances(sampling: str, *, batch_size: int, n_members: int, rounds: int, t_c: int, T: int) -> tuple[int, float]:
    """``(n, p)``: an image's chances to send a row and the probability of each (module docstring)."""
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {', '.join(SAMPLINGS)}, got {sampling!r}")
    if n_members <= 0 or rounds <= 0:
        return 0, 0.0
    P = server_draw_probability(t_c, T)
    if sampling == "poisson":
        return int(rounds), min(1.0, batch_size / n_members) * P
    return epochs_bound(rounds, batch_size, n_members), P


def refusal(*, fixed_noise: bool, sends_labels: bool, derived_secrets: bool) -> Optional[str]:
    """None when the unlinked number holds, else one line naming the first assumption that fails."""
    if fixed_noise:
        return ("not reported: protocol.fixed_noise re-sends the same h every round (one release per image, not a "
                "fresh Gaussian per round); the linked one-release bound is the view's number")  # fmt: skip
    if sends_labels:
        return ("not reported: model.server_conditioning = labels: every row carries its image's label, per-row "
                "side information that crosses the cut")  # fmt: skip
    if derived_secrets:
        return ("not reported: secrets.derive_from_seed: the clients' draws come from the config's seed, which a "
                "server could guess, not from OS secrets")  # fmt: skip
    return None


def refusal_for(cfg) -> Optional[str]:
    """:func:`refusal` for a config."""
    return refusal(fixed_noise=cfg.protocol.fixed_noise, sends_labels=cfg.model.server_conditioning == "labels",
                   derived_secrets=cfg.secrets.derive_from_seed)  # fmt: skip


@dataclass(frozen=True)
class UnlinkedView:
    """One client's unlinked number: replace-one ``epsilon`` at the view's delta, from ``chances``
    chances of probability ``p`` each, per-release ``mu``."""

    epsilon: float
    p: float
    chances: int
    mu: float


def view_unlinked(abar_handover: float, t_c: int, T: int, image_shape, *, sampling: str, batch_size: int,
                  n_members: int, rounds: int, delta: float, sends_noise: bool = False) -> UnlinkedView:  # fmt: skip
    """One client's replace-one epsilon for the unlinked server: per-release ``mu`` at the hand-over
    level (``inf`` for a protocol that sends its noise, or ``t_c = 0``; 0 for ``t_c = T``)."""
    n, p = chances(sampling, batch_size=batch_size, n_members=n_members, rounds=rounds, t_c=t_c, T=T)
    if t_c >= T:
        mu = 0.0
    elif sends_noise:
        mu = INF
    else:
        mu = release_mu(abar_handover, image_shape)
    return UnlinkedView(epsilon=secret_sampling_epsilon(mu, p, n, delta), p=p, chances=n, mu=mu)
