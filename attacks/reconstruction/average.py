"""``average``: link repeated releases of one image without ids, average them, then denoise.

With fresh noise every epoch (cut-image, ``fixed_noise: false``) a client re-sends each of its
images about ``(1 - c) x epochs`` times, each time ``h = sqrt(a) x0 + sqrt(1-a) eps`` with new
``eps`` (``a = Cut.abar_handover``, ``s2 = 1 - a``, ``d = C H W``). The server does not know which rows
share an image, but distances tell (DESIGN.md §3): for a centre ``m`` (one release, or the mean
of ``R`` linked releases) and a release ``h_j`` of an image ``x_j``,

    |m - h_j|^2 ~ s2 * noncentral-chi2(d, lambda_j),   lambda_j = |m - sqrt(a) x_j|^2 / s2.

For a release of the centre's own image ``lambda`` is just its noise (``~ d / R``, mean distance
``s2 d (1 + 1/R)``), for a different image it grows by ``a |x0 - x_j|^2 / s2``.

**Linking** (per requested row, the anchor; only among rows its own client sent, since every
message names its sender): link every row within a radius ``tau`` of the centre, then re-centre
on the group mean and link again (``passes``). The radius is set from the *public split*, which
is data of the same domain that no client holds: the expected number of false links is
``n_pool x F(tau)`` with ``F(tau) = mean over public images p of P(s2 chi2'(d, |m - sqrt(a) p|^2/s2)
<= tau)`` (normal approximation of the noncentral chi2), and ``tau`` is the largest radius with
at most ``false_links`` expected false links, capped at the ``k``-sigma upper bound of the
same-image distance. When images are too alike for the noise level (large ``c``, small images)
the radius shrinks to nothing and the method falls back to one release — it then equals
``learned`` instead of averaging unrelated images. Anchor-centred radius linking (rather than
greedy/agglomerative clustering of the whole pool) costs one ``[n_anchors, n_rows]`` distance
matrix per pass, gives every requested row its own group and never chains two images through a
transitive merge.

Distinct releases only: rows nearly identical to an earlier row of the group (distance under
``dup_tol`` times the same-image noise distance) are the same release sent again — exactly
what ``fixed_noise`` produces — and count once; ``R`` counts independent noise draws.

**Denoising**: the mean of ``R`` independent releases, ``sqrt(a) x0 + sqrt(s2/R) eps``, is the
group's sufficient statistic for ``x0``: one observation at the effective level
``a_eff = a / (a + s2/R)`` after scaling by ``1 / sqrt(a + s2/R)``. The default
``denoiser="learned"`` applies the ``learned`` method's public-data MMSE denoiser (same options,
one cached fit, trained on exactly this range of effective levels up to ``r_max``) at ``a_eff``:
the posterior mean given all linked releases, better than rescaling at every ``R`` and equal to
the single-release ``learned`` output at ``R = 1``. ``denoiser="rescale"`` returns
``clamp(mean / sqrt(a), -1, 1)`` instead. With ``fixed_noise`` each image has one distinct
release, so the advantage over ``learned`` disappears. cut-image only (shared-noise sends
``eps``: see ``exact``).
"""

from __future__ import annotations

import math

import torch

from collafuse_privacy.linalg import pairwise_sqdist

from .base import NotApplicable, ReconstructionAttack, ReconstructionOutput, register
from .denoiser import denoise, public_images
from .learned import fitted_denoiser
from collafuse_privacy.options import BATCH, PRESET, SEED, Opt  # noqa: F401


def _distinct(x: torch.Tensor, idx: torch.Tensor, tol: float) -> torch.Tensor:
    """Greedy: keep rows of ``idx`` that are farther than ``tol`` (squared L2) from every kept row."""
    if len(idx) <= 1:
        return idx
    d = pairwise_sqdist(x[idx], x[idx])
    keep = [0]
    for j in range(1, len(idx)):
        if bool((d[j, keep] > tol).all()):
            keep.append(j)
    return idx[keep]


def false_link_radius(centres: torch.Tensor, public: torch.Tensor, a: float, n_pool: int, false_links: float,
                      cap: torch.Tensor, iters: int = 40) -> torch.Tensor:  # fmt: skip
    """Largest ``tau`` ``[n]`` (at most ``cap``) with ``n_pool * F(tau) <= false_links``.

    ``F(tau)``: probability that a release of a random other image lies within ``tau`` of the centre,
    averaged over the public images ``public`` [P, d] (clean) as stand-ins for the client's other
    images: ``mean_p P(s2 chi2'(d, |m - sqrt(a) p|^2 / s2) <= tau)``, the noncentral chi2 taken
    as normal (mean ``d + lam``, variance ``2 (d + 2 lam)``); its left tail is heavier than the
    true one, so the radius errs on the safe side.
    """
    s2, d = 1.0 - a, centres.shape[1]
    lam = pairwise_sqdist(centres, (a**0.5) * public.double()) / s2  # [n, P]
    mean, sd = d + lam, (2 * (d + 2 * lam)).sqrt()
    normal = torch.distributions.Normal(0.0, 1.0)
    lo, hi = torch.zeros_like(cap), cap.clone()
    for _ in range(iters):
        mid = (lo + hi) / 2
        F = normal.cdf((mid.view(-1, 1) / s2 - mean) / sd).mean(1)
        ok = n_pool * F <= false_links
        lo, hi = torch.where(ok, mid, lo), torch.where(ok, hi, mid)
    return lo


