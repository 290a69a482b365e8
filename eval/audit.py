"""``collafuse-privacy audit``: canaries, the ordinary pipeline, and an empirical epsilon beside
the formal one (Jagielski et al. 2020; Nasr et al. 2021, 2023; Steinke, Nasr, Jagielski 2023).

The game. ``m`` canary slots are added to the clients' member sets (slot ``i`` to client
``i mod N``), each decided by an independent fair coin, and the run trains as usual:

* ``--target server`` (the server's view; its formal number is the release bound of
  ``metrics/privacy.json``): **replace-one**, the adjacency of that bound. Slot ``i`` holds a canary
  ``x_i`` or its partner ``x'_i``, chosen by the coin. Worst-case canaries (default) are at the
  largest L2 distance the pixel domain allows: ``x_i`` a random image of pixels +-1 and
  ``x'_i = -x_i``, ``||x - x'|| = 2 sqrt(d)``, the sensitivity the bound assumes; so the formal
  ``mu`` of a slot is the run's ``mu``, no adaptation needed. In-distribution canaries: two of the
  clients' held-out images per slot (the formal ``mu`` at their actual distance is then smaller,
  ``canary_formal_mu``).
* ``--target client:K`` (client ``K``'s released model under DP-SGD; its formal number is Opacus'
  epsilon): **add/remove**, Opacus' adjacency. Slot ``i`` holds ``x_i`` in client ``K``'s member set
  or not.

The attacks. Every membership method that sees only the server's view (``view-lrt``,
``view-composed``, ``loss`` ...) scores each slot: ``score(x) - score(x')`` (replace-one) or
``score(x)`` (add/remove). For the view the audit adds the **auditor's test** ``known-release``:
the Neyman-Pearson statistic of the slot's own releases, found through the ground truth's image ids
of the recorded rows, ``sum_j [log N(h_j; sqrt(a) x, (1-a) I) - log N(h_j; sqrt(a) x', (1-a) I)]``
(one term per distinct release). It is exactly the adversary the formal bound assumes (it knows
which releases are the candidate's), so its bound audits the implementation against its accounting:
a pipeline that sends more than it accounts for (less noise, ``eps`` beside ``h``, ...) pushes it
above the formal number. A real server has no such links and must find a canary's releases among
thousands: the view-only methods show what that costs.

The bounds (:mod:`.audit_stats`). Slots are split into a calibration half, where the threshold and
the best method are chosen, and an evaluation half, where the rates are counted. Each number names
its route:

* ``known-release`` scores each slot from its own releases only: the slots are independent trials,
  and the Clopper-Pearson routes hold: an ``epsilon`` bound (``(eps, delta)`` route) and, for a GDP
  claim, a ``mu`` bound (GDP route). The ``mu`` bound rules out GDP claims below it; it is not an
  epsilon and is never reported as one.
* The view-only methods and ``loss`` score every slot from one view or one model trained on all
  canaries: the trials are dependent, Clopper-Pearson does not apply, and Steinke et al.'s one-run
  bound (valid for dependent scores) is their epsilon.

For a GDP claim (the view) the headline is ``mu >= mu_lb`` against the formal ``mu``; for an
``(eps, delta)`` claim (Opacus) the best epsilon bound against Opacus' epsilon. The check fails
when a lower bound exceeds its formal number: with probability at most ``alpha`` for a correct
pipeline (for each of the two numbers).
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from collafuse_privacy.config import Config
from collafuse_privacy.data import Dataset, Splits
from collafuse_privacy.errors import UserError
from collafuse_privacy.io import load_tensors, save_tensors
from collafuse_privacy.numbers import fmt
from collafuse_privacy.rundir import (AUDIT_FORMAT, AuditBound, AuditMethod, AuditOneRun, AuditReleases, AuditReport,
                                      AuditStratum, RunDir)  # fmt: skip

from . import audit_stats as st
from .roc import auc as roc_auc

CANARY_KINDS = ("worst-case", "in-distribution")
LABEL_X, LABEL_ALT = 1, 0  # a replace-one canary's label: tied to its coin (Canaries.labels)
KNOWN_RELEASE = "known-release"
DEFAULT_CANARIES = 1000
VIEW_METHODS = ("view-lrt", "view-composed")
CLIENT_METHODS = ("loss",)
SERVER = "server"


def canaries_path(run_dir) -> Path:
    return Path(run_dir) / "audit" / "canaries.safetensors"


def audit_dir(run_dir, target: str = SERVER) -> Path:
    """Where the audit stage of a run (a sweep cell) trains its twin with canaries."""
    return Path(run_dir) / f"audit-{parse_audit_target(target).replace(':', '-')}"


# ---------------------------------------------------------------------------
# Canaries
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Canaries:
    """The slots of an audit (ground truth: never in the server's view).

    ``x`` ``[m, C, H, W]`` the canaries; ``alt`` their partners (replace-one) or None (add/remove);
    ``coin`` ``[m]`` bool: 1 = ``x`` was inserted; ``client`` ``[m]`` the client each slot belongs to;
    ``ids`` ``[m]`` the dataset id the inserted image has (-1 where nothing was inserted).
    """

    kind: str
    game: str  # "replace-one" | "add/remove"
    x: torch.Tensor
    alt: Optional[torch.Tensor]
    coin: torch.Tensor
    client: torch.Tensor
    ids: torch.Tensor
    seed: int = 0  # of the coins, the canaries and the calibration / evaluation halves
    labels_tied: bool = True  # False in canary files written before labels were tied to coins (labels 0)

    def __len__(self) -> int:
        return int(self.coin.shape[0])

    @property
    def labels(self) -> torch.Tensor:
        """The label each inserted slot's image carries ``[m]`` long: tied to the coin in the replace-one
        game (``x`` has label :data:`LABEL_X`, its partner :data:`LABEL_ALT`), so a view that carries labels
        (``model.server_conditioning = labels``) shows the coin through them, as the accounting must
        allow for; 0 in the add/remove game (presence is the coin there)."""
        if self.alt is None or not self.labels_tied:
            return torch.zeros(len(self), dtype=torch.long)
        return torch.where(self.coin, torch.tensor(LABEL_X), torch.tensor(LABEL_ALT)).long()

    @property
    def inserted(self) -> torch.Tensor:
        """The image each slot holds (``x`` or ``alt`` by the coin; ``x`` for add/remove)."""
        if self.alt is None:
            return self.x
        return torch.where(self.coin.view(-1, 1, 1, 1), self.x, self.alt)

    def save(self, path: Path) -> None:
        t = {"x": self.x, "coin": self.coin.to(torch.uint8), "client": self.client, "ids": self.ids}
        if self.alt is not None:
            t["alt"] = self.alt
        save_tensors(path, t, metadata={"kind": self.kind, "game": self.game, "seed": str(self.seed),
                                        "labels": "coin" if self.labels_tied else "zero"})  # fmt: skip

    @classmethod
    def load(cls, path: Path) -> "Canaries":
        from safetensors import safe_open

        t = load_tensors(path)
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        try:
            return cls(meta["kind"], meta["game"], t["x"].float(), t["alt"].float() if "alt" in t else None,
                       t["coin"].bool(), t["client"].long(), t["ids"].long(), int(meta["seed"]),
                       meta.get("labels", "zero") == "coin")  # fmt: skip
        except (KeyError, ValueError) as exc:
            raise UserError(f"{path} is not an audit's canary file (missing {exc})") from None


def make_canaries(data: Dataset, splits: Splits, m: int, kind: str, target: str, seed: int) -> Canaries:
    """``m`` slots for ``target`` (``"server"``: replace-one over all clients; ``"client:K"``:
    add/remove in client ``K``), coins and canaries from ``seed``."""
    if kind not in CANARY_KINDS:
        raise UserError(f"canary kind must be one of {', '.join(CANARY_KINDS)}, got {kind!r}")
    if m < 4:
        raise UserError(f"an audit needs at least 4 canaries, got {m}")
    g = torch.Generator().manual_seed(seed % (2**63 - 1))
    C, S, _ = data.shape
    n_clients = splits.num_clients
    replace = target == SERVER
    if replace:
        client = torch.arange(m) % n_clients
    else:
        k = int(target.split(":")[1])
        if not 0 <= k < n_clients:
            raise UserError(f"--target {target}: the run has clients 0..{n_clients - 1}")
        client = torch.full((m,), k, dtype=torch.long)
    coin = torch.rand(m, generator=g) < 0.5
    if kind == "worst-case":
        x = torch.randint(0, 2, (m, C, S, S), generator=g).float() * 2 - 1
        alt = -x if replace else None
    else:
        pool = torch.tensor(sorted(i for h in splits.holdout for i in h), dtype=torch.long)
        need = 2 * m if replace else m
        if len(pool) < need:
            raise UserError(f"in-distribution canaries: {need} held-out images needed for {m} slots, the run's "
                            f"clients hold {len(pool)} (fewer --canaries, or worst-case ones)")  # fmt: skip
        pick = pool[torch.randperm(len(pool), generator=g)[:need]]
        x = data.images[pick[:m]].float()
        alt = data.images[pick[m:]].float() if replace else None
    # the inserted images get new ids after the dataset's, in slot order (add/remove: inserted slots only)
    ins = torch.ones(m, dtype=torch.bool) if replace else coin
    ids = torch.full((m,), -1, dtype=torch.long)
    ids[ins] = len(data) + torch.arange(int(ins.sum()))
    return Canaries(kind, "replace-one" if replace else "add/remove", x, alt, coin, client, ids, seed)


def insert(data: Dataset, splits: Splits, can: Canaries) -> tuple[Dataset, Splits]:
    """The dataset with the inserted canaries appended and the slots added to their clients' members."""
    ins = can.ids >= 0
    imgs = torch.cat([data.images, can.inserted[ins].to(data.images.dtype)])
    labels = torch.cat([data.labels, can.labels[ins].to(data.labels.dtype)])
    clients = []
    for k, c in enumerate(splits.clients):
        extra = can.ids[ins & (can.client == k)].tolist()
        clients.append(dataclasses.replace(c, members=list(c.members) + extra))
    return (dataclasses.replace(data, images=imgs, labels=labels),
            dataclasses.replace(splits, clients=clients))  # fmt: skip


def with_canaries(run_dir, data: Dataset) -> Dataset:
    """``data`` as the audit run in ``run_dir`` trained on it (unchanged for an ordinary run): the
    one place the eval side rebuilds an audit run's dataset."""
    path = canaries_path(run_dir)
    if not path.is_file():
        return data
    can = Canaries.load(path)
    ins = can.ids >= 0
    return dataclasses.replace(data, images=torch.cat([data.images, can.inserted[ins].to(data.images.dtype)]),
                               labels=torch.cat([data.labels, can.labels[ins].to(data.labels.dtype)]))  # fmt: skip


def audit_resolved(cfg: Config, run_dir: Path, m: int, kind: str, target: str, secrets=None):
    """The resolved config of the audit run in ``run_dir``: the ordinary one, with the canaries
    (made once, then read back from ``audit/canaries.safetensors``) inserted."""
    from collafuse_privacy.client_secrets import mix
    from collafuse_privacy.resolve import resolve, resolve_cut

    from collafuse_privacy.resources import check_canary_memory

    base = resolve(cfg, run_dir, secrets)
    check_canary_memory(base.cfg, m, base.data.shape)  # before the canaries are made
    path = canaries_path(run_dir)
    if path.is_file():
        can = Canaries.load(path)
        want_game = "replace-one" if target == SERVER else "add/remove"
        if len(can) != m or can.kind != kind or can.game != want_game:
            raise UserError(f"{run_dir} is an audit with {len(can)} {can.kind} canaries ({can.game}); this asks for "
                            f"{m} {kind} ({want_game}): choose another --out")  # fmt: skip
    else:
        can = make_canaries(base.data, base.splits, m, kind, target, mix("audit canaries", base.secrets.root))
    data, splits = insert(base.data, base.splits, can)
    choice = base.cut_choice
    cfg2 = base.cfg
    if cfg.protocol.target_epsilon is not None:  # more members: the releases per image may change
        cfg2, choice = resolve_cut(base.cfg, data, splits, run_dir)
    return dataclasses.replace(base, cfg=cfg2, data=data, splits=splits, cut_choice=choice), can


# ---------------------------------------------------------------------------
# Scores
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
    slot_of = {int(i): s for s, i in enumerate(can.ids.tolist()) if i >= 0}
    rows_by_slot: dict[int, list[int]] = {}
    for r, i in enumerate(row_ids.tolist()):
        s = slot_of.get(int(i))
        if s is not None:
            rows_by_slot.setdefault(s, []).append(r)
    X, A = can.x.double().flatten(1), can.alt.double().flatten(1)
    for s, rows in rows_by_slot.items():
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
    from collafuse_privacy.attacks.membership import make

    attack = make(name, target=target, device=device, **(options or {})).fit(view)
    client = None if target == SERVER else int(target.split(":")[1])

    def score(x):
        return np.asarray(attack.score(view, x, client=client), dtype=np.float64)

    s = score(can.x)
    return s - score(can.alt) if can.alt is not None else s


# ---------------------------------------------------------------------------
# Bounds
# ---------------------------------------------------------------------------


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
# The audit
# ---------------------------------------------------------------------------


def run_audit(cfg: Config, run_dir, *, canaries: int = DEFAULT_CANARIES, kind: str = "worst-case",
              target: str = SERVER, methods: Optional[Sequence[str]] = None, options: Optional[dict] = None,
              one_run: bool = False, alpha: float = 0.05, device: str = "cpu", quiet: bool = True,
              log: Callable[[str], None] = print, secrets=None) -> AuditReport:  # fmt: skip
    """Train the audit run in ``run_dir`` (or resume it), attack its canaries, write ``metrics/audit.json``.

    ``secrets``: the clients' secrets (a sweep cell's, so its twin has the same split); default new ones.
    """
    from collafuse_privacy.lock import locked
    from collafuse_privacy.party import resolve_device
    from collafuse_privacy.training import Session, Trainer

    run_dir = Path(run_dir)
    target = parse_audit_target(target)
    if not 0 < alpha < 1:
        raise UserError(f"alpha must lie in (0, 1), got {alpha}")
    if target != SERVER and not cfg.defense.client_dp.enabled:
        raise UserError(f"--target {target}: the client audit needs DP-SGD clients (defense.client_dp.enabled: true); "
                        "without them client models have no formal epsilon to audit")  # fmt: skip
    check_audit_methods(methods, options, target)  # every input checked before the twin trains
    if (run_dir / "config.yaml").is_file() and (run_dir / "checkpoints").is_dir() and not canaries_path(run_dir).is_file():
        raise UserError(f"--out {run_dir} holds an ordinary run, not an audit (it has no audit/canaries.safetensors): "
                        "choose another --out")  # fmt: skip
    t0 = time.perf_counter()
    with locked(run_dir):
        resolved, can = audit_resolved(cfg, run_dir, canaries, kind, target, secrets)
        trainer = Trainer(Session(resolved, run_dir, resolve_device(device), quiet=quiet))
        if not canaries_path(run_dir).is_file():
            can.save(canaries_path(run_dir))
        if trainer.step < resolved.cfg.train.steps:
            log(f"audit: training with {len(can)} {kind} canaries ({can.game}) in {run_dir}")
        trainer.train()
        report = score_audit(run_dir, can, methods=methods, options=options, one_run=one_run, alpha=alpha,
                             device=str(trainer.device), target=target, seconds=time.perf_counter() - t0, log=log)  # fmt: skip
        RunDir(run_dir).write_metrics("audit", report)
    return report


def check_audit_methods(methods: Optional[Sequence[str]], options: Optional[dict], target: str = SERVER) -> dict:
    """The membership methods and options of an audit, checked (names, types, ranges) before it trains."""
    from collafuse_privacy.attacks.base import check_family_options
    from collafuse_privacy.attacks.membership import FAMILY

    names = [n for n in (methods or []) if n != KNOWN_RELEASE]
    if methods is not None and not isinstance(methods, (list, tuple)):
        raise UserError(f"audit methods must be a list of names, got {methods!r}")
    FAMILY.resolve(names)
    return check_family_options(FAMILY, dict(options or {}), names)


def parse_audit_target(target: str) -> str:
    t = str(target).strip()
    if t == SERVER:
        return t
    if t.startswith("client:") and t.split(":", 1)[1].isdigit():
        return t
    raise UserError(f"audit target must be 'server' or 'client:K', got {target!r}")


def score_audit(run_dir, can: Canaries, *, methods=None, options=None, one_run=False, alpha=0.05,
                device="cpu", target=SERVER, seconds=0.0, log=print) -> AuditReport:  # fmt: skip
    """The bounds of a trained audit run (see the module docstring)."""
    from collafuse_privacy.attacks.base import NotApplicable
    from collafuse_privacy.view import ServerView

    from .ground_truth import message_image_ids

    rd = RunDir(run_dir)
    privacy = rd.metrics("privacy")
    if privacy is None:
        raise UserError(f"{run_dir} has no metrics/privacy.json; train first")
    coin = can.coin.numpy().astype(bool)
    cal, ev = st.halves(len(can), can.seed)
    notes: list[str] = []
    results: dict[str, AuditMethod] = {}
    releases = None
    strata: list = []
    if target == SERVER:
        gdp = True
        view_p = privacy.view
        formal_eps, formal_mu, delta = view_p.epsilon, view_p.mu, view_p.delta
        formal_note = (f"the run's release bound (replace-one at L2 distance {view_p.sensitivity_l2:.4g}, "
                       f"{view_p.releases_per_image} release(s) per image): the audit's game is the same replace-one "
                       "game, so the formal number applies unchanged")  # fmt: skip
        view = ServerView.load(run_dir)
        ids = message_image_ids(run_dir, len(view))
        kr, n_rel = known_release_scores(view, ids, can)
        releases = AuditReleases(int(n_rel.min()), float(np.median(n_rel)), int(n_rel.max()), int((n_rel == 0).sum()))
        if releases.none:
            notes.append(f"{releases.none} of {len(can)} canaries never crossed the cut (no recorded release): "
                         "their coins cannot be seen, which weakens every bound")  # fmt: skip
        rec = view.record
        if rec is not None and getattr(rec, "received", 0) > getattr(rec, "recorded", 0):
            notes.append(f"the view recorded {rec.recorded} of {rec.received} rows: unrecorded releases are "
                         "invisible to the audit (record.max_items)")  # fmt: skip
        res = method_bounds(kr, coin, cal, ev, delta, alpha, True, one_run,
                            "auditor: ground-truth links of the canaries' own releases",
                            "sum over the slot's releases of log N(h; sqrt(a) x, 1-a) - log N(h; sqrt(a) x', 1-a)",
                            independent=True)  # each slot's score depends on its own releases' noise only  # fmt: skip
        results[KNOWN_RELEASE] = res
        dist = (can.x - can.alt).flatten(1).norm(dim=1)
        per = [view.protocol.release_mu(view.image_shape, int(r), float(d)) for r, d in zip(n_rel, dist)]
        canary_mu = float(max(per)) if per else 0.0
        if len(set(n_rel[n_rel > 0].tolist())) > 1:  # fresh noise: counts vary, and with them the formal mu
            strata = [AuditStratum(**dataclasses.asdict(x))
                      for x in st.stratified_mu(kr, coin, cal, ev, n_rel, per, delta, alpha)]  # fmt: skip
        names = list(VIEW_METHODS if methods is None else methods)
        release_clients: tuple = ()
    else:
        gdp = False
        k = int(target.split(":")[1])
        dp = privacy.client_dp
        entry = next((c for c in dp.clients if c.client == k), None)
        if not dp.enabled or entry is None:
            raise UserError(f"{run_dir}: client {k} trained without DP-SGD: no formal epsilon to audit")
        formal_eps, formal_mu, delta = entry.epsilon, None, dp.delta
        formal_note = ("Opacus' epsilon of client %d (add/remove, Poisson sampling): the audit's game is add/remove of "
                       "one canary, the same adjacency, so the formal number applies unchanged" % k)  # fmt: skip
        canary_mu = None
        dist = can.x.flatten(1).norm(dim=1)
        names = list(CLIENT_METHODS if methods is None else methods)
        release_clients = (k,)
        view = ServerView.load(run_dir, release_clients=release_clients)
        notes.append("a black-box, last-iterate audit of DP-SGD: the attacker sees only the final model's denoising "
                     "loss on the canaries, not the gradients of each step; such audits are known to sit far below "
                     "the formal epsilon (Nasr et al. 2021: even with crafted inputs, a last-iterate black-box "
                     "adversary is much weaker than the worst case DP-SGD's accounting must cover; Nasr et al. 2023 "
                     "need gradient canaries and every iterate to be tight). A bound near 0 here shows that this "
                     "attack finds little, not that the client is safer than its epsilon says")  # fmt: skip
    for name in [n for n in names if n != KNOWN_RELEASE]:
        try:
            s = attack_scores(view, name, can, device, (options or {}).get(name, {}), target)
        except NotApplicable as exc:
            results[name] = AuditMethod(sees="server view", statistic="", reason=str(exc))
            continue
        if len(s) and np.isnan(s).all():  # no result, and said so (a diverged model, degenerate options)
            results[name] = AuditMethod(sees="server view", statistic="", reason=f"all {len(s)} slot scores are NaN")
            log(f"audit: {name}: all {len(s)} slot scores are NaN: no result")
            continue
        sees = "server view" if target == SERVER else f"server view + client {target.split(':')[1]}'s released model"
        stat = "score(x) - score(x')" if can.alt is not None else "score(x)"
        results[name] = method_bounds(s, coin, cal, ev, delta, alpha, gdp, one_run, sees, f"{name}: {stat}")
        log(f"audit: {name} done")
    usable = {n: r for n, r in results.items() if r.reason is None}
    # best-of choices on the calibration slots; the chosen method's bound is the one on the evaluation slots
    with_eps = {n: r for n, r in usable.items() if r.epsilon_lb is not None and r.calibration_epsilon is not None}
    eps_method = max(with_eps, key=lambda n: with_eps[n].calibration_epsilon) if with_eps else None
    lb = with_eps[eps_method].epsilon_lb if eps_method else 0.0
    eps_route = with_eps[eps_method].epsilon_route if eps_method else None
    with_mu = {n: r for n, r in usable.items() if r.mu is not None and r.calibration_mu is not None}
    mu_method = max(with_mu, key=lambda n: with_mu[n].calibration_mu) if (gdp and with_mu) else None
    mu_lb = with_mu[mu_method].mu.value if mu_method else None
    n_pos, n_neg = int(coin[ev].sum()), int((~coin[ev]).sum())
    max_eps, max_mu = st.max_certifiable(n_pos, n_neg, delta, alpha)
    if gdp:
        ratio_of, best = "mu", mu_method
        ratio = (mu_lb / formal_mu) if (mu_lb is not None and formal_mu and math.isfinite(formal_mu)) else None
    else:
        ratio_of, best = "epsilon", eps_method
        ratio = (lb / formal_eps) if (formal_eps and math.isfinite(formal_eps) and formal_eps > 0) else None
    tol = 1e-9
    eps_over = lb > formal_eps * (1 + tol) + tol
    mu_over = mu_lb is not None and formal_mu is not None and mu_lb > formal_mu * (1 + tol) + tol
    strata_over = [x for x in strata if x.mu_lb is not None and x.mu_lb > x.formal_mu * (1 + tol) + tol]
    failed = eps_over or mu_over or bool(strata_over)
    conf = f"{100 * (1 - alpha):g}%"
    eps_txt = f"epsilon >= {lb:.4g} ({eps_route or 'no route'}, {eps_method or 'no method'})"
    mu_txt = f"mu >= {mu_lb:.4g} (GDP route, {mu_method})" if mu_lb is not None else None
    if failed:
        over = [t for t, o in ((f"{mu_txt} exceeds the formal mu {formal_mu:.4g}" if mu_txt else "", mu_over),
                               (f"{eps_txt} exceeds the formal epsilon {formal_eps:.4g}", eps_over)) if o]
        over += [f"mu >= {x.mu_lb:.4g} over the {x.slots} slots released {x.releases} time(s) exceeds their formal mu "
                 f"{x.formal_mu:.4g}" for x in strata_over]  # fmt: skip
        message = (f"FAILED: the empirical lower bound {' and '.join(over)} of this run ({conf} confidence): the "
                   f"pipeline discloses more than its accounting says (or a {100 * alpha:g}% chance event)")  # fmt: skip
    else:
        parts = ([f"{mu_txt} <= formal mu {formal_mu:.4g}"] if mu_txt and formal_mu is not None else []) \
            + [f"{eps_txt} <= formal epsilon {formal_eps:.4g}"]
        message = (f"passed ({conf}): " + "; ".join(parts)
                   + (f"; ratio of {ratio_of} {ratio:.2f}" if ratio is not None else ""))  # fmt: skip
    if math.isfinite(formal_eps) and formal_eps > max_eps:
        notes.append(f"{len(can)} canaries certify at most epsilon {max_eps:.3g} (a perfect attack on "
                     f"{n_pos + n_neg} evaluation slots, Clopper-Pearson): the formal {formal_eps:.3g} cannot be "
                     "shown tight with these canaries; add canaries")  # fmt: skip
    if not math.isfinite(formal_eps):
        notes.append("the formal epsilon is infinite (the view reveals the images): the audit can only confirm that")
    if strata:
        notes.append(f"fresh noise: the canaries were released {releases.min} to {releases.max} times; the pooled bound "
                     "mixes their trade-off curves, so the known-release test is also bounded per release count against "
                     "the formal mu at that count (strata, a union bound over them)")  # fmt: skip
    dependent = sorted(n for n, r in usable.items() if not r.independent)
    if dependent:
        notes.append(f"{', '.join(dependent)}: one {'view' if target == SERVER else 'model'} scores every slot, so "
                     "the slots are not independent trials: only the one-run bound (Steinke et al. 2023) is valid "
                     "for them, and only it is reported")  # fmt: skip
    if gdp:
        notes.append("mu is the GDP route's bound: it rules out every mu-GDP claim below it, and it is not an "
                     "epsilon (a non-Gaussian mechanism can give a large mu bound at a small epsilon); epsilon "
                     "bounds come from the assumption-free routes only")  # fmt: skip
    return AuditReport(target=target, game=can.game, canaries=len(can), canary_kind=can.kind,
                       distance=float(dist.median()), alpha=alpha, delta=delta, formal_epsilon=formal_eps,
                       formal_note=formal_note, claim="mu-GDP" if gdp else "(eps, delta)", methods=results,
                       best=best, epsilon_lb=float(lb), epsilon_method=eps_method, epsilon_route=eps_route,
                       ratio=ratio, ratio_of=ratio_of, max_certifiable_epsilon=max_eps,
                       check="failed" if failed else "passed", message=message, seconds=float(seconds),
                       formal_mu=formal_mu, mu_lb=mu_lb, mu_method=mu_method, canary_formal_mu=canary_mu,
                       max_certifiable_mu=max_mu if gdp else None, releases=releases, strata=strata, notes=notes,
                       format=AUDIT_FORMAT)  # fmt: skip


def format_audit(r: AuditReport) -> str:
    """The audit as text (the CLI's output)."""
    head = f"  formal epsilon {fmt(r.formal_epsilon, '.4g')}" + (f", mu {fmt(r.formal_mu, '.4g')}" if r.formal_mu is not None else "")
    head += f"; epsilon >= {fmt(r.epsilon_lb, '.4g')} ({r.epsilon_route or 'no route'}, {r.epsilon_method or 'no method'})"
    if r.mu_lb is not None:
        head += f"; mu >= {fmt(r.mu_lb, '.4g')} (GDP route, {r.mu_method})"
    head += (f"; ratio of {r.ratio_of} {r.ratio:.2f}" if r.ratio is not None else "")
    head += f"; {r.canaries} canaries certify at most epsilon {fmt(r.max_certifiable_epsilon, '.3g')}"
    lines = [f"audit of the {'server view' if r.target == SERVER else r.target.replace(':', ' ') + ' model'}: "
             f"{r.canaries} {r.canary_kind} canaries, {r.game}, delta={r.delta:g}, claim {r.claim}", head,
             f"  {'method':16} {'sees':8} {'trials':11} {'AUC':>6} {'eps (CP)':>9} {'mu (GDP)':>9} {'one-run':>8}"]  # fmt: skip
    for n, m in r.methods.items():
        if m.reason:
            lines.append(f"  {n:16} not applicable: {m.reason}")
            continue
        mark = "  <- headline (chosen on the calibration half)" if n == r.best else (
            "  <- epsilon (chosen on the calibration half)" if n == r.epsilon_method else "")
        lines.append(f"  {n:16} {'auditor' if m.sees.startswith('auditor') else 'view':8} "
                     f"{'independent' if m.independent else 'dependent':11} {fmt(m.auc, '.3f'):>6} "
                     f"{fmt(m.epsilon.value if m.epsilon else None, '.3g'):>9} {fmt(m.mu.value if m.mu else None, '.3g'):>9} "
                     f"{fmt(m.one_run.epsilon if m.one_run else None, '.3g'):>8}" + mark)  # fmt: skip
    for x in r.strata:
        lines.append(f"  released {x.releases}x: {x.slots} slots, mu >= {fmt(x.mu_lb, '.3g')} (known-release, confidence "
                     f"1 - {x.alpha:.3g}) against their formal mu {x.formal_mu:.4g}")  # fmt: skip
    lines.append(f"  check: {r.message}")
    lines += [f"  note: {n}" for n in r.notes]
    return "\n".join(lines)


def gaussian_release_audit(mu: float, m: int, d: int = 64, seed: int = 0, alpha: float = 0.05,
                           delta: float = 1e-5, bound=None) -> tuple[float, float]:  # fmt: skip
    """The release mechanism alone, audited (no training): ``m`` worst-case canary slots in ``d``
    pixels, each released once through ``cut-image``'s hand-over at the level whose formal ``mu`` is
    ``mu``, scored by the auditor's known-release statistic (independent slots). Returns ``(mu lower
    bound, Clopper-Pearson epsilon lower bound)``. ``bound(scores, coins, cal, ev, kind, delta, alpha)``
    replaces :func:`audit_stats.threshold_bound` (a test gives a miscalibrated one to show its power)."""
    bound = bound or st.threshold_bound
    D = 2 * math.sqrt(d)
    a = (mu / D) ** 2 / (1 + (mu / D) ** 2)  # sqrt(a / (1 - a)) D = mu
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 2, (m, d), generator=g).double() * 2 - 1
    coin = torch.rand(m, generator=g) < 0.5
    x_in = torch.where(coin.unsqueeze(1), x, -x)
    h = math.sqrt(a) * x_in + math.sqrt(1 - a) * torch.randn(m, d, generator=g, dtype=torch.float64)
    s = ((math.sqrt(a) / (1 - a)) * (h * (2 * x)).sum(1)).numpy()  # log N(h; sqrt(a) x) - log N(h; -sqrt(a) x)
    cal, ev = st.halves(m, seed)
    return (bound(s, coin.numpy(), cal, ev, "mu", delta, alpha).value,
            bound(s, coin.numpy(), cal, ev, "eps", delta, alpha).value)


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use `collafuse-privacy audit`")
