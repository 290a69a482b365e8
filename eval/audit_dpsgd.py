"""White-box audit of the DP-SGD clients (``defenses/dp_sgd.py``): gradient canaries, every iterate seen.

Nasr, Hayes, Steinke, Balle, Tramer, Jagielski, Carlini, Terzis 2023 ("Tight auditing of differentially
private machine learning"): the auditor crafts per-example gradients and observes every update, so it
audits the implementation (clipping, noise, sampling, accountant), not how much a real attack extracts.
Steinke, Nasr, Jagielski 2023 ("Privacy auditing with one (1) training run"): ``m`` canaries, each in
the member set with an independent fair coin, bound epsilon from a single run.

The game (add/remove adjacency, Opacus' default, the one its accountant counts):

* ``m`` canaries, canary ``j`` a Dirac per-example gradient of norm ``canary_norm`` (default the
  clipping norm ``C``) on its own parameter coordinate (``m`` distinct coordinates, seeded).
* Each canary is in the member set with a fair coin. At every step each member canary is
  Poisson-sampled at the client's rate ``q`` (a :class:`PoissonSampler` of its own), and its row goes
  into Opacus' per-sample gradients beside the real batch's (``DPSGD.step(extra_grad_samples=...)``):
  Opacus clips, sums, adds ``N(0, (sigma C)^2)`` and steps, and the accountant counts the step.
* The released quantity of the white-box threat model is the noised summed gradient, ``p.grad``
  after Opacus' noise step (before the optimiser's own transform: momentum or Adam state is a
  function of it). The auditor reads it at the canaries' coordinates after every step and
  normalises it to ``g = p.grad * expected_batch_size / C``: ``g = b + sigma z`` with ``b`` 1 for a
  sampled member canary (0 otherwise) plus the real examples' (small) gradients on that coordinate.

Score per canary: the log likelihood ratio of "member" against "not", summed over steps,
``sum_t log(1 - q + q exp((2 g_t - 1) / (2 s^2)))``, the Neyman-Pearson statistic of the
Poisson-subsampled Gaussian with ``s`` the noise level measured on the observed updates (a robust
scale of all canary coordinates' updates; a function of the output, so any value keeps the bound
valid). Real gradients on the coordinates are not subtracted: the bound stays valid, only its
tightness suffers (they are small next to ``sigma``).

Two routes, each named in the result:

* ``one-run`` (the (eps, delta) lower bound): Steinke et al.'s Theorem 3 (``audit_stats.one_run_bound``)
  on the guesses "member" for the ``k+`` largest scores and "not" for the ``k-`` smallest. It needs
  only the coins to be independent (the canaries share one model, so their scores are not
  independent: real gradients couple the coordinates through the model). ``(k+, k-)`` are chosen
  before the run from simulations of the *claimed* mechanism (sigma, q, steps): no calibration
  half, so all ``m`` canaries count. Clopper-Pearson on independent slots is not used: the scores
  are independent only if no real gradient touches the canary coordinates.
* ``parametric`` (the Nasr et al. route, *not* an assumption-free bound): the measured noise
  multiplier (chi-square upper bound from the non-member coordinates) and the measured canary step
  (lower bound from the sampled member steps against the non-member ones), each at ``1 - alpha/2``,
  put into Opacus' accountant at the configured rate and step count. It is a lower bound only if
  the release is the Poisson-subsampled Gaussian in form; it audits its parameters (noise too
  small, clipping skipped), which the distribution-free route can see only far above its
  resolution (the one-run bound with ``m`` canaries saturates; at delta = 1e-5 it reaches about
  0.4-0.5 of a tight epsilon, as Steinke et al. report).

The check fails when either route exceeds Opacus' epsilon.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch
from scipy.special import ndtri
from scipy.stats import chi2

from collafuse_privacy.defenses.accounting import dp_sgd_epsilon
from collafuse_privacy.defenses.dp_sgd import DPSGD, PoissonSampler
from .audit_stats import one_run_bound

ADJACENCY = "add/remove one example (Opacus' accountant, Poisson sampling)"
ONE_RUN_ROUTE = "one-run (Steinke, Nasr, Jagielski 2023; independent coins only)"
PARAMETRIC_ROUTE = "parametric (measured noise and canary step in Opacus' accountant; assumes a subsampled Gaussian)"


@dataclass(frozen=True)
class WhiteBoxAudit:
    """The white-box DP-SGD audit of one run (all epsilons at ``delta``, under :data:`ADJACENCY`)."""

    opacus_epsilon: float  # the accountant's epsilon for (sigma, q, steps)
    one_run_epsilon: float  # lower bound at confidence 1 - alpha (ONE_RUN_ROUTE)
    parametric_epsilon: float  # PARAMETRIC_ROUTE
    noise_multiplier: float  # configured sigma
    measured_noise: float  # upper bound on the measured noise multiplier (1 - alpha/2)
    measured_step: float  # lower bound on the released canary step / C (1 - alpha/2); 1 when clipped right
    sample_rate: float
    steps: int
    canaries: int
    guesses: int
    correct: int
    delta: float
    alpha: float
    adjacency: str = ADJACENCY

    @property
    def ratio(self) -> float:
        """one-run epsilon / Opacus' epsilon."""
        return self.one_run_epsilon / self.opacus_epsilon if self.opacus_epsilon > 0 else float("nan")

    @property
    def parametric_ratio(self) -> float:
        return self.parametric_epsilon / self.opacus_epsilon if self.opacus_epsilon > 0 else float("nan")

    @property
    def passed(self) -> bool:
        return self.one_run_epsilon <= self.opacus_epsilon and self.parametric_epsilon <= self.opacus_epsilon


