"""``collafuse-privacy attack --type membership``: run membership attacks, score them.

The attacks (``collafuse_privacy.attacks.membership``) see only the server view;
here, and only here, the ground truth is read: ``splits.json`` (which images are
a client's members and held-out images) and ``ground_truth/train`` (the image id
of each recorded release, to count releases per image for the GDP bound).

Candidates: for each client a balanced, seeded sample of ``n_k = min(cap,
|members_k|, |held-out_k|)`` members and as many of its held-out images (same
distribution, never trained on). Each candidate is scored with its own client id
(the server knows who sent what). Headline numbers pool all clients; per-client
AUCs are recorded too.

Formal bound beside the empirical ROC (cut-image, DESIGN.md §4): the GDP
trade-off ``TPR = Phi(Phi^-1(FPR) + mu)`` with

* ``mu_worst``: sensitivity ``2 sqrt(d)``, releases = 1 with ``fixed_noise``, else
  the largest number of recorded releases of any one image;
* ``mu_actual``: sensitivity = the actual distance from a member to its nearest
  non-member (nearest image among the public split and all clients' held-out
  images); the **max over the sampled members** is drawn (the most exposed
  member), the median is recorded too. This is a heuristic, not a guarantee.

Writes ``metrics/membership.json`` (a dict keyed by target, each run updating
only its key), ``metrics/membership_scores[-client{K}].npz`` (raw scores per
method, labels, client ids, image ids) and ``figures/membership_roc[-client{K}].png``.

This module samples the candidates and runs the attacks (through :mod:`.harness`);
:mod:`.membership_report` holds the GDP section, the strongest-method choice, the ROC figure
and the text table.
"""

from __future__ import annotations

import dataclasses
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from collafuse_privacy.attacks.membership import FAMILY, make, parse_target
from collafuse_privacy.checkpoint import sha256
from collafuse_privacy.data import Splits
from collafuse_privacy.defenses.accounting import gdp_tpr
from collafuse_privacy.errors import UserError
from collafuse_privacy.io import atomic_write_bytes
from collafuse_privacy.lock import locks_run
from collafuse_privacy.numbers import to_json
from collafuse_privacy.party import resolve_device
from collafuse_privacy.run.directory import RunDir
from collafuse_privacy.run.layout import membership_roc, membership_scores
from collafuse_privacy.run.schemas import GDPSection, MembershipMethod, MembershipReport, MembershipResult
from collafuse_privacy.typed import Schema, from_data, to_data
from collafuse_privacy.view import ServerView

from .ground_truth import load_ground_truth, message_image_ids  # noqa: F401  (load_ground_truth: re-exported)
from .harness import ScoredRun, attempts, checked_methods
from .membership_report import (best_method, format_membership, gdp_section, nearest_nonmember_distance,  # noqa: F401
                                plot_roc, trained_releases)  # fmt: skip
from .roc import auc as roc_auc
from .roc import FPR_TARGETS, MIN_FALSE_POSITIVES, membership_metrics, roc_curve, tpr_band, unresolved_tpr
from .stats import bootstrap

DEFAULT_CAP = 200  # members and as many held-out images per client


# ---------------------------------------------------------------------------
# ground truth (evaluation only)
# ---------------------------------------------------------------------------


def recorded_image_ids(run_dir: str | Path) -> np.ndarray:
    """Image id of every recorded release (``ground_truth/train``), in view order."""
    return message_image_ids(run_dir).numpy()


def sample_candidates(splits: Splits, images: torch.Tensor, clients: Sequence[int], cap: int = DEFAULT_CAP,
                      seed: int = 0) -> dict:  # fmt: skip
    """Balanced seeded sample per client: ``images`` [M, C, H, W], ``labels`` [M] (1 = member),
    ``client`` [M], ``image_id`` [M], and ``per_client`` counts."""
    ids, labels, owner, counts = [], [], [], {}
    for k in clients:
        rng = np.random.default_rng([seed, 0xC0DE, k])
        mem, hold = np.asarray(splits.members[k]), np.asarray(splits.holdout[k])
        n = min(cap, len(mem), len(hold))
        counts[int(k)] = n
        ids += [np.sort(rng.choice(mem, n, replace=False)), np.sort(rng.choice(hold, n, replace=False))]
        labels += [np.ones(n, np.int64), np.zeros(n, np.int64)]
        owner += [np.full(2 * n, k, np.int64)]
    ids_a = np.concatenate(ids) if ids else np.zeros(0, np.int64)
    return {
        "images": images[torch.from_numpy(ids_a)],
        "labels": np.concatenate(labels) if labels else np.zeros(0, np.int64),
        "client": np.concatenate(owner) if owner else np.zeros(0, np.int64),
        "image_id": ids_a,
        "per_client": counts,
    }


