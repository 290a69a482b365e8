"""Scoring a trained audit run (:func:`score_audit`): each method's slot scores, the bounds valid for
them, the headline chosen on the calibration slots, and the check against the formal number.

The game, the methods and the routes are described in :mod:`.audit`; the statistics are
:mod:`.audit_stats`'; the canaries and their link to the recorded rows are :mod:`.canaries`'.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from collafuse_privacy.attacks.membership import make
from collafuse_privacy.errors import UserError
from collafuse_privacy.run.schemas import (AUDIT_FORMAT, AuditBound, AuditMethod, AuditOneRun, AuditReleases, AuditReport,
                                      AuditStratum)  # fmt: skip

from . import audit_stats as st
from .audit_unlinked import unlinked_check
from .canaries import LABEL_ALT, LABEL_X, SERVER, Canaries, slot_rows
from .harness import ScoredRun, attempts
from .roc import auc as roc_auc

KNOWN_RELEASE = "known-release"
VIEW_METHODS = ("view-lrt", "view-composed")
CLIENT_METHODS = ("loss",)
TOLERANCE = 1e-9  # a lower bound exceeds its formal number only beyond rounding


# ---------------------------------------------------------------------------
# Slot scores and their bounds
# ---------------------------------------------------------------------------


@torch.no_grad()
def known_release_scores(view, row_ids: torch.Tensor, can: Canaries) -> tuple[np.ndarray, np.ndarray]:
    """The auditor's statistic per replace-one slot and the number of distinct releases it used.

    Rows are linked to slots by their ground-truth image ids; identical rows (fixed noise re-sends
    the same ``h``) count once. Where the protocol sends the noise (``sends_noise``) or the clean
    image (``c = 0``) the slot's input is recovered exactly: ``+-inf``. Where the rows carry labels
    (``model.server_conditioning = labels``), a release whose label is the canary's and not its
    partner's decides the slot (``+-inf``; the labels are tied to the coins, ``Canaries.labels``).
    """
    proto, m = view.protocol, len(can)
    scores, n_rel = np.zeros(m), np.zeros(m, dtype=np.int64)
    if len(view) == 0 or can.alt is None:
        return scores, n_rel
    x_all = view.messages["x"].double().flatten(1)
    levels = proto.row_levels(view.messages)
    abar = proto.cut.abar.double()
    X, A = can.x.double().flatten(1), can.alt.double().flatten(1)
    for s, rows in slot_rows(can, row_ids).items():
        r = torch.tensor(rows)
        lv = levels[r]
        if proto.sends_noise or bool((lv < 0).all()):  # the input itself is in the view
            x0 = proto.recover_x0(view.messages, r).flatten(1) if proto.sends_noise else x_all[r]
            n_rel[s] = len(torch.unique(x0, dim=0))
            near_x, near_a = float((x0 - X[s]).pow(2).sum(1).min()), float((x0 - A[s]).pow(2).sum(1).min())
            scores[s] = math.inf if near_x < near_a else -math.inf
            continue
        if "labels" in view.messages:  # the label channel: the coin is in the clear
            lab = view.messages["labels"][r].long()
            if bool((lab == LABEL_X).any()) != bool((lab == LABEL_ALT).any()):
                scores[s] = math.inf if bool((lab == LABEL_X).any()) else -math.inf
                n_rel[s] = len(torch.unique(x_all[r], dim=0))
                continue
        _, inv = torch.unique(x_all[r], dim=0, return_inverse=True)
        first = torch.full((int(inv.max()) + 1,), len(inv), dtype=torch.long).scatter_reduce(
            0, inv, torch.arange(len(inv)), "amin")
        h, a = x_all[r][first], abar[lv[first]].unsqueeze(1)
        n_rel[s] = len(h)
        # log N(h; sqrt(a) x, (1-a) I) - log N(h; sqrt(a) x', (1-a) I), summed over the releases
        ll = (-((h - a.sqrt() * X[s]) ** 2).sum(1, keepdim=True) + ((h - a.sqrt() * A[s]) ** 2).sum(1, keepdim=True))
        scores[s] = float((ll / (2 * (1 - a))).sum())
    return scores, n_rel


def attack_scores(view, name: str, can: Canaries, device: str, options: dict, target: str) -> np.ndarray:
    """Slot scores of a membership method that sees only the server's view."""
    attack = make(name, target=target, device=device, **(options or {})).fit(view)
    client = None if target == SERVER else int(target.split(":")[1])

    def score(x):
        return np.asarray(attack.score(view, x, client=client), dtype=np.float64)

    s = score(can.x)
    return s - score(can.alt) if can.alt is not None else s


