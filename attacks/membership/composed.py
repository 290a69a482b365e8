"""``view-composed``: the view test that combines a candidate's releases (issue 14).

``view-lrt`` scores a candidate ``x`` by ``log (1/N) sum_j LR_j``, the likelihood ratio of "one
of the client's ``N`` releases came from ``x``": the Neyman-Pearson statistic when exactly one
release is ``x``'s. A member sent with fresh noise is released ``R`` times (about
``(1 - c) x epochs``), and the likelihood ratio of "some ``R`` of the ``N`` releases came from
``x``" is the mixture over ``R``-subsets,

    LR_R(x) = C(N, R)^-1  sum_{|S| = R}  prod_{j in S} LR_j(x)  >=  C(N, R)^-1 exp(sum of the top-R log LR_j),

dominated by its largest term when the candidate's own releases stand out. The score is that
mixture itself, ``log LR_R = log e_R(w) - log C(N, R)`` with ``w_j = exp(l_j)`` and ``e_R`` the
elementary symmetric polynomial of degree ``R`` (:func:`subset_mixture`): exact over the ``K``
largest terms (``K >= 2 R``, at least 64) and a mean-field for the other ``N - K`` (small and alike).
``l_j = log N(h_j; sqrt(a) x, (1-a) I) - log p0(h_j)`` is a per-release log ratio, ``p0`` the null
of ``view-lrt`` (a Gaussian fit to the public images passed through the release,
``N(sqrt(a) m, a S + (1-a) I)``). ``R = 1`` is ``view-lrt``'s statistic. With ``releases`` given
(the case the formal bound assumes, or the count the run reports) ``R`` is fixed; by default the
server does not know it: each ``log LR_R`` (``R = 1..r_max``) is standardised by its mean and
spread over public images (never sent, so non-members, scored against the same client's releases)
and the score is the largest standardised value (a generalised likelihood ratio over ``R`` whose
calibration the server can do itself: without it the mean-field terms of large ``R`` multiply the
null's misfit by ``R`` and rank non-members first). Measured
(``tests/test_audit.py``, README): where only the candidate's ``R`` releases are in play (the case
the formal bound assumes) it reaches ``sqrt(R)`` times the single-release ``mu``, and so does
``view-lrt`` (at low per-release signal its log-mean-exp is the mean log ratio, the same test up to
scale); among a client's thousands of releases the search for the candidate's few costs
``log C(N, R)``, and on the demo's data neither test gains over the other.

shared-noise and ``c = 0`` (the exact check) and ``c = 1`` behave as in ``view-lrt``.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from collafuse_privacy.linalg import chunk_sizes

from .base import NotApplicable, register
from .view_lrt import ViewLRT
from collafuse_privacy.options import BATCH, PRESET, SEED, Opt  # noqa: F401


@torch.no_grad()
def release_log_ratios(x: torch.Tensor, h: torch.Tensor, a: float, col_bias: torch.Tensor, k: int,
                       block: int = 1 << 22) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Per candidate, the ``k`` largest per-release log ratios ``[M, k]`` (descending) and the
    logsumexp of all ``N`` of them ``[M]``, in one chunked pass.

    ``x`` ``[M, d]``, ``h`` ``[N, d]``, ``col_bias`` ``[N]`` from ``view_lrt.null_bias``; a log ratio is
    ``log N(h_j; sqrt(a) x, (1-a) I) - log p0(h_j)`` (the ``(d/2) log 2 pi`` of both densities
    cancels), so sums over different numbers of releases compare.
    """
    M, N = x.shape[0], h.shape[0]
    k = min(k, N)
    d = x.shape[1]
    scale = math.sqrt(a) / (1.0 - a)
    row = -(a / (2.0 * (1.0 - a))) * (x * x).sum(1) - 0.5 * d * math.log(1.0 - a)
    cm, cn = chunk_sizes(M, N, block)
    top = torch.empty(M, k, dtype=x.dtype, device=x.device)
    lse = torch.empty(M, dtype=x.dtype, device=x.device)
    ht = h.t()
    for i in range(0, M, cm):
        xi = x[i : i + cm]
        best, acc = None, None
        for j in range(0, N, cn):
            blk = torch.addmm(col_bias[j : j + cn].unsqueeze(0), xi, ht[:, j : j + cn], alpha=scale)
            part = torch.logsumexp(blk, 1)
            acc = part if acc is None else torch.logaddexp(acc, part)
            cand = blk if best is None else torch.cat([best, blk], 1)
            best = torch.topk(cand, min(k, cand.shape[1]), dim=1).values
        top[i : i + cm] = best + row[i : i + cm].unsqueeze(1)
        lse[i : i + cm] = acc + row[i : i + cm]
    return top, lse