# ---------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------


def _suffix(target: str) -> str:
    kind, k = parse_target(target)
    return "" if kind == "server" else f"-client{k}"


@dataclass
class _Scored:
    """Per method: its ``metrics/membership.json`` entry, and where it has scores, them and its ROC
    curve ``(fpr, tpr, auc)``."""

    entries: dict[str, dict] = field(default_factory=dict)
    scores: dict[str, np.ndarray] = field(default_factory=dict)
    curves: dict[str, tuple] = field(default_factory=dict)

    def add(self, name: str, entry: dict, s: Optional[np.ndarray] = None, auc: Optional[float] = None,
            labels: Optional[np.ndarray] = None) -> None:  # fmt: skip
        self.entries[name] = entry
        if s is not None:
            self.scores[name] = s
            fpr, tpr, _ = roc_curve(s, labels)
            self.curves[name] = (fpr, tpr, auc)

    def in_registry_order(self) -> None:
        """Methods in the family's registration order, whichever ran when."""
        order = [n for n in FAMILY.names() if n in self.entries]
        self.entries = {n: self.entries[n] for n in order}
        self.scores = {n: self.scores[n] for n in order if n in self.scores}
        self.curves = {n: self.curves[n] for n in order if n in self.curves}


@locks_run
def run_membership(
    run_dir: str | Path,
    methods: Optional[Sequence[str]] = None,
    target: str = "server",
    device: str = "cpu",
    log: Callable[[str], None] = print,
    cap: int = DEFAULT_CAP,
    n_boot: int = 1000,
    seed: int = 0,
    options: Optional[dict[str, dict]] = None,
) -> MembershipResult:
    """Run membership attacks on ``run_dir`` against ``target`` and score them.

    ``methods``: registered names (default: all); ``target``: ``"server"`` or ``"client:K"``
    (client K's model released); ``cap``: members (and as many held-out images) per
    client; ``options``: per-method constructor keywords. Returns the target's entry
    of ``metrics/membership.json``.
    """
    run = ScoredRun(run_dir)
    kind, tk = parse_target(target)  # UserError on a malformed target
    names, options = checked_methods(FAMILY, methods, options, cap)  # UserError listing the known names
    cfg, splits, ds = run.ground_truth()
    if kind == "client" and not 0 <= tk < splits.num_clients:
        raise UserError(f"--target client:{tk}: the run has clients 0..{splits.num_clients - 1}")
    dev = str(resolve_device(device))  # UserError for cuda without a GPU
    # the view is verified (manifest, checkpoint, config) before anything is written
    if kind == "client" and cfg.t_c == 0:
        view = run.view()  # no client model was ever trained: attacks say NotApplicable
    else:
        view = run.view(release_clients=(tk,) if kind == "client" else ())
    run.check_writable()  # before any computation: a read-only run fails now, naming the folder
    clients = [tk] if kind == "client" else list(range(splits.num_clients))
    cand = sample_candidates(splits, ds.images, clients, cap=cap, seed=seed)
    labels = cand["labels"]
    if labels.sum() == 0:
        raise UserError(f"{run.path}: no client has both members and held-out images to compare "
                        "(data.holdout_fraction = 0?); membership cannot be scored")  # fmt: skip
    log(f"membership [{target}]: {int(labels.sum())} members + {int((1 - labels).sum())} held-out candidates "
        f"over {len(clients)} client(s); protocol {view.protocol.name}, c = {cfg.protocol.cut_ratio:g}, t_c = {view.t_c}")
    scored = _attack(view, names, options, target, dev, cand, clients, n_boot, seed, log)
    for name, (entry, s) in _earlier_methods(run.rd, target, names, cand, cap, seed, log).items():
        auc = None if s is None else (entry["auc"]["value"] if entry.get("auc") else roc_auc(s, labels))
        scored.add(name, entry, s, auc, labels)
    scored.in_registry_order()
    gdp, gdp_note = None, None
    if kind == "server" and view.protocol.aggregates:  # no GDP route for uploaded models
        gdp_note = ("fedavg: the server's view is uploaded models, which no GDP accounting covers; with DP-SGD "
                    "clients privacy.json bounds it by their DP-SGD epsilon")  # fmt: skip
    elif kind == "server":  # the formal bound covers the releases, not a client's model
        gdp = _formal_bound(run, view, cand, scored, n_boot, seed)
    else:
        gdp_note = ("fedavg: the server holds this client's uploads; with DP-SGD clients privacy.json bounds them by "
                    "the client's DP-SGD epsilon (no GDP accounting)" if view.protocol.aggregates else
                    "the GDP accounting covers the releases the server received, not a released client model")
    return _write(run, target, view, cfg, cand, scored, gdp, gdp_note, cap, n_boot, seed, log)