def _bound(b: Optional[st.Bound]) -> Optional[AuditBound]:
    return None if b is None else AuditBound(**dataclasses.asdict(b))


def method_bounds(scores: np.ndarray, coin: np.ndarray, cal, ev, delta: float, alpha: float, gdp: bool,
                  one_run: bool, sees: str, statistic: str, independent: bool = False) -> AuditMethod:  # fmt: skip
    """Every bound of one method's slot scores that is valid for them (module docstring).

    ``independent``: each slot's score depends only on that slot's randomness (the auditor's
    known-release test), so the slots are independent trials and the Clopper-Pearson routes apply:
    ``epsilon`` and, for a GDP claim (``gdp``), ``mu``. Otherwise one view or one model trained on
    every canary scores them all, the trials are dependent, and only the one-run bound is computed
    and reported. ``one_run``: compute the one-run bound for independent scores too."""
    s = np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=0.0, posinf=1e300, neginf=-1e300)
    both = coin.any() and (~coin).any()
    auc = float(roc_auc(s, coin)) if both else None
    e = mu = None
    cal_e = cal_mu = None
    o = st.one_run(s, coin, cal, ev, delta, alpha) if (one_run or not independent) else None
    if independent:
        e = st.threshold_bound(s, coin, cal, ev, "eps", delta, alpha)
        b = st.threshold_bound(s, coin, cal, cal, "eps", delta, alpha)
        cal_e = None if b is None else b.value
        if gdp:
            mu = st.threshold_bound(s, coin, cal, ev, "mu", delta, alpha)
            b = st.threshold_bound(s, coin, cal, cal, "mu", delta, alpha)
            cal_mu = None if b is None else b.value
        eps_lb, route = (None if e is None else e.value), "clopper-pearson"
    else:
        eps_lb, route, cal_e = o.epsilon, "one-run", o.calibration
    return AuditMethod(sees=sees, statistic=statistic, auc=auc, independent=independent, epsilon=_bound(e),
                       mu=_bound(mu), one_run=None if o is None else AuditOneRun(**dataclasses.asdict(o)),
                       epsilon_lb=eps_lb, epsilon_route=None if eps_lb is None else route, calibration_epsilon=cal_e,
                       calibration_mu=cal_mu)  # fmt: skip



# ---------------------------------------------------------------------------
# The audit of a trained run
# ---------------------------------------------------------------------------


@dataclass
class _Game:
    """One target's side of an audit: what is attacked (``view``), the formal number the bounds are
    held against, the methods to run, and what that side adds (the known-release test, strata, notes)."""

    view: object
    gdp: bool  # the claim: mu-GDP (the view's release bound) or (eps, delta) (Opacus)
    formal_eps: float
    formal_mu: Optional[float]
    delta: float
    formal_note: str
    dist: torch.Tensor  # [m] L2 distance between a slot's two inputs
    names: list[str]
    canary_mu: Optional[float] = None
    releases: Optional[AuditReleases] = None
    strata: list = field(default_factory=list)
    results: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    scores: dict = field(default_factory=dict)  # the view-only methods' slot scores (the unlinked check)


