"""White-box audit of the DP-SGD clients (``defenses/dp_sgd.py``): gradient canaries, every iterate seen.

Nasr, Hayes, Steinke, Balle, Tramer, Jagielski, Carlini, Terzis 2023 ("Tight auditing of differentially
private machine learning"): the auditor crafts per-example gradients and observes every update, so it
audits the implementation (clipping, noise, sampling, accountant), not how much a real attack extracts.
Steinke, Nasr, Jagielski 2023 ("Privacy auditing with one (1) training run"): ``m`` canaries, each in
the member set with an independent fair coin, bound epsilon from a single run.

The game (add/remove adjacency, Opacus' default, the one its accountant counts), played in ``runs``
independent training runs of a client (fresh model, data draws, noise and accountant each; the same
``(sigma, q, steps)``, so the same Opacus epsilon), ``canaries`` canaries per run:

* The client's model carries a *canary block*: a parameter block that the forward applies to the zero
  vector (:class:`TinyDenoiser`: ``canary_block(0)``, an ``nn.Linear`` without bias), so the model's
  output never depends on it and every real example's per-sample gradient there is exactly zero,
  computed by Opacus' own ``Linear`` grad sampler. (A block the forward never reaches would get no
  ``grad_sample`` at all, and Opacus' ``DPOptimizer`` refuses that: it clips over the flat gradient of
  *all* its parameters, so the block is in every example's clipping norm either way.)
* Canary ``j`` is a Dirac per-example gradient of norm ``canary_norm`` (default the clipping norm
  ``C``) on block coordinate ``j``, zero on every other parameter.
* Each canary is in the member set with a fair coin. At every step each member canary is
  Poisson-sampled at the client's rate ``q`` (a :class:`PoissonSampler` of its own), and its row goes
  into Opacus' per-sample gradients beside the real batch's (``DPSGD.step(extra_grad_samples=...)``):
  Opacus clips (flat, over all parameters), sums, adds ``N(0, (sigma C)^2)`` and steps, and the
  accountant counts the step.
* The released quantity of the white-box threat model is the noised summed gradient, ``p.grad``
  after Opacus' noise step (before the optimiser's own transform: momentum or Adam state is a
  function of it). The auditor reads it at the canaries' coordinates after every step and
  normalises it to ``g = p.grad * expected_batch_size / C``: ``g = b + sigma z`` with ``b`` 1 for a
  sampled member canary (its clipped norm over ``C``), 0 otherwise.

Why the canaries' scores are independent given their coins: at canary ``j``'s coordinate the summed
gradient is the clipped row of canary ``j`` alone (real examples' rows are exactly zero there, the
other canaries' rows are zero off their own coordinates, and flat clipping scales a row by its own
norm only), plus the Gaussian noise of that coordinate, drawn independently per coordinate
(``torch.normal`` over the whole tensor, Opacus' ``_generate_noise``), plus nothing from the model
(the block never enters the loss). So ``g[:, j]`` is a function of canary ``j``'s coin, its own Poisson
draws and its coordinate's noise: given the coins, the ``m`` observation vectors are independent and,
within a coin value, identically distributed (the coordinates are exchangeable). A threshold test
fixed before the evaluation canaries are looked at is then a sequence of independent Bernoulli
trials per coin, and Clopper-Pearson applies. Canaries of different runs are independent outright.

Score per canary (a function of its own observations only): the log likelihood ratio of "member"
against "not", summed over steps, ``sum_t log(1 - q + q exp((2 g_t - 1) / (2 sigma^2)))`` (``sum_t g_t``
up to an affine map when ``q = 1``), the Neyman-Pearson statistic of the Poisson-subsampled Gaussian,
with ``sigma`` the *configured* noise multiplier (not measured: a noise level measured on all
canaries would couple their scores weakly). Any fixed score keeps every route valid; a wrong
``sigma`` (an implementation that adds less noise) only costs power.

Three routes, each named in the result:

* ``clopper-pearson`` (the headline; assumption-free given the independence above): the canaries are
  split into a calibration and an evaluation half (seeded, before the run); the threshold (and the
  direction of the test) is the one with the largest bound on the calibration half; on the evaluation
  half the false-positive and false-negative rates get one-sided Clopper-Pearson upper bounds at
  ``1 - alpha/2`` each and ``eps >= log((1 - delta - FPR) / FNR)`` (or the rates swapped)
  (``audit_stats.threshold_bound``; Jagielski, Ullman, Oprea 2020; Kairouz et al. 2015).
* ``one-run`` (the (eps, delta) lower bound): Steinke et al.'s Theorem 3 (``audit_stats.one_run_bound``)
  on the guesses "member" for the ``k+`` largest scores and "not" for the ``k-`` smallest over all
  canaries. It needs only the coins to be independent. ``(k+, k-)`` are chosen before the run from
  simulations of the *claimed* mechanism (sigma, q, steps). With ``m`` canaries at delta 1e-5 it
  saturates well below a tight epsilon (about 0.4-0.5 of it, as Steinke et al. report).
* ``parametric`` (the Nasr et al. route, *not* an assumption-free bound): the measured noise
  multiplier (chi-square upper bound from the non-member coordinates) and the measured canary step
  (lower bound from the sampled member steps against the non-member ones), each at ``1 - alpha/2``,
  put into Opacus' accountant at the configured rate and step count. It is a lower bound only if
  the release is the Poisson-subsampled Gaussian in form; it audits its parameters (noise too
  small, clipping skipped).

The check fails when any route exceeds Opacus' epsilon. Which regime the Clopper-Pearson route can
certify: a threshold test counted on ``N`` canaries resolves false-positive rates down to about
``4/N``, while Opacus' epsilon at delta 1e-5 is set by the tails of the privacy loss. With full-batch
steps (``q = 1``; the mechanism is a Gaussian one, Opacus' PRV accountant is tight for it) 200,000
canaries reach about 0.5-0.6 of Opacus' epsilon (0.62 measured at sigma 0.8, one step); with Poisson
subsampling (``q = 0.1``) the loss distribution's tail is the rare event of a canary sampled many
times, and the route reaches about 0.35-0.4 (README).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch
from scipy.special import ndtri
from scipy.stats import chi2

from collafuse_privacy.defenses.accounting import dp_sgd_epsilon
from collafuse_privacy.defenses.dp_sgd import DPSGD, PoissonSampler
from .audit_stats import halves, one_run_bound, threshold_bound

MAX_GUESSES = 16384  # the one-run route's largest guess count (its bound's cost grows with it; at delta 1e-5
# the best count is a few thousand: more guesses raise the delta term faster than the accuracy)
HIDDEN = 16  # the tiny MLP's hidden width (every canary row carries zeros for all of its parameters)
ADJACENCY = "add/remove one example (Opacus' accountant, Poisson sampling)"
CP_ROUTE = ("clopper-pearson (independent canaries in a block no real gradient touches; threshold on the "
            "calibration half, rates on the evaluation half)")  # fmt: skip
ONE_RUN_ROUTE = "one-run (Steinke, Nasr, Jagielski 2023; independent coins only)"
PARAMETRIC_ROUTE = "parametric (measured noise and canary step in Opacus' accountant; assumes a subsampled Gaussian)"


@dataclass(frozen=True)
class WhiteBoxAudit:
    """The white-box DP-SGD audit (all epsilons at ``delta``, under :data:`ADJACENCY`)."""

    opacus_epsilon: float  # the accountant's epsilon for (sigma, q, steps), each run
    cp_epsilon: float  # lower bound at confidence 1 - alpha (CP_ROUTE): the headline
    one_run_epsilon: float  # lower bound at confidence 1 - alpha (ONE_RUN_ROUTE)
    parametric_epsilon: float  # PARAMETRIC_ROUTE
    noise_multiplier: float  # configured sigma
    measured_noise: float  # upper bound on the measured noise multiplier (1 - alpha/2)
    measured_step: float  # lower bound on the released canary step / C (1 - alpha/2); 1 when clipped right
    sample_rate: float
    steps: int
    runs: int
    canaries: int  # in all runs
    cp_fpr: float  # the evaluation half's rates at the calibrated threshold
    cp_fnr: float
    cp_evaluation: int  # canaries in the evaluation half
    guesses: int
    correct: int
    delta: float
    alpha: float
    adjacency: str = ADJACENCY

    @property
    def epsilon(self) -> float:
        """The headline lower bound: the Clopper-Pearson route's."""
        return self.cp_epsilon

    def _ratio(self, eps: float) -> float:
        return eps / self.opacus_epsilon if self.opacus_epsilon > 0 else float("nan")

    @property
    def ratio(self) -> float:
        """Clopper-Pearson epsilon / Opacus' epsilon."""
        return self._ratio(self.cp_epsilon)

    @property
    def one_run_ratio(self) -> float:
        return self._ratio(self.one_run_epsilon)

    @property
    def parametric_ratio(self) -> float:
        return self._ratio(self.parametric_epsilon)

    @property
    def passed(self) -> bool:
        return max(self.cp_epsilon, self.one_run_epsilon, self.parametric_epsilon) <= self.opacus_epsilon