def _attack(view: ServerView, names: list[str], options: dict, target: str, dev: str, cand: dict, clients: list[int],
            n_boot: int, seed: int, log: Callable[[str], None]) -> _Scored:  # fmt: skip
    """Fit each method on the view and score every candidate with its own client id."""
    labels, owner = cand["labels"], cand["client"]

    def score(name: str):
        attack = make(name, target=target, device=dev, **options.get(name, {}))
        attack.fit(view)
        s = np.empty(len(labels), dtype=np.float64)
        for k in clients:
            sel = owner == k
            s[sel] = attack.score(view, cand["images"][torch.from_numpy(sel)], client=k).double().numpy()
        return attack, s

    scored = _Scored()
    for a in attempts(names, score, log, indent="  "):
        if not a.applicable:
            scored.add(a.name, {"applicable": False, "reason": a.reason, "seconds": a.seconds})
            continue
        entry, s, auc = _scored_entry(a.name, *a.output, a.seconds, cand, clients, n_boot, seed, log)
        scored.add(a.name, entry, s, auc, labels)
    return scored


def _scored_entry(name: str, attack, s: np.ndarray, seconds: float, cand: dict, clients: list[int], n_boot: int,
                  seed: int, log: Callable[[str], None]) -> tuple[dict, Optional[np.ndarray], Optional[float]]:  # fmt: skip
    """``(entry, scores, AUC)`` of one method's candidate scores; scores None when there is no result."""
    labels, owner = cand["labels"], cand["client"]
    n_nan = int(np.isnan(s).sum())
    if len(s) and n_nan == len(s):  # nothing was scored: no result, and said so (never an AUC of 0.5)
        why = f"all {n_nan} scores are NaN (a diverged model, or options that leave nothing to score): no result"
        log(f"  {name}: {why}")
        return {"applicable": False, "reason": why, "seconds": seconds, "nan_scores": n_nan}, None, None
    if n_nan:  # e.g. a diverged model: scored as "surely not a member", and said so
        log(f"  {name}: {n_nan} of {len(s)} scores are NaN; they count as the lowest score")
        s = np.where(np.isnan(s), -np.inf, s)
    m, unresolved = membership_metrics(s, labels, n_boot=n_boot, seed=seed)
    entry = {"applicable": True, **{k: (v.to_dict() if v is not None else None) for k, v in m.items()},
             "unresolved": unresolved, "seconds": seconds, "settings": to_json(attack.describe()),
             "nan_scores": n_nan, "unresolved_intervals": {k: to_json(unresolved_tpr(s, labels, FPR_TARGETS[k]))
                                                           for k in unresolved if k in FPR_TARGETS}}  # fmt: skip
    if len(clients) > 1:
        entry["per_client_auc"] = {
            str(k): bootstrap(roc_auc, s[owner == k], labels[owner == k], n_boot=min(n_boot, 200), seed=seed,
                              strata=labels[owner == k]).to_dict()
            for k in clients if cand["per_client"][k] > 0
        }  # fmt: skip
    log(f"  {name}: AUC {m['auc']}, TPR@1%FPR {m['tpr_at_1pct_fpr'] or unresolved.get('tpr_at_1pct_fpr')} "
        f"({seconds:.1f} s)")
    return entry, s, m["auc"].value


def _formal_bound(run: ScoredRun, view: ServerView, cand: dict, scored: _Scored, n_boot: int, seed: int) -> GDPSection:
    """The GDP section of the server's view, and per method whether its ROC band rises above the
    worst-case bound anywhere (``exceeds_worst_case_gdp_bound``)."""
    _, splits, ds = run.ground_truth()
    labels = cand["labels"]
    members = cand["images"][torch.from_numpy(labels == 1)]
    pool_ids = sorted(set(splits.public) | {i for h in splits.holdout for i in h})
    dist = nearest_nonmember_distance(members, ds.images[torch.tensor(pool_ids, dtype=torch.long)]) if pool_ids else np.zeros(0)
    gdp = gdp_section(view, recorded_image_ids(run.path), dist, trained_releases(run.path))
    grid = np.logspace(math.log10(max(1.0 / max(int((1 - labels).sum()), 1), 1e-4)), 0, 40)
    for name, s in scored.scores.items():
        _, lo, _ = tpr_band(s, labels, grid, n_boot=min(n_boot, 300), seed=seed)
        bound = gdp_tpr(grid, gdp.mu_worst)
        scored.entries[name]["exceeds_worst_case_gdp_bound"] = bool(np.any(lo > bound + 1e-12))
    return gdp