def _server_game(run: ScoredRun, privacy, can: Canaries, coin, cal, ev, alpha: float, one_run: bool,
                 methods) -> _Game:  # fmt: skip
    """The server's view under replace-one, its formal number the run's release bound; the auditor's
    known-release test scores each slot from its own releases (independent trials)."""
    view_p = privacy.view
    formal_note = (f"the run's release bound (replace-one at L2 distance {view_p.sensitivity_l2:.4g}, "
                   f"{view_p.releases_per_image} release(s) per image): the audit's game is the same replace-one "
                   "game, so the formal number applies unchanged")  # fmt: skip
    view = run.view()
    kr, n_rel = known_release_scores(view, run.image_ids(len(view)), can)
    releases = AuditReleases(int(n_rel.min()), float(np.median(n_rel)), int(n_rel.max()), int((n_rel == 0).sum()))
    notes = []
    if releases.none:
        notes.append(f"{releases.none} of {len(can)} canaries never crossed the cut (no recorded release): "
                     "their coins cannot be seen, which weakens every bound")  # fmt: skip
    rec = view.record
    if rec is not None and getattr(rec, "received", 0) > getattr(rec, "recorded", 0):
        notes.append(f"the view recorded {rec.recorded} of {rec.received} rows: unrecorded releases are "
                     "invisible to the audit (record.max_items)")  # fmt: skip
    res = method_bounds(kr, coin, cal, ev, view_p.delta, alpha, True, one_run,
                        "auditor: ground-truth links of the canaries' own releases",
                        "sum over the slot's releases of log N(h; sqrt(a) x, 1-a) - log N(h; sqrt(a) x', 1-a)",
                        independent=True)  # each slot's score depends on its own releases' noise only  # fmt: skip
    dist = (can.x - can.alt).flatten(1).norm(dim=1)
    per = [view.protocol.release_mu(view.image_shape, int(r), float(d)) for r, d in zip(n_rel, dist)]
    strata = []
    if len(set(n_rel[n_rel > 0].tolist())) > 1:  # fresh noise: counts vary, and with them the formal mu
        strata = [AuditStratum(**dataclasses.asdict(x))
                  for x in st.stratified_mu(kr, coin, cal, ev, n_rel, per, view_p.delta, alpha)]  # fmt: skip
    return _Game(view, True, view_p.epsilon, view_p.mu, view_p.delta, formal_note, dist,
                 list(VIEW_METHODS if methods is None else methods), canary_mu=float(max(per)) if per else 0.0,
                 releases=releases, strata=strata, results={KNOWN_RELEASE: res}, notes=notes)  # fmt: skip


def _client_game(run: ScoredRun, privacy, can: Canaries, target: str, methods) -> _Game:
    """Client ``K``'s released model under add/remove, its formal number Opacus' epsilon."""
    k = int(target.split(":")[1])
    dp = privacy.client_dp
    entry = next((c for c in dp.clients if c.client == k), None)
    if not dp.enabled or entry is None:
        raise UserError(f"{run.path}: client {k} trained without DP-SGD: no formal epsilon to audit")
    formal_note = ("Opacus' epsilon of client %d (add/remove, Poisson sampling): the audit's game is add/remove of "
                   "one canary, the same adjacency, so the formal number applies unchanged" % k)  # fmt: skip
    view = run.view(release_clients=(k,))
    note = ("a black-box, last-iterate audit of DP-SGD: the attacker sees only the final model's denoising "
            "loss on the canaries, not the gradients of each step; such audits are known to sit far below "
            "the formal epsilon (Nasr et al. 2021: even with crafted inputs, a last-iterate black-box "
            "adversary is much weaker than the worst case DP-SGD's accounting must cover; Nasr et al. 2023 "
            "need gradient canaries and every iterate to be tight). A bound near 0 here shows that this "
            "attack finds little, not that the client is safer than its epsilon says")  # fmt: skip
    return _Game(view, False, entry.epsilon, None, dp.delta, formal_note, can.x.flatten(1).norm(dim=1),
                 list(CLIENT_METHODS if methods is None else methods), notes=[note])  # fmt: skip


def _attack(game: _Game, can: Canaries, coin, cal, ev, alpha: float, one_run: bool, device: str, options,
            target: str, log) -> None:  # fmt: skip
    """Score the slots with every requested method that sees the view, into ``game.results``."""
    sees = "server view" if target == SERVER else f"server view + client {target.split(':')[1]}'s released model"
    stat = "score(x) - score(x')" if can.alt is not None else "score(x)"

    def scores(name: str) -> np.ndarray:
        return attack_scores(game.view, name, can, device, (options or {}).get(name, {}), target)

    for a in attempts([n for n in game.names if n != KNOWN_RELEASE], scores):
        s = a.output
        if not a.applicable:
            game.results[a.name] = AuditMethod(sees="server view", statistic="", reason=a.reason)
        elif len(s) and np.isnan(s).all():  # no result, and said so (a diverged model, degenerate options)
            game.results[a.name] = AuditMethod(sees="server view", statistic="", reason=f"all {len(s)} slot scores are NaN")
            log(f"audit: {a.name}: all {len(s)} slot scores are NaN: no result")
        else:
            game.results[a.name] = method_bounds(s, coin, cal, ev, game.delta, alpha, game.gdp, one_run, sees,
                                                 f"{a.name}: {stat}")  # fmt: skip
            game.scores[a.name] = s
            log(f"audit: {a.name} done")


