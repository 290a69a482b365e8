"""``rmia``: the robust membership-inference attack, offline (Zarifzadeh, Liu, Ng, Shokri,
"Low-Cost High-Power Membership Inference Attacks", ICML 2024).

RMIA compares a candidate ``x`` with population points ``z`` in one pairwise likelihood ratio,

    LR(x, z) = [p(x | target) / p(x)] / [p(z | target) / p(z)],
    score(x) = fraction of population points z with LR(x, z) > gamma,

where ``p(x)`` is ``x``'s likelihood averaged over reference models. Offline, every
reference is "out" for the candidates, and ``p(x)`` is the paper's linear approximation of
the missing "in" half, ``p(x) = ((1 + a) p_out(x) + (1 - a)) / 2`` (its eq. 11). A population
point ``z`` is "in" for about half of the references (each is trained on a random half of the
population), so ``p(z)`` is the plain average over all of them, as in the paper.

Here:

* the likelihood of a candidate under a model is ``exp(-L)``, with ``L`` the ``loss``
  attack's denoising error on fixed seeded probes (a diffusion model has no class
  confidence; ``exp(-L)`` lies in (0, 1] like one, and the attack depends on it only
  through ratios and the offline formula);
* the population is the server's public images (disjoint from every client's data); the
  references are models the server trains itself as :mod:`.lira` trains them (the target's
  range, architecture, optimiser, rounds and batch size), each on its own seeded random half
  of the public images;
* ``a`` is chosen as the paper does, on reference models alone: each reference in turn plays
  the target, its half of the population the members and the other half the non-members,
  the rest the references; the ``a`` of a grid with the highest mean AUC there is kept
  (``describe()`` records it). The candidates are never used for the choice.

``n_ref`` sets the number of references (at least 2; ``default = False``: it trains models).
With a small public split the fraction is coarse (one step per population point); ties are
broken by the candidate's own ratio (:func:`pairwise_score`).
"""

from __future__ import annotations

import math

import torch

from .base import register
from .lira import LiRA
from collafuse_privacy.options import BATCH, PRESET, SEED, Opt  # noqa: F401
from collafuse_privacy.rng import generator

A_GRID = tuple(i / 10 for i in range(11))


def _auc(pos: torch.Tensor, neg: torch.Tensor) -> float:
    """Mann-Whitney AUC (ties count one half)."""
    d = pos.view(-1, 1) - neg.view(1, -1)
    return float((d > 0).double().mean() + 0.5 * (d == 0).double().mean())


def pairwise_score(lx_t, px, lz_t, pz, gamma: float) -> torch.Tensor:
    """``score(x) = mean_z 1[(p(x|t) / p(x)) / (p(z|t) / p(z)) > gamma]`` in log space, float64.
    ``lx_t`` / ``lz_t``: log-likelihoods under the target; ``px`` / ``pz``: reference likelihoods.

    For one target the fraction is the population's CDF of ``r(z)`` at ``r(x) - log gamma``, a
    step function of ``r(x) = log p(x|t) - log p(x)``: with few population points most candidates
    tie. Ties are broken by ``r(x)`` itself, the order the fraction takes as the population grows
    (a term below one step, ``sigmoid(r(x) - median r(z)) / (Z + 1)``), so the score still moves by
    the paper's steps between levels and the threshold ``gamma`` keeps its meaning."""
    rx = (lx_t - px.log()).double()
    rz = (lz_t - pz.log()).double()
    frac = ((rx.view(-1, 1) - rz.view(1, -1)) > math.log(gamma)).double().mean(1)
    return frac + torch.sigmoid(rx - rz.median()) / (len(rz) + 1)


def offline_px(p_out: torch.Tensor, a: float) -> torch.Tensor:
    """The paper's offline approximation of ``p(x)`` from the "out" references' mean."""
    return 0.5 * ((1 + a) * p_out + (1 - a))