def llr_scores(g: np.ndarray, q: float, scale: Optional[float] = None) -> np.ndarray:
    """Per canary ``sum_t log(1 - q + q exp((2 g - 1) / (2 s^2)))`` for observations ``g`` [T, m]
    (``s``: ``scale``, default a robust scale of all of ``g``, 1.4826 x the median absolute deviation)."""
    g = np.asarray(g, dtype=np.float64)
    if scale is None:
        scale = 1.4826 * float(np.median(np.abs(g - np.median(g))))
    x = (2.0 * g - 1.0) / (2.0 * scale * scale)
    return np.logaddexp(math.log1p(-q), math.log(q) + x).sum(axis=0)


def guess_counts(scores: np.ndarray, coins: np.ndarray, k_plus: int, k_minus: int) -> tuple[int, int]:
    """``(guesses, correct)``: "member" for the ``k_plus`` largest scores, "not" for the ``k_minus`` smallest."""
    order = np.argsort(-np.asarray(scores), kind="mergesort")
    top, bottom = order[:k_plus], order[len(order) - k_minus:] if k_minus else order[:0]
    y = np.asarray(coins, dtype=bool)
    return k_plus + k_minus, int(y[top].sum() + (~y[bottom]).sum())


def choose_guesses(m: int, steps: int, q: float, sigma: float, delta: float, alpha: float, sims: int = 3,
                   seed: int = 0) -> tuple[int, int]:  # fmt: skip
    """``(k+, k-)`` with the largest one-run bound at the mean correct count of ``sims`` simulations of the
    claimed mechanism (Dirac canaries, no real gradients): fixed before the run, from the claim alone."""
    rng = np.random.default_rng([seed, 0xD95])
    grid = [0] + sorted({int(k) for k in np.geomspace(4, max(4, m // 2), 14)})
    pairs = [(kp, km) for kp in grid[1:] for km in grid if kp + km <= m]
    correct = np.zeros(len(pairs))
    for _ in range(sims):
        y = rng.random(m) < 0.5
        g = ((rng.random((steps, m)) < q) & y) + sigma * rng.standard_normal((steps, m))
        s = llr_scores(g, q)
        correct += [guess_counts(s, y, kp, km)[1] for kp, km in pairs]
    total = {pk: one_run_bound(m, pk[0] + pk[1], int(c / sims), delta, alpha) for pk, c in zip(pairs, correct)}
    return max(total, key=total.get)


def _coordinates(params, m: int, gen: torch.Generator) -> list[tuple[int, int]]:
    """``m`` distinct (parameter index, flat index) pairs, uniformly among all coordinates."""
    sizes = [p.numel() for p in params]
    total = sum(sizes)
    if m > total:
        raise ValueError(f"{m} canaries need {m} coordinates; the model has {total}")
    flat = torch.randperm(total, generator=gen)[:m]
    starts = np.cumsum([0] + sizes)
    which = np.searchsorted(starts, flat.numpy(), side="right") - 1
    return [(int(w), int(f - starts[w])) for w, f in zip(which, flat.numpy())]


def audit_dpsgd(dp: DPSGD, sampler: PoissonSampler, loss_fn_for: Callable[[torch.Tensor], Callable], *, steps: int,
                canaries: int = 10000, canary_norm: Optional[float] = None, delta: float = 1e-5,
                alpha: float = 0.05, seed: int = 0) -> WhiteBoxAudit:  # fmt: skip
    """Run ``steps`` DP-SGD steps of ``dp`` on its real data with ``canaries`` gradient canaries, observe
    every update, and bound epsilon (module docstring).

    ``sampler``: the client's Poisson sampler of its real examples; ``loss_fn_for(indices)`` returns the
    ``loss_fn(module)`` of ``DPSGD.step`` for that batch. ``canary_norm``: the canaries' gradient norm
    (default ``dp.max_grad_norm``; above it, correct clipping cuts it to ``C``). ``dp``'s accountant
    must be fresh: Opacus' epsilon is that of these steps."""
    if dp.steps:
        raise ValueError("audit_dpsgd needs a fresh DPSGD (its accountant already counts steps)")
    C = dp.max_grad_norm
    norm = C if canary_norm is None else float(canary_norm)
    q, sigma = dp.sample_rate, dp.noise_multiplier
    params = list(dp.optimizer.params)
    gen = torch.Generator().manual_seed(int(seed))
    coords = _coordinates(params, canaries, gen)
    coins = torch.rand(canaries, generator=gen) < 0.5
    members = torch.nonzero(coins).flatten()
    can_sampler = PoissonSampler(len(members), q, torch.Generator().manual_seed(int(seed) + 1))
    by_param = [[(j, f) for j, (w, f) in enumerate(coords) if w == i] for i in range(len(params))]
    idx = [(torch.tensor([j for j, _ in c], dtype=torch.long), torch.tensor([f for _, f in c], dtype=torch.long))
           for c in by_param]  # fmt: skip
    scale = dp.optimizer.expected_batch_size / C  # Opacus divides the noised sum by it (one backward per step)
    g = np.zeros((steps, canaries), dtype=np.float64)
    sampled = np.zeros((steps, canaries), dtype=bool)
    for t in range(steps):
        batch = sampler.next()
        chosen = members[can_sampler.next()]
        sampled[t, chosen.numpy()] = True
        row_of = torch.full((canaries,), -1, dtype=torch.long)
        row_of[chosen] = torch.arange(len(chosen))
        rows = []
        for p, (js, fs) in zip(params, idx):
            r = torch.zeros((len(chosen), p.numel()), dtype=p.dtype, device=p.device)
            hit = row_of[js] >= 0
            r[row_of[js][hit], fs[hit]] = norm
            rows.append(r.view(len(chosen), *p.shape))
        dp.step(loss_fn_for(batch) if len(batch) else None, extra_grad_samples=rows)
        for p, (js, fs) in zip(params, idx):
            if len(js):
                g[t, js.numpy()] = p.grad.detach().flatten()[fs].double().cpu().numpy() * scale

    y = coins.numpy()
    kp, km = choose_guesses(canaries, steps, q, sigma, delta, alpha, seed=seed)
    r, v = guess_counts(llr_scores(g, q), y, kp, km)
    one = one_run_bound(canaries, r, v, delta, alpha)

    # parametric route: noise from the non-member coordinates, the step from the sampled member steps
    out = g[:, ~y].ravel()
    noise_ub = math.sqrt(float(np.sum(out**2)) / chi2.ppf(alpha / 2, len(out)))
    hits = g[sampled]
    z = float(ndtri(1 - alpha / 2))
    step_lb = float(hits.mean() - out.mean() - z * math.sqrt(hits.var() / max(len(hits), 1) + out.var() / len(out)))
    param = dp_sgd_epsilon([(noise_ub / step_lb, q, steps)], delta, dp.accountant_name) if step_lb > 0 else 0.0
    return WhiteBoxAudit(opacus_epsilon=dp.epsilon(delta), one_run_epsilon=one, parametric_epsilon=param,
                         noise_multiplier=sigma, measured_noise=noise_ub, measured_step=step_lb, sample_rate=q,
                         steps=steps, canaries=canaries, guesses=r, correct=v, delta=delta, alpha=alpha)  # fmt: skip


def tiny_client(noise_multiplier: float = 2.0, sample_rate: float = 0.1, n: int = 64, seed: int = 0,
                max_grad_norm: float = 1.0):  # fmt: skip
    """A tiny client for the audit: an MLP denoiser (8x8 images, 64 -> 96 -> 64, 12,448 parameters) on
    ``n`` random images in [-1, 1], plain SGD wrapped by :class:`DPSGD`, its Poisson sampler and a loss.
    Returns ``(dp, sampler, loss_fn_for)`` for :func:`audit_dpsgd`."""
    gen = torch.Generator().manual_seed(int(seed))
    torch.manual_seed(int(seed))
    model = torch.nn.Sequential(torch.nn.Linear(64, 96), torch.nn.SiLU(), torch.nn.Linear(96, 64))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    dp = DPSGD(model, opt, noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm,
               expected_batch_size=sample_rate * n, sample_rate=sample_rate,
               generator=torch.Generator().manual_seed(int(seed) + 2))  # fmt: skip
    x0 = torch.rand((n, 64), generator=gen) * 2 - 1
    sampler = PoissonSampler(n, sample_rate, torch.Generator().manual_seed(int(seed) + 3))
    noise_gen = torch.Generator().manual_seed(int(seed) + 4)

    def loss_fn_for(batch: torch.Tensor):
        x = x0[batch]
        eps = torch.randn(x.shape, generator=noise_gen)
        a = torch.rand((len(x), 1), generator=noise_gen)
        xt = a.sqrt() * x + (1 - a).sqrt() * eps
        return lambda module: ((module(xt) - eps) ** 2).mean(dim=1).mean()

    return dp, sampler, loss_fn_for


def format_white_box(r: WhiteBoxAudit) -> str:
    """A few lines: Opacus' epsilon, both routes, their ratios, the check."""
    return "\n".join([
        f"white-box DP-SGD audit: {r.canaries} gradient canaries, {r.steps} steps, sigma {r.noise_multiplier:g}, "
        f"q {r.sample_rate:g}, delta {r.delta:g}, {r.adjacency}",
        f"  Opacus epsilon {r.opacus_epsilon:.3f}",
        f"  {ONE_RUN_ROUTE}: epsilon >= {r.one_run_epsilon:.3f} (ratio {r.ratio:.2f}; {r.correct} of {r.guesses} "
        f"guesses right, confidence {1 - r.alpha:g})",
        f"  {PARAMETRIC_ROUTE}: epsilon {r.parametric_epsilon:.3f} (ratio {r.parametric_ratio:.2f}; noise "
        f"multiplier <= {r.measured_noise:.3f}, canary step >= {r.measured_step:.3f} C)",
        f"  check: {'passed' if r.passed else 'FAILED (a bound exceeds Opacus epsilon)'}",
    ])  # fmt: skip