def subset_mixture(top: torch.Tensor, lse: torch.Tensor, n: int, r_max: int) -> torch.Tensor:
    """``log LR_R = log e_R(w) - log C(n, R)`` for ``R = 1..r_max`` ``[M, r_max]``, with ``w_j = exp(l_j)``
    and ``e_R`` the elementary symmetric polynomial: exact over the ``K`` largest terms ``top``
    ``[M, K]``, and for the other ``n - K`` in the mean field ``e_j(rest) = C(n-K, j) mean(w_rest)^j``
    (the rest are small and alike). High signal: the top ``R`` terms dominate; low signal:
    ``log LR_R ~ R log mean(w)``, ``view-lrt``'s statistic ``R`` times."""
    M, K = top.shape
    r_max = min(r_max, n)
    top = top.double()
    lse_top = torch.logsumexp(top, 1)
    gap = (lse_top - lse.double()).clamp(max=0.0)
    rest = n - K
    if rest > 0:  # log mean of the rest: log(sum all - sum top) - log(n - K)
        log_rest = lse.double() + torch.log((-torch.expm1(gap)).clamp_min(1e-300)) - math.log(rest)
    else:
        log_rest = torch.full((M,), -math.inf, dtype=torch.float64, device=top.device)
    # e_i(top) for i = 0..r_max, by the usual recursion, in log space
    E = torch.full((M, r_max + 1), -math.inf, dtype=torch.float64, device=top.device)
    E[:, 0] = 0.0
    for j in range(K):
        E[:, 1:] = torch.logaddexp(E[:, 1:], E[:, :-1] + top[:, j : j + 1])
    R = torch.arange(1, r_max + 1, device=top.device)
    out = torch.empty(M, r_max, dtype=torch.float64, device=top.device)
    for r in R.tolist():
        i = torch.arange(0, min(r, K) + 1, device=top.device)
        j = r - i  # from the rest
        ok = j <= rest
        jj = j.unsqueeze(0).double()
        from_rest = torch.where(jj == 0, torch.zeros_like(jj), jj * log_rest.unsqueeze(1))  # 0 * -inf = 0 here
        terms = E[:, i] + log_binom(rest, j).unsqueeze(0) + from_rest
        terms = torch.where(ok.unsqueeze(0), terms, torch.full_like(terms, -math.inf))
        out[:, r - 1] = torch.logsumexp(terms, 1) - log_binom(n, torch.tensor([r], device=top.device))
    return out


def log_binom(n: int, r: torch.Tensor) -> torch.Tensor:
    """``log C(n, r)`` (float64), ``-inf`` where ``r > n``."""
    r = r.double()
    out = torch.lgamma(torch.tensor(n + 1.0, dtype=torch.float64)) - torch.lgamma(r + 1) - torch.lgamma((n - r).clamp_min(0) + 1)
    return torch.where(r <= n, out, torch.full_like(out, -math.inf))


@register("view-composed")
class ViewComposed(ViewLRT):
    """``releases``: ``R`` when known (otherwise scanned over ``1..r_max``)."""

    OPTIONS = {"releases": Opt(int, 1, 1_000_000, nullable=True), "r_max": Opt(int, 1, 1_000_000)}

    def __init__(self, target="server", device="cpu", releases: Optional[int] = None, r_max: int = 64):
        super().__init__(target, device, aggregate="logsumexp", null="gaussian")
        if releases is not None and int(releases) < 1:
            raise ValueError(f"releases must be at least 1, got {releases}")
        self.releases, self.r_max = (None if releases is None else int(releases)), max(1, int(r_max))

    CALIBRATION_IMAGES = 256

    def fit(self, view) -> "ViewComposed":
        super().fit(view)
        self._cal: dict = {}
        if self.mode == "gaussian" and self.releases is None:
            pub = view.public_images()[0]
            if len(pub) < 8:
                raise NotApplicable("view-composed with R unknown calibrates on the view's public images: it holds "
                                    f"{len(pub)}; give releases=R")  # fmt: skip
            self._cal_x = pub[-self.CALIBRATION_IMAGES :].flatten(1).float().to(self.device)
        return self

    def _log_lr(self, x: torch.Tensor, sel) -> torch.Tensor:
        refs = self.refs[sel]
        N = refs.shape[0]
        r_max = min(self.releases or self.r_max, N)
        top, lse = release_log_ratios(x, refs, self.a, self.col_bias[sel], min(N, max(2 * r_max, 64)))
        return subset_mixture(top, lse, N, r_max)  # [M, r_max]: log LR_R for R = 1..r_max

    def describe(self) -> dict:
        base = super().describe()
        if self.mode != "gaussian":
            return base
        return {**base, "statistic": "log of the R-subset mixture of per-release ratios"
                + ("" if self.releases else ", standardised per R on public images, max over R"),
                "releases": self.releases if self.releases is not None else f"scanned 1..{self.r_max}"}  # fmt: skip

    def score(self, view, candidates: torch.Tensor, client: Optional[int] = None) -> torch.Tensor:
        if self.mode != "gaussian":
            return super().score(view, candidates, client)
        x = candidates.flatten(1).float().to(self.device)
        sel = slice(None) if client is None else (self.clients == int(client))
        refs = self.refs[sel]
        N = refs.shape[0]
        if N == 0:
            return torch.zeros(x.shape[0])
        log_lr = self._log_lr(x, sel)
        if self.releases:
            return log_lr[:, -1].cpu()
        key = None if client is None else int(client)
        if key not in self._cal:  # R unknown: standardise each R on public images (non-members)
            c = self._log_lr(self._cal_x, sel)
            self._cal[key] = (c.mean(0), c.std(0).clamp_min(1e-9))
        mean, sd = self._cal[key]
        return ((log_lr - mean) / sd).amax(1).cpu()