@register("rmia")
class RMIA(LiRA):
    default = False
    OPTIONS = {**LiRA.OPTIONS, "gamma": Opt(float, 1e-6, 1e6), "a": Opt(float, 0.0, 1.0, nullable=True)}

    def __init__(self, target="server", device="cpu", gamma: float = 1.0, a=None, **kw):
        super().__init__(target, device, **kw)
        self.gamma, self.a = float(gamma), (None if a is None else float(a))
        self.halves: list[torch.Tensor] = []

    def describe(self) -> dict:
        d = {k: v for k, v in super().describe().items() if k != "variance"}
        return {**d, "gamma": self.gamma, "a": self.a, "a_chosen_on": self._a_source,
                "population": len(self.z) if getattr(self, "z", None) is not None else 0,
                "likelihood": "exp(-denoising error)"}  # fmt: skip

    _a_source = "option"

    def fit(self, view) -> "RMIA":
        super(LiRA, self).fit(view)  # the target model (ModelAttack.fit), not LiRA's references
        public, preset = self._references_plan(view, min_public=4)  # population and references' halves
        n = len(public)
        self.halves, self.refs = [], []
        for i in range(self.n_ref):
            perm = torch.randperm(n, generator=generator(self.seed, 0x4D1A, i))
            half = perm[: n // 2].sort().values
            self.halves.append(half)
            self.refs.append(self._train_reference(view, public[half], preset, i))
        self.z = public
        self._lz_ref = self._log_lik_refs(public, None)  # [Z, n_ref]
        if self.a is None:
            self.a, self._a_source = self._choose_a(), "references (each as the target in turn)"
        return self

    @torch.no_grad()
    def _log_lik(self, model, x: torch.Tensor, client) -> torch.Tensor:
        """``log p(x | model) = -L(x)``, the ``loss`` error (best label option), ``[M]`` float64."""
        target, out = self.model, []
        try:
            self.model = model
            for i in range(0, x.shape[0], self.batch_size):
                b = x[i : i + self.batch_size].float().to(self.device)
                errs = [self.error(b, lab) for lab in self.label_options(b.shape[0], client)]
                out.append(torch.stack(errs).amin(0).cpu())
        finally:
            self.model = target
        return -torch.cat(out).double() if out else torch.zeros(0, dtype=torch.float64)

    def _log_lik_refs(self, x, client) -> torch.Tensor:
        return torch.stack([self._log_lik(r, x, client) for r in self.refs], 1)

    def _in_mask(self) -> torch.Tensor:
        """``[Z, n_ref]``: population point z was in reference r's training half."""
        m = torch.zeros(len(self.z), self.n_ref, dtype=torch.bool)
        for r, half in enumerate(self.halves):
            m[half, r] = True
        return m

    def _choose_a(self) -> float:
        """The grid's ``a`` with the best mean AUC when each reference plays the target."""
        lz, inm = self._lz_ref, self._in_mask()
        if self.n_ref < 2:
            return 1.0
        best, best_auc = 1.0, -1.0
        for a in A_GRID:
            aucs = []
            for j in range(self.n_ref):
                others = [r for r in range(self.n_ref) if r != j]
                lik = lz[:, others].exp()
                out = ~inm[:, others]
                # p(x) offline from the other references that are out for x; points no other
                # reference left out use the all-reference mean
                n_out = out.sum(1)
                p_out = torch.where(n_out > 0, (lik * out).sum(1) / n_out.clamp_min(1), lik.mean(1))
                px = offline_px(p_out, a)
                pz = lik.mean(1)
                s = pairwise_score(lz[:, j], px, lz[:, j], pz, self.gamma)
                pos, neg = s[inm[:, j]], s[~inm[:, j]]
                if len(pos) and len(neg):
                    aucs.append(_auc(pos, neg))
            if aucs and sum(aucs) / len(aucs) > best_auc:
                best, best_auc = a, sum(aucs) / len(aucs)
        return best

    @torch.no_grad()
    def score(self, view, candidates: torch.Tensor, client=None) -> torch.Tensor:
        if self.model is None:
            raise RuntimeError("call fit(view) first")
        lx_t = self._log_lik(self.model, candidates, client)
        px = offline_px(self._log_lik_refs(candidates, client).exp().mean(1), self.a)
        lz_t = self._log_lik(self.model, self.z, client)
        pz = self._lz_ref.exp().mean(1)
        return pairwise_score(lx_t, px, lz_t, pz, self.gamma)