@dataclass(frozen=True)
class _Headline:
    """The best-of choices on the calibration slots; the chosen methods' bounds are the evaluation slots'."""

    eps_method: Optional[str]
    epsilon_lb: float
    eps_route: Optional[str]
    mu_method: Optional[str]
    mu_lb: Optional[float]


def _headline(usable: dict, gdp: bool) -> _Headline:
    with_eps = {n: r for n, r in usable.items() if r.epsilon_lb is not None and r.calibration_epsilon is not None}
    eps_method = max(with_eps, key=lambda n: with_eps[n].calibration_epsilon) if with_eps else None
    with_mu = {n: r for n, r in usable.items() if r.mu is not None and r.calibration_mu is not None}
    mu_method = max(with_mu, key=lambda n: with_mu[n].calibration_mu) if (gdp and with_mu) else None
    return _Headline(eps_method, with_eps[eps_method].epsilon_lb if eps_method else 0.0,
                     with_eps[eps_method].epsilon_route if eps_method else None, mu_method,
                     with_mu[mu_method].mu.value if mu_method else None)  # fmt: skip


def _over(bound: float, formal: float) -> bool:
    return bound > formal * (1 + TOLERANCE) + TOLERANCE


def _check(game: _Game, h: _Headline, alpha: float) -> tuple[bool, str]:
    """``(failed, message)``: does a lower bound exceed its formal number?"""
    formal_eps, formal_mu = game.formal_eps, game.formal_mu
    eps_over = _over(h.epsilon_lb, formal_eps)
    mu_over = h.mu_lb is not None and formal_mu is not None and _over(h.mu_lb, formal_mu)
    strata_over = [x for x in game.strata if x.mu_lb is not None and _over(x.mu_lb, x.formal_mu)]
    conf = f"{100 * (1 - alpha):g}%"
    eps_txt = f"epsilon >= {h.epsilon_lb:.4g} ({h.eps_route or 'no route'}, {h.eps_method or 'no method'})"
    mu_txt = f"mu >= {h.mu_lb:.4g} (GDP route, {h.mu_method})" if h.mu_lb is not None else None
    if eps_over or mu_over or strata_over:
        over = [t for t, o in ((f"{mu_txt} exceeds the formal mu {formal_mu:.4g}" if mu_txt else "", mu_over),
                               (f"{eps_txt} exceeds the formal epsilon {formal_eps:.4g}", eps_over)) if o]
        over += [f"mu >= {x.mu_lb:.4g} over the {x.slots} slots released {x.releases} time(s) exceeds their formal mu "
                 f"{x.formal_mu:.4g}" for x in strata_over]  # fmt: skip
        return True, (f"FAILED: the empirical lower bound {' and '.join(over)} of this run ({conf} confidence): the "
                      f"pipeline discloses more than its accounting says (or a {100 * alpha:g}% chance event)")  # fmt: skip
    ratio_of, ratio = _ratio(game, h)
    parts = ([f"{mu_txt} <= formal mu {formal_mu:.4g}"] if mu_txt and formal_mu is not None else []) \
        + [f"{eps_txt} <= formal epsilon {formal_eps:.4g}"]
    return False, (f"passed ({conf}): " + "; ".join(parts)
                   + (f"; ratio of {ratio_of} {ratio:.2f}" if ratio is not None else ""))  # fmt: skip


def _ratio(game: _Game, h: _Headline) -> tuple[str, Optional[float]]:
    """``(of what, headline bound / formal number)``: mu for a GDP claim, epsilon otherwise."""
    if game.gdp:
        mu = game.formal_mu
        return "mu", (h.mu_lb / mu) if (h.mu_lb is not None and mu and math.isfinite(mu)) else None
    eps = game.formal_eps
    return "epsilon", (h.epsilon_lb / eps) if (eps and math.isfinite(eps) and eps > 0) else None