def _write(run: ScoredRun, target: str, view: ServerView, cfg, cand: dict, scored: _Scored, gdp: Optional[GDPSection],
           gdp_note: Optional[str], cap: int, n_boot: int, seed: int, log: Callable[[str], None]) -> MembershipResult:  # fmt: skip
    """Write the scores and the ROC figure, then ``metrics/membership.json`` naming them (this
    target's entry replaced, the others kept)."""
    labels, suffix = cand["labels"], _suffix(target)
    n_non = int((1 - labels).sum())
    scores_rel, fig_rel = membership_scores(suffix), membership_roc(suffix)
    buf = io.BytesIO()
    np.savez(buf, labels=labels, client=cand["client"], image_id=cand["image_id"],
             methods=np.array(list(scored.scores), dtype=str), **{f"score_{k}": v for k, v in scored.scores.items()})  # fmt: skip
    atomic_write_bytes(run.path / scores_rel, buf.getvalue())
    result = MembershipResult(
        protocol=view.protocol.name, cut_ratio=cfg.protocol.cut_ratio, t_c=view.t_c, timesteps=view.timesteps,
        fixed_noise=bool(cfg.protocol.fixed_noise), n_members=int(labels.sum()), n_nonmembers=n_non,
        methods={k: _method(v) for k, v in scored.entries.items()},
        caps={"members_per_client": cap, "nonmembers_per_client": cap,
              "per_client": {str(k): v for k, v in cand["per_client"].items()}, "seed": seed},
        min_resolvable_fpr=(MIN_FALSE_POSITIVES / n_non) if n_non else None,
        tpr_interpolation="linear between ROC vertices (top of vertical segments); TPR at an FPR f with fewer "
                          "than 10/f non-members is not reported (not resolvable; Clopper-Pearson intervals of TPR "
                          "and FPR instead, unresolved_intervals)",
        n_boot=n_boot, gdp=gdp, gdp_note=gdp_note, best=best_method(scored.scores, labels, n_boot, seed),
        record=view.record, scores=scores_rel, figure=fig_rel)  # fmt: skip
    if view.record is not None and view.record.not_recorded and gdp is not None:  # gdp: the server target
        log(f"  note: the server received {view.record.received} rows, {view.record.not_recorded} of them were not "
            f"recorded (record.max_items={view.record.max_items}); attacks saw {view.record.recorded}")
    plot_roc(run.path / fig_rel, scored.curves, result, target, n_non)
    # membership.json comes last and names the sha256 of its scores and figure: files of an
    # interrupted rerun beside it are recognised as not its own
    result = dataclasses.replace(result, files=run.digests((scores_rel, fig_rel)))
    try:
        old = run.rd.metrics("membership")
    except UserError as exc:
        log(f"  {exc}: its other targets are dropped")
        old = None
    targets = dict(old.targets) if old is not None else {}
    targets[target] = result
    run.write("membership", MembershipReport(targets=targets))
    return result


def _earlier_methods(rd: RunDir, target: str, names: list[str], cand: dict, cap: int, seed: int,
                    log: Callable[[str], None]) -> dict[str, tuple[dict, Optional[np.ndarray]]]:  # fmt: skip
    """Results of methods run earlier on ``target`` and not rerun now, kept when they were scored on
    the same candidates (their scores file intact): ``{name: (entry, scores or None)}``. Otherwise
    the caller replaces them, and this says so."""
    try:
        old = rd.metrics("membership")
    except UserError:
        return {}
    prev = old.targets.get(target) if old is not None else None
    others = [n for n in (prev.methods if prev is not None else {}) if n not in names]
    if not others:
        return {}
    why = None
    npz = None
    if prev.caps.get("members_per_client") != cap or prev.caps.get("seed") != seed:
        why = "they were scored on another candidate sample (cap or seed)"
    elif not prev.scores or not (rd.path / prev.scores).is_file() or \
            sha256(rd.path / prev.scores) != prev.files.get(prev.scores):  # fmt: skip
        why = "their scores file is missing or changed"
    else:
        npz = np.load(rd.path / prev.scores)
        if not (np.array_equal(npz["image_id"], cand["image_id"]) and np.array_equal(npz["labels"], cand["labels"])):
            why = "they were scored on other candidates"
    if why is not None:
        log(f"  replacing the earlier results of {', '.join(others)} for {target}: {why}; rerun them with --method")
        return {}
    out = {}
    for n in others:
        entry = to_data(prev.methods[n], json_numbers=True)
        key = f"score_{n}"
        out[n] = (entry, npz[key].astype(np.float64) if prev.methods[n].applicable and key in npz.files else None)
    log(f"  kept the earlier results of {', '.join(others)} for {target} (same candidates)")
    return out


def _method(entry: dict) -> MembershipMethod:
    return from_data(MembershipMethod, to_json(entry), Schema(noun="key", where="membership result", json_numbers=True))
