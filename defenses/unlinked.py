"""The view's formal epsilon for the *unlinked* server (issue 25, DESIGN.md §2, §4): pure functions.

The linked number (:mod:`.accounting`, ``privacy.json`` ``view``) composes the most releases any
image got, as if the server could attribute every row to its image. The server of our threat
model cannot: rows carry no ids and no order, and the clients' draws come from secrets. With
fresh hand-over noise and Poisson-sampled client batches, each round every member image of a
client independently (a) lands in the batch (rate ``q = train.batch_size / n_members``) and
(b) draws a timestep on the server's side (``P(t >= t_c) = (T - t_c) / T``: both protocols draw
``t ~ U{0..T-1}`` per image, ``training.client_round``), and only then is released once as a
Gaussian mechanism of per-release ``mu`` (:func:`.accounting.release_mu`).

What is computed: per client, ``rounds`` compositions of dp_accounting's
``PoissonSampledDpEvent(q * P(t >= t_c), GaussianDpEvent(noise_multiplier = 1 / mu))`` in its
``PLDAccountant`` (pessimistic connect-the-dots PLD, so the number is an upper bound of the model
below for any discretisation), at the view's delta, under

* ``replace-one`` (``NeighborRel.REPLACE_ONE``; dp_accounting supports it for Poisson-sampled
  Gaussians): the pair ``(1-p) N(0, s^2) + p N(-1, s^2)`` against ``(1-p) N(0, s^2) + p N(1, s^2)``
  with ``s = 1 / mu``: a replacement moves the output by ``2 mu``, twice the worst-case
  per-release shift (conservative by that factor);
* ``add-remove`` (``NeighborRel.ADD_OR_REMOVE_ONE``): the added image moves the output by ``mu``.

The modelling step, stated and not proven here: the server's view of one client's round (its
rows, shuffled, without ids) is treated as the Poisson-subsampled Gaussian mechanism above, the
*sum* form accountants analyse (an image not drawn contributes pure noise at the same place). In
the protocol an image not drawn sends no row at all; if the other rows can be told apart from
the target's (an image far from every other one at a low cut ratio), the view is instead the
pair "no row / one Gaussian row", whose profile is ``p * delta_Gauss(eps)`` per round (no
amplification in epsilon). The unlinked number rests on the others' rows hiding the target's.

Valid only while its assumptions hold (:func:`refusal` names the first that fails; the number is
then not reported): Poisson sampling, fresh noise (fixed noise keeps the linked one-release
bound), no labels or other per-row side information crossing the cut, OS secrets (not derived
from the seed), rows without order or ids (what ``training.client_round`` sends).
"""

from __future__ import annotations

import math
from typing import Optional

from .accounting import INF, release_mu

ADJACENCIES = ("replace-one", "add-remove")
MU_PLD_MAX = 100.0  # above it the PLD does not fit in memory: the bound without amplification is used


def server_draw_probability(t_c: int, T: int) -> float:
    """``P(t >= t_c)`` for ``t ~ U{0..T-1}`` (both protocols draw the timestep so, per image)."""
    return max(0, T - int(t_c)) / int(T)


def discretization(mu: float) -> float:
    """The PLD's value discretisation interval: 1e-4 up to mu = 1, growing as mu^2 (the loss range
    does), at most 0.1 (a pessimistic PLD is an upper bound at any interval; only memory limits it)."""
    return min(max(1e-4, 1e-4 * mu * mu), 0.1)


def unlinked_epsilon(mu: float, sample_rate: float, rounds: int, delta: float, adjacency: str) -> float:
    """Epsilon at ``delta`` of ``rounds`` Poisson-subsampled Gaussian mechanisms (rate ``sample_rate``,
    per-release ``mu``) under ``adjacency`` (``replace-one`` or ``add-remove``); see the module docstring.

    ``mu = inf``: infinite (the release reveals the image); ``mu = 0``, rate 0 or no round: 0.
    ``mu > MU_PLD_MAX``: the same mechanism without amplification by sampling (``rounds``
    releases, ``sqrt(rounds) * mu`` GDP, ``2 mu`` per release under replace-one): an upper bound.
    """
    import dp_accounting
    from dp_accounting.pld import pld_privacy_accountant

    from .accounting import gdp_epsilon

    if adjacency not in ADJACENCIES:
        raise ValueError(f"adjacency must be one of {', '.join(ADJACENCIES)}, got {adjacency!r}")
    if not 0.0 <= sample_rate <= 1.0:
        raise ValueError(f"sample_rate must lie in [0, 1], got {sample_rate}")
    if rounds <= 0 or sample_rate == 0.0 or mu == 0.0:
        return 0.0
    if math.isinf(mu):
        return INF
    if mu > MU_PLD_MAX:
        return gdp_epsilon(math.sqrt(rounds) * mu * (2.0 if adjacency == "replace-one" else 1.0), delta)
    rel = dp_accounting.NeighboringRelation
    acc = pld_privacy_accountant.PLDAccountant(
        rel.REPLACE_ONE if adjacency == "replace-one" else rel.ADD_OR_REMOVE_ONE,
        value_discretization_interval=discretization(mu))  # fmt: skip
    acc.compose(dp_accounting.PoissonSampledDpEvent(sample_rate, dp_accounting.GaussianDpEvent(1.0 / mu)), int(rounds))
    return float(acc.get_epsilon(delta))


def refusal(*, sampling: str, fixed_noise: bool, sends_labels: bool, derived_secrets: bool) -> Optional[str]:
    """None when the unlinked number holds, else one line naming the first assumption that fails."""
    if fixed_noise:
        return ("not reported: protocol.fixed_noise re-sends the same h every round (one release per image, not a "
                "fresh Gaussian per round); the linked one-release bound is the view's number")  # fmt: skip
    if sampling != "poisson":
        return (f"not reported: train.sampling = {sampling}: the clients' batches are not Poisson samples "
                "(an image is drawn once per epoch, not independently each round)")  # fmt: skip
    if sends_labels:
        return ("not reported: model.server_conditioning = labels: every row carries its image's label, per-row "
                "side information that crosses the cut")  # fmt: skip
    if derived_secrets:
        return ("not reported: secrets.derive_from_seed: the clients' draws come from the config's seed, which a "
                "server could guess, not from OS secrets")  # fmt: skip
    return None


def refusal_for(cfg) -> Optional[str]:
    """:func:`refusal` for a config (its clients' effective sampling, ``Config.client_sampling``)."""
    return refusal(sampling=cfg.client_sampling, fixed_noise=cfg.protocol.fixed_noise,
                   sends_labels=cfg.model.server_conditioning == "labels",
                   derived_secrets=cfg.secrets.derive_from_seed)  # fmt: skip


def view_unlinked(abar_handover: float, t_c: int, T: int, image_shape, *, batch_size: int, n_members: int,
                  rounds: int, delta: float, adjacency: str, sends_noise: bool = False) -> tuple[float, float, float]:  # fmt: skip
    """``(epsilon, sampling_rate, mu)`` of one client's view under ``adjacency``: rate
    ``min(1, batch_size / n_members) * P(t >= t_c)``, per-release ``mu`` at the hand-over level
    (``inf`` for a protocol that sends its noise, or ``t_c = 0``; 0 for ``t_c = T``)."""
    rate = min(1.0, batch_size / n_members) * server_draw_probability(t_c, T) if n_members > 0 else 0.0
    if t_c >= T:
        mu = 0.0
    elif sends_noise:
        mu = INF
    else:
        mu = release_mu(abar_handover, image_shape)
    return unlinked_epsilon(mu, rate, rounds, delta, adjacency), rate, mu