def _closing_notes(game: _Game, usable: dict, can: Canaries, max_eps: float, n_eval: int, target: str) -> list[str]:
    """What qualifies the numbers, after the side's own notes."""
    notes, formal_eps = [], game.formal_eps
    if math.isfinite(formal_eps) and formal_eps > max_eps:
        notes.append(f"{len(can)} canaries certify at most epsilon {max_eps:.3g} (a perfect attack on "
                     f"{n_eval} evaluation slots, Clopper-Pearson): the formal {formal_eps:.3g} cannot be "
                     "shown tight with these canaries; add canaries")  # fmt: skip
    if not math.isfinite(formal_eps):
        notes.append("the formal epsilon is infinite (the view reveals the images): the audit can only confirm that")
    if game.strata:
        notes.append(f"fresh noise: the canaries were released {game.releases.min} to {game.releases.max} times; the "
                     "pooled bound mixes their trade-off curves, so the known-release test is also bounded per release "
                     "count against the formal mu at that count (strata, a union bound over them)")  # fmt: skip
    dependent = sorted(n for n, r in usable.items() if not r.independent)
    if dependent:
        notes.append(f"{', '.join(dependent)}: one {'view' if target == SERVER else 'model'} scores every slot, so "
                     "the slots are not independent trials: only the one-run bound (Steinke et al. 2023) is valid "
                     "for them, and only it is reported")  # fmt: skip
    if game.gdp:
        notes.append("mu is the GDP route's bound: it rules out every mu-GDP claim below it, and it is not an "
                     "epsilon (a non-Gaussian mechanism can give a large mu bound at a small epsilon); epsilon "
                     "bounds come from the assumption-free routes only")  # fmt: skip
    return notes


def score_audit(run_dir, can: Canaries, *, methods=None, options=None, one_run=False, alpha=0.05,
                device="cpu", target=SERVER, seconds=0.0, log=print) -> AuditReport:  # fmt: skip
    """The bounds of a trained audit run (see :mod:`.audit`'s docstring)."""
    run = ScoredRun(run_dir)
    privacy = run.rd.metrics("privacy")
    if privacy is None:
        raise UserError(f"{run_dir} has no metrics/privacy.json; train first")
    coin = can.coin.numpy().astype(bool)
    cal, ev = st.halves(len(can), can.seed)
    game = (_server_game(run, privacy, can, coin, cal, ev, alpha, one_run, methods) if target == SERVER
            else _client_game(run, privacy, can, target, methods))  # fmt: skip
    _attack(game, can, coin, cal, ev, alpha, one_run, device, options, target, log)
    usable = {n: r for n, r in game.results.items() if r.reason is None}
    h = _headline(usable, game.gdp)
    n_pos, n_neg = int(coin[ev].sum()), int((~coin[ev]).sum())
    max_eps, max_mu = st.max_certifiable(n_pos, n_neg, game.delta, alpha)
    failed, message = _check(game, h, alpha)
    unlinked = (unlinked_check(getattr(privacy, "unlinked", None), game.scores, coin, cal, ev, alpha)
                if target == SERVER else None)  # fmt: skip
    if unlinked is not None and unlinked.check == "failed":
        failed, message = True, f"unlinked claim {unlinked.message}; linked claim {message}"
    ratio_of, ratio = _ratio(game, h)
    notes = game.notes + _closing_notes(game, usable, can, max_eps, n_pos + n_neg, target)
    return AuditReport(target=target, game=can.game, canaries=len(can), canary_kind=can.kind,
                       distance=float(game.dist.median()), alpha=alpha, delta=game.delta,
                       formal_epsilon=game.formal_eps, formal_note=game.formal_note,
                       claim="mu-GDP" if game.gdp else "(eps, delta)", methods=game.results,
                       best=h.mu_method if game.gdp else h.eps_method, epsilon_lb=float(h.epsilon_lb),
                       epsilon_method=h.eps_method, epsilon_route=h.eps_route, ratio=ratio, ratio_of=ratio_of,
                       max_certifiable_epsilon=max_eps, check="failed" if failed else "passed", message=message,
                       seconds=float(seconds), formal_mu=game.formal_mu, mu_lb=h.mu_lb, mu_method=h.mu_method,
                       canary_formal_mu=game.canary_mu, max_certifiable_mu=max_mu if game.gdp else None,
                       releases=game.releases, strata=game.strata, notes=notes, unlinked=unlinked,
                       format=AUDIT_FORMAT)  # fmt: skip