def llr_scores(g: np.ndarray, q: float, scale: Optional[float] = None) -> np.ndarray:
    """Per canary ``sum_t log(1 - q + q exp((2 g - 1) / (2 s^2)))`` for observations ``g`` [T, m]
    (``s``: ``scale``, default a robust scale of all of ``g``, 1.4826 x the median absolute deviation)."""
    g = np.asarray(g, dtype=np.float64)
    if scale is None:
        scale = 1.4826 * float(np.median(np.abs(g - np.median(g))))
    x = (2.0 * g - 1.0) / (2.0 * scale * scale)
    if q >= 1.0:
        return x.sum(axis=0)
    return np.logaddexp(math.log1p(-q), math.log(q) + x).sum(axis=0)


def guess_counts(scores: np.ndarray, coins: np.ndarray, k_plus: int, k_minus: int) -> tuple[int, int]:
    """``(guesses, correct)``: "member" for the ``k_plus`` largest scores, "not" for the ``k_minus`` smallest."""
    order = np.argsort(-np.asarray(scores), kind="mergesort")
    top, bottom = order[:k_plus], order[len(order) - k_minus:] if k_minus else order[:0]
    y = np.asarray(coins, dtype=bool)
    return k_plus + k_minus, int(y[top].sum() + (~y[bottom]).sum())