@register("average")
class Average(ReconstructionAttack):
    """Linking of fresh releases (radius from the public split), averaging, denoising (module doc)."""

    OPTIONS = {"false_links": Opt(float, 0.0, 1e6), "k": Opt(float, 0.0, 1e6, lo_open=True),
               "passes": Opt(int, 1, 1000), "dup_tol": Opt(float, 0.0, 1e6),
               "denoiser": Opt(str, choices=("learned", "rescale")), "r_max": Opt(int, 1, 1_000_000),
               "preset": PRESET, "steps": Opt(int, 1, 10_000_000), "batch_size": BATCH,
               "lr": Opt(float, 0.0, 10.0, lo_open=True), "seed": SEED}

    def __init__(self, false_links: float = 0.5, k: float = 3.0, passes: int = 2, dup_tol: float = 0.05,
                 denoiser: str = "learned", preset: str = "micro", steps: int = 150, batch_size: int = 64,
                 lr: float = 2e-3, r_max: int = 128, device: str = "cpu", seed: int = 0):  # fmt: skip
        super().__init__(device, seed)
        if denoiser not in ("learned", "rescale"):
            raise ValueError(f"average: denoiser must be 'learned' or 'rescale', got {denoiser!r}")
        self.false_links, self.k, self.passes = float(false_links), float(k), max(1, int(passes))
        self.dup_tol, self.denoiser = float(dup_tol), denoiser
        self.options = dict(preset=preset, steps=int(steps), batch_size=int(batch_size), lr=float(lr), r_max=int(r_max))
        self.model = None
        self.cache_hit = False

    def check(self, view) -> None:
        super().check(view)
        if view.protocol.sends_noise:
            raise NotApplicable(f"{view.protocol.name} sends eps with every release (exact applies); averaging is for "
                                "releases with fresh noise of their own (cut-image)")

    def _fit(self, view) -> None:
        if len(public_images(view)) == 0:
            raise NotApplicable("the view has no public split to calibrate linking on (data.public_fraction = 0)")
        if self.denoiser == "learned" and not view.cut.sends_clean:
            self.model, self.cache_hit = fitted_denoiser(view, **self.options, seed=self.seed, device=self.device)

    def link(self, view, rows: torch.Tensor) -> list[torch.Tensor]:
        """For each row, the message rows linked to it (distinct releases, the row itself first)."""
        X = view.messages["x"].flatten(1).double()
        client = view.messages["client"]
        a = view.cut.abar_handover
        s2, d = 1.0 - a, X.shape[1]
        public = public_images(view).flatten(1).double()
        floor = 1e-6 * d
        dup = max(self.dup_tol * 2 * s2 * d, floor)
        groups: list[torch.Tensor] = [torch.empty(0, dtype=torch.long)] * len(rows)
        for k in torch.unique(client[rows]).tolist():
            pool = torch.nonzero(client == k).flatten()
            pos = torch.nonzero(client[rows] == k).flatten()
            P = X[pool]
            sizes = torch.ones(len(pos), dtype=torch.float64)
            centre = X[rows[pos]]
            for p in range(self.passes):
                f = 2.0 if p == 0 else 1 + 1 / sizes  # same-image distance = s2 d f on average
                cap = s2 * d * f + self.k * s2 * f * math.sqrt(2 * d) * torch.ones(len(pos), dtype=torch.float64)
                if s2 > 0:
                    tau = false_link_radius(centre, public, a, len(pool), self.false_links, cap)
                else:  # c = 0: clean releases; only copies link
                    tau = torch.zeros(len(pos), dtype=torch.float64)
                link = pairwise_sqdist(centre, P) <= tau.clamp_min(floor).view(-1, 1)
                new_centre = torch.empty_like(centre)
                for i, r in enumerate(rows[pos].tolist()):
                    members = pool[link[i]]
                    members = _distinct(X, torch.cat([torch.tensor([r]), members[members != r]]), dup)
                    groups[int(pos[i])] = members
                    sizes[i] = len(members)
                    new_centre[i] = X[members].mean(0)
                centre = new_centre
        return groups

    def _reconstruct(self, view, rows: torch.Tensor) -> ReconstructionOutput:
        groups = self.link(view, rows)
        shape = view.messages["x"].shape[1:]
        mean = torch.stack([view.messages["x"][g].double().mean(0) for g in groups]) if len(groups) else \
            torch.empty((0, *shape), dtype=torch.float64)  # fmt: skip
        R = torch.tensor([len(g) for g in groups], dtype=torch.float64)
        a = view.cut.abar_handover
        info = {"denoiser": self.denoiser, "false_links": self.false_links, "k": self.k, "passes": self.passes,
                "mean_releases": float(R.mean()) if len(R) else 0.0,
                "max_releases": int(R.max()) if len(R) else 0}  # fmt: skip
        if self.model is None:  # rescale, or c = 0 (clean releases)
            out = (mean / math.sqrt(a)).clamp(-1, 1).float()
        else:
            scale = (a + (1 - a) / R).view(-1, 1, 1, 1)
            out = denoise(self.model, (mean / scale.sqrt()).float(), a / scale.flatten())
            info["reused_fit"] = self.cache_hit
        return ReconstructionOutput(out, rows, "messages", groups=groups, info=info)
