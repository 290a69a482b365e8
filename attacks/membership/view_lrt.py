"""``view-lrt``: membership from the recorded releases themselves (no model).

cut-image (``t_c > 0``): one release of image ``x0`` is ``h ~ N(sqrt(a) x0, (1 - a) I)``
with ``a = abar_h`` the hand-over level's ``abar`` (DESIGN.md §1, §4). For a candidate ``x`` and the ``N``
releases ``h_j`` a client sent, the score is the log likelihood ratio of

* H1: one of the ``N`` releases (unknown which, uniformly) was drawn from ``x``,
  the rest from the population;
* H0: all were drawn from the population,

``log LR(x) = log (1/N) sum_j p(h_j | x) / p0(h_j)``  (``aggregate="logsumexp"``, default).
This is the Neyman-Pearson statistic for a single release of ``x`` among the
``N``; with several releases of ``x`` it is still dominated by the best-matching
one, and unlike a sum over releases it does not need to know which releases
belong together. ``aggregate="max"`` keeps only ``max_j log p(h_j|x)/p0(h_j)``.
``p0`` models the population from the public split (DESIGN.md §2); it
reweights releases, and ``|h_j|^2`` cancels in ``p(h_j|x) / p0(h_j)``. Options
(``null=``):

* ``"gaussian"`` (default): ``p0 = N(sqrt(a) m, a S + (1 - a) I)`` with ``m``, ``S``
  the public images' mean and covariance. Smooth, so ``log p0(h_j)`` stays
  comparable across releases.
* ``"kde"``: ``p0(h) = mean_z p(h | z)`` over the public images. Exact for a large
  public split, but a small one makes ``log p0(h_j)`` swing by tens of nats, so a
  few atypical releases dominate every candidate's sum.
* ``"flat"``: constant ``p0``; then ``-|h_j|^2 / (2(1-a))`` stays in, and at low
  signal (high c) the shortest releases dominate every candidate's sum.

Measured view-lrt AUC (gaussian / kde / flat): tiny digits run (20 public
images) c = 0.2: 0.94 / 0.84 / 0.95; c = 0.5: 0.62 / 0.62 / 0.53; mnist5k 16x16,
T = 100, c = 0.5 (500 public): 0.541 / 0.539 / 0.501.
Without public images the null falls back to flat.

Expanding ``|h - sqrt(a) x|^2 = |h|^2 - 2 sqrt(a) h.x + a |x|^2`` turns all
``M x N`` pairs into matrix products over chunks (:func:`gaussian_lrt`), never a
Python loop over pairs; ``|h|^2`` cancels against the null.

shared-noise: the server holds ``(x_t, t, eps)``, so it reconstructs
``x0 = (x_t - sqrt(1-abar[t]) eps) / sqrt(abar[t])`` exactly; ``t_c = 0``
sends ``x0`` itself. Both are scored by ``-min_j |x - x0_j|_2`` (exact check).
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from collafuse_privacy.linalg import BLOCK_ELEMS, chunk_sizes, nearest

from .base import MembershipAttack, NotApplicable, register
from collafuse_privacy.options import BATCH, PRESET, SEED, Opt  # noqa: F401

def _logsumexp_(blk: torch.Tensor) -> torch.Tensor:
    """Row logsumexp of ``blk`` [m, n], overwriting it. Terms below ``exp(-80)`` of the row
    maximum are raised to ``exp(-80)`` (relative error <= n * 2e-35): otherwise ``exp`` makes
    float32 denormals, whose arithmetic is ~10x slower on x86 CPUs."""
    m = blk.amax(1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    return blk.sub_(m).clamp_(min=-80.0).exp_().sum(1).log_().add_(m.squeeze(1))


@torch.no_grad()
def gaussian_lrt(
    x: torch.Tensor,
    h: torch.Tensor,
    a: float,
    col_bias: Optional[torch.Tensor] = None,
    aggregate: str = "logsumexp",
    block: int = BLOCK_ELEMS,
) -> torch.Tensor:
    """``agg_j [ (2 sqrt(a) h_j.x - a |x|^2) / (2 (1-a)) + col_bias_j ]`` for every row ``x``.

    ``x``: ``[M, d]`` candidates, ``h``: ``[N, d]`` releases (same dtype/device),
    ``col_bias``: ``[N]`` per-release offset (e.g. ``-log p0(h_j)`` or ``-|h_j|^2/(2(1-a))``),
    ``aggregate``: ``"logsumexp"`` (minus ``log N``) or ``"max"``. Returns ``[M]``.
    Chunked: at most ``block`` entries of the ``M x N`` matrix exist at once.
    """
    M, N = x.shape[0], h.shape[0]
    if N == 0:
        return torch.full((M,), -math.inf, dtype=x.dtype, device=x.device)
    scale = math.sqrt(a) / (1.0 - a)
    if col_bias is None:
        col_bias = torch.zeros(N, dtype=x.dtype, device=x.device)
    row_bias = -(a / (2.0 * (1.0 - a))) * (x * x).sum(1)
    cm, cn = chunk_sizes(M, N, block)
    out = torch.empty(M, dtype=x.dtype, device=x.device)
    ht = h.t()
    for i in range(0, M, cm):
        xi = x[i : i + cm]
        acc = None
        for j in range(0, N, cn):
            blk = torch.addmm(col_bias[j : j + cn].unsqueeze(0), xi, ht[:, j : j + cn], alpha=scale)
            part = _logsumexp_(blk) if aggregate == "logsumexp" else blk.amax(1)
            acc = part if acc is None else (torch.logaddexp(acc, part) if aggregate == "logsumexp" else torch.maximum(acc, part))
        out[i : i + cm] = acc
    out += row_bias
    if aggregate == "logsumexp":
        out -= math.log(N)
    return out


@torch.no_grad()
def null_bias(h: torch.Tensor, a: float, public: Optional[torch.Tensor], null: str = "gaussian") -> tuple[torch.Tensor, str]:
    """Per-release offset ``b_j = -(log p0(h_j) + |h_j|^2 / (2(1-a)))`` for :func:`gaussian_lrt`.

    ``h``: ``[N, d]`` releases; ``public``: ``[P, C, H, W]`` or ``[P, d]`` population images
    (None/too few: flat null). Returns ``(b [N], name of the null used)``.
    """
    k = a / (2.0 * (1.0 - a))
    sq = (h * h).sum(1)
    if public is None or len(public) < 2 or null == "flat":
        return -sq / (2.0 * (1.0 - a)), "flat"
    z = public.flatten(1).to(h)
    if null == "kde":
        # log p0 + |h|^2/(2(1-a)) = logmeanexp_z (2 sqrt(a) h.z - a|z|^2) / (2(1-a))
        return -(gaussian_lrt(h, z, a, -k * (z * z).sum(1), "logsumexp") + k * sq), "kde (public split)"
    zd = z.double()
    m = zd.mean(0)
    cov = torch.cov(zd.T) if zd.shape[1] > 1 else zd.var().view(1, 1)
    S = a * cov + (1.0 - a) * torch.eye(zd.shape[1], dtype=torch.float64, device=zd.device)
    L = torch.linalg.cholesky(S)
    out = torch.empty(h.shape[0], dtype=h.dtype, device=h.device)
    logdet = 2.0 * torch.log(torch.diagonal(L)).sum()
    for i in range(0, h.shape[0], 8192):
        dev = (h[i : i + 8192].double() - math.sqrt(a) * m).T
        w = torch.linalg.solve_triangular(L, dev, upper=False)
        lp0 = -0.5 * (w * w).sum(0) - 0.5 * logdet  # constants common to all releases dropped
        out[i : i + 8192] = -(lp0 + sq[i : i + 8192].double() / (2.0 * (1.0 - a))).to(h.dtype)
    return out, "gaussian fit to the public split"


@register("view-lrt")
class ViewLRT(MembershipAttack):
    """Likelihood of the recorded releases given the candidate (cut-image), or the exact
    check (shared-noise, ``t_c = 0``). No model, no training: ``fit`` only prepares the
    releases (and the public-split null)."""

    OPTIONS = {"aggregate": Opt(str, choices=("logsumexp", "max")), "null": Opt(str, choices=("gaussian", "kde", "flat"))}

    def __init__(self, target="server", device="cpu", aggregate: str = "logsumexp", null: str = "gaussian"):
        super().__init__(target, device)
        if aggregate not in ("logsumexp", "max"):
            raise ValueError(f"aggregate must be 'logsumexp' or 'max', got {aggregate!r}")
        if null not in ("gaussian", "kde", "flat"):
            raise ValueError(f"null must be 'gaussian', 'kde' or 'flat', got {null!r}")
        self.aggregate, self.null = aggregate, null
        self.mode: Optional[str] = None
        self.null_used: Optional[str] = None

    def describe(self) -> dict:
        if self.mode != "gaussian":
            return {"mode": self.mode, "statistic": "-min_j |x - x0_j|_2"}
        return {"mode": self.mode, "aggregate": self.aggregate, "null": self.null_used, "abar_handover": self.a}

    def fit(self, view) -> "ViewLRT":
        if self.target_kind != "server":
            raise NotApplicable("view-lrt scores the messages the server received, not a model; use target 'server'")
        why = view.protocol.no_image_rows()
        if why is not None:
            raise NotApplicable(why)
        if len(view) == 0:
            raise NotApplicable("the server view holds no recorded messages")
        dev = self.device
        msgs = view.messages
        self.clients = msgs["client"].to(dev)
        if view.protocol.sends_noise:
            self.mode = "exact"
            self.refs = view.protocol.recover_x0(msgs).flatten(1).float().to(dev)
        elif view.cut.sends_clean:
            self.mode = "clean"
            self.refs = msgs["x"].flatten(1).float().to(dev)
        else:
            self.mode = "gaussian"
            self.a = view.cut.abar_handover
            h = msgs["x"].flatten(1).float().to(dev)
            self.refs = h
            self.col_bias, self.null_used = null_bias(h, self.a, view.public_images()[0] if self.null != "flat" else None,
                                                      self.null)  # fmt: skip
        return self

    def score(self, view, candidates: torch.Tensor, client: Optional[int] = None) -> torch.Tensor:
        if self.mode is None:
            raise RuntimeError("call fit(view) first")
        x = candidates.flatten(1).float().to(self.device)
        sel = slice(None) if client is None else (self.clients == int(client))
        refs = self.refs[sel]
        if refs.shape[0] == 0:  # this client sent nothing: no evidence either way
            return torch.zeros(x.shape[0])
        if self.mode in ("exact", "clean"):
            return (-nearest(x, refs)[0]).cpu()
        return gaussian_lrt(x, refs, self.a, self.col_bias[sel], self.aggregate).cpu()