@functools.lru_cache(maxsize=16)
def choose_guesses(m: int, steps: int, q: float, sigma: float, delta: float, alpha: float, sims: int = 3,
                   seed: int = 0) -> tuple[int, int]:  # fmt: skip
    """``(k+, k-)`` with the largest one-run bound at the mean correct count of ``sims`` simulations of the
    claimed mechanism (Dirac canaries, the configured sigma): fixed before the run, from the claim alone."""
    rng = np.random.default_rng([seed, 0xD95])
    top_k = max(4, min(m // 2, MAX_GUESSES // 2))
    grid = [0] + sorted({int(k) for k in np.geomspace(4, top_k, 14)})
    pairs = [(kp, km) for kp in grid[1:] for km in grid if kp + km <= m]
    correct = np.zeros(len(pairs))
    for _ in range(sims):
        y = rng.random(m) < 0.5
        g = ((rng.random((steps, m)) < q) & y) + sigma * rng.standard_normal((steps, m))
        yo = y[np.argsort(-llr_scores(g, q, sigma), kind="mergesort")]
        top = np.concatenate(([0], np.cumsum(yo)))  # members among the k largest
        bottom = np.concatenate(([0], np.cumsum(~yo[::-1])))  # non-members among the k smallest
        correct += [top[kp] + bottom[km] for kp, km in pairs]
    total = {pk: one_run_bound(m, pk[0] + pk[1], int(c / sims), delta, alpha) for pk, c in zip(pairs, correct)}
    return max(total, key=total.get)


@dataclass
class Client:
    """One client for the audit: its :class:`DPSGD`, the Poisson sampler of its real examples,
    ``loss_fn_for(indices)`` (the ``loss_fn(module)`` of ``DPSGD.step`` for that batch) and the canary
    block (a parameter of ``dp``'s model whose real per-sample gradients are exactly zero)."""

    dp: DPSGD
    sampler: PoissonSampler
    loss_fn_for: Callable[[torch.Tensor], Callable]
    block: torch.nn.Parameter


def _run_seed(seed: int, run: int, stream: int) -> int:
    return int(np.random.SeedSequence([int(seed), int(run), stream]).generate_state(1)[0])


def _observe(c: Client, steps: int, canaries: int, norm: float, seed: int, run: int):
    """One run: ``(g [steps, canaries], sampled [steps, canaries], coins [canaries], Opacus epsilon fn)``."""
    dp = c.dp
    if dp.steps:
        raise ValueError("audit_dpsgd needs a fresh DPSGD (its accountant already counts steps)")
    if canaries > c.block.numel():
        raise ValueError(f"{canaries} canaries need {canaries} coordinates; the canary block has {c.block.numel()}")
    params = list(dp.optimizer.params)
    where = [i for i, p in enumerate(params) if p is c.block]
    if len(where) != 1:
        raise ValueError("the canary block is not a parameter of the client's DP optimizer")
    b = where[0]
    gen = torch.Generator().manual_seed(_run_seed(seed, run, 0))
    coins = torch.rand(canaries, generator=gen) < 0.5
    members = torch.nonzero(coins).flatten()
    can_sampler = PoissonSampler(len(members), dp.sample_rate, torch.Generator().manual_seed(_run_seed(seed, run, 1)))
    scale = dp.optimizer.expected_batch_size / dp.max_grad_norm  # Opacus divides the noised sum by it
    g = np.zeros((steps, canaries), dtype=np.float64)
    sampled = np.zeros((steps, canaries), dtype=bool)
    for t in range(steps):
        batch = c.sampler.next()
        chosen = members[can_sampler.next()]
        sampled[t, chosen.numpy()] = True
        # zero rows on every other parameter (broadcast views: DPSGD.step concatenates them), a Dirac on the block
        rows = [p.new_zeros(()).expand(len(chosen), *p.shape) for p in params]
        rows[b] = torch.zeros((len(chosen), *c.block.shape), dtype=c.block.dtype, device=c.block.device)
        rows[b].view(len(chosen), -1)[torch.arange(len(chosen)), chosen.to(rows[b].device)] = norm
        dp.step(c.loss_fn_for(batch) if len(batch) else None, extra_grad_samples=rows)
        g[t] = c.block.grad.detach().flatten()[:canaries].double().cpu().numpy() * scale
    return g, sampled, coins.numpy()


def audit_dpsgd(make_client: Callable[[int], Client], *, steps: int, runs: int = 1, canaries: int = 2000,
                canary_norm: Optional[float] = None, delta: float = 1e-5, alpha: float = 0.05,
                seed: int = 0) -> WhiteBoxAudit:  # fmt: skip
    """Run ``runs`` fresh clients (``make_client(run)``, same configuration) for ``steps`` DP-SGD steps each
    with ``canaries`` gradient canaries per run in the client's canary block, observe every update, and
    bound epsilon by the three routes (module docstring). ``canary_norm``: the canaries' gradient norm
    (default the clipping norm ``C``; above it, correct clipping cuts it to ``C``)."""
    obs, conf = [], set()
    for run in range(runs):
        c = make_client(run)
        dp = c.dp
        norm = dp.max_grad_norm if canary_norm is None else float(canary_norm)
        obs.append(_observe(c, steps, canaries, norm, seed, run))
        conf.add((dp.noise_multiplier, dp.sample_rate, dp.max_grad_norm, dp.accountant_name,
                  tuple(tuple(h) for h in dp.accountant.history)))  # fmt: skip
    if len(conf) != 1:
        raise ValueError(f"the runs' clients differ in (sigma, q, C, accountant, history): {sorted(conf)}")
    sigma, q, _, accountant, history = conf.pop()
    opacus = dp_sgd_epsilon(list(history), delta, accountant)  # every run's (the same history)
    g = np.concatenate([o[0] for o in obs], axis=1)
    sampled = np.concatenate([o[1] for o in obs], axis=1)
    y = np.concatenate([o[2] for o in obs])
    m = len(y)
    scores = llr_scores(g, q, sigma)  # the configured sigma: each score a function of its canary alone

    cal, ev = halves(m, seed)
    b = threshold_bound(scores, y, cal, ev, "eps", delta, alpha)
    cp = b.value if b is not None else 0.0

    kp, km = choose_guesses(m, steps, q, sigma, delta, alpha, seed=seed)
    r, v = guess_counts(scores, y, kp, km)
    one = one_run_bound(m, r, v, delta, alpha)

    # parametric route: noise from the non-member coordinates, the step from the sampled member steps
    out = g[:, ~y].ravel()
    noise_ub = math.sqrt(float(np.sum(out**2)) / chi2.ppf(alpha / 2, len(out)))
    hits = g[sampled]
    z = float(ndtri(1 - alpha / 2))
    step_lb = float(hits.mean() - out.mean() - z * math.sqrt(hits.var() / max(len(hits), 1) + out.var() / len(out)))
    param = dp_sgd_epsilon([(noise_ub / step_lb, q, steps)], delta, accountant) if step_lb > 0 else 0.0
    return WhiteBoxAudit(opacus_epsilon=opacus, cp_epsilon=cp, one_run_epsilon=one, parametric_epsilon=param,
                         noise_multiplier=sigma, measured_noise=noise_ub, measured_step=step_lb, sample_rate=q,
                         steps=steps, runs=runs, canaries=m, cp_fpr=b.fpr if b else float("nan"),
                         cp_fnr=b.fnr if b else float("nan"), cp_evaluation=len(ev), guesses=r, correct=v,
                         delta=delta, alpha=alpha)  # fmt: skip


class TinyDenoiser(torch.nn.Module):
    """An MLP denoiser (8x8 images, 64 -> 16 -> 64, 2,128 parameters) with a canary block of ``block``
    coordinates: ``canary_block`` (``nn.Linear(block, 1)``, no bias) applied to the zero vector and added
    to the output, so the output is the MLP's exactly and real per-sample gradients there are zeros."""

    def __init__(self, block: int):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(64, HIDDEN), torch.nn.SiLU(), torch.nn.Linear(HIDDEN, 64))
        self.canary_block = torch.nn.Linear(block, 1, bias=False)
        torch.nn.init.zeros_(self.canary_block.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) + self.canary_block(x.new_zeros((len(x), self.canary_block.in_features)))


def tiny_client(noise_multiplier: float = 0.8, sample_rate: float = 1.0, n: int = 64, seed: int = 0,
                max_grad_norm: float = 1.0, block: int = 2000) -> Client:  # fmt: skip
    """A tiny client for the audit: :class:`TinyDenoiser` on ``n`` random images in [-1, 1], plain SGD
    wrapped by :class:`DPSGD`, its Poisson sampler, a loss, and the canary block."""
    gen = torch.Generator().manual_seed(int(seed))
    torch.manual_seed(int(seed))
    model = TinyDenoiser(block)
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

    return Client(dp, sampler, loss_fn_for, model.canary_block.weight)


def tiny_clients(noise_multiplier: float = 0.8, sample_rate: float = 1.0, seed: int = 0,
                 block: int = 2000) -> Callable[[int], Client]:  # fmt: skip
    """``make_client(run)`` for :func:`audit_dpsgd`: a fresh :func:`tiny_client` per run (seeds apart)."""
    return lambda run: tiny_client(noise_multiplier, sample_rate, seed=_run_seed(seed, run, 2) % 2**31, block=block)


def format_white_box(r: WhiteBoxAudit) -> str:
    """A few lines: Opacus' epsilon, the three routes, their ratios, the check."""
    return "\n".join([
        f"white-box DP-SGD audit: {r.canaries} gradient canaries ({r.runs} runs), {r.steps} steps, "
        f"sigma {r.noise_multiplier:g}, q {r.sample_rate:g}, delta {r.delta:g}, {r.adjacency}",
        f"  Opacus epsilon {r.opacus_epsilon:.3f}",
        f"  {CP_ROUTE}: epsilon >= {r.cp_epsilon:.3f} (ratio {r.ratio:.2f}; FPR {r.cp_fpr:.2g}, FNR {r.cp_fnr:.3g} "
        f"on {r.cp_evaluation} evaluation canaries, confidence {1 - r.alpha:g})",
        f"  {ONE_RUN_ROUTE}: epsilon >= {r.one_run_epsilon:.3f} (ratio {r.one_run_ratio:.2f}; {r.correct} of "
        f"{r.guesses} guesses right, confidence {1 - r.alpha:g})",
        f"  {PARAMETRIC_ROUTE}: epsilon {r.parametric_epsilon:.3f} (ratio {r.parametric_ratio:.2f}; noise "
        f"multiplier <= {r.measured_noise:.3f}, canary step >= {r.measured_step:.3f} C)",
        f"  check: {'passed' if r.passed else 'FAILED (a bound exceeds Opacus epsilon)'}",
    ])  # fmt: skip
