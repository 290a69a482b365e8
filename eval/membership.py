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
"""

from __future__ import annotations

import dataclasses
import io
import math
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from collafuse_privacy.lock import locks_run
from collafuse_privacy.attacks.base import check_family_options
from collafuse_privacy.checkpoint import sha256
from collafuse_privacy.attacks.membership import FAMILY, NotApplicable, make, parse_target
from collafuse_privacy.data import Splits
from collafuse_privacy.defenses.accounting import gdp_tpr, sensitivity
from collafuse_privacy.errors import UserError
from collafuse_privacy.io import atomic_write_bytes, check_writable, save_figure
from collafuse_privacy.linalg import nearest
from collafuse_privacy.numbers import fmt_interval, num, to_json
from collafuse_privacy.party import resolve_device
from collafuse_privacy.run.directory import RunDir
from collafuse_privacy.run.layout import FIGURES, METRICS_DIR, membership_roc, membership_scores
from collafuse_privacy.run.schemas import BestMethod, GDPSection, MembershipMethod, MembershipReport, MembershipResult
from collafuse_privacy.typed import Schema, from_data, to_data
from collafuse_privacy.view import ServerView

from .ground_truth import load_ground_truth, message_image_ids
from .roc import auc as roc_auc
from .roc import FPR_TARGETS, MIN_FALSE_POSITIVES, calibration_halves, membership_metrics, resolvable, roc_curve, tpr_at_fpr, tpr_band, \
    unresolved_tpr
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


def nearest_nonmember_distance(members: torch.Tensor, pool: torch.Tensor) -> np.ndarray:
    """L2 distance from each member image to its nearest image in ``pool`` (both [*, C, H, W])."""
    return nearest(members.flatten(1), pool.flatten(1))[0].numpy()


def trained_releases(run_dir: str | Path) -> Optional[int]:
    """Releases per image counted during training (``metrics/privacy.json``), if recorded there."""
    try:
        report = RunDir(run_dir).metrics("privacy")
    except UserError:
        return None
    return None if report is None else int(report.view.releases_per_image)


def gdp_section(view: ServerView, ids_recorded: np.ndarray, member_dist: np.ndarray,
                releases_trained: Optional[int] = None) -> GDPSection:  # fmt: skip
    """GDP mu (worst case and actual distances) and the bound's TPR at 1% / 0.1% FPR.

    Releases per image: 1 with fixed noise; else the count made during training when known
    (the recorded rows stop at ``record.max_items`` and would understate it), else the
    recorded maximum, marked as a lower bound.
    """
    recorded = int(np.bincount(ids_recorded).max()) if len(ids_recorded) else 0
    if view.meta.fixed_noise:
        releases, how = 1, "fixed_noise: every re-send is the same h"
    elif releases_trained is not None:
        releases, how = max(releases_trained, recorded), "max releases of any one image, counted in training"
    elif recorded:
        releases, how = recorded, "max recorded releases of any one image (a lower bound if recording was capped)"
    else:
        releases, how = 0, "no recorded releases"
    shape = view.image_shape
    dmax = float(np.max(member_dist)) if len(member_dist) and releases else None
    dmed = float(np.median(member_dist)) if len(member_dist) and releases else None
    mu = view.protocol.release_mu
    if releases == 0:
        mus = {"worst": 0.0, "actual": 0.0, "actual_median": 0.0}
    else:
        mus = {"worst": mu(shape, releases),
               "actual": mu(shape, releases, dmax) if dmax is not None else float("nan"),
               "actual_median": mu(shape, releases, dmed) if dmed is not None else float("nan")}  # fmt: skip
    bound = {(k, f): float(gdp_tpr(f, mus[k])) for k in ("worst", "actual") for f in (0.01, 0.001)}
    return GDPSection(
        releases_per_image=releases, releases_counted=how, mu_worst=mus["worst"], mu_actual=mus["actual"],
        mu_actual_median=mus["actual_median"], tpr_bound_at_1pct_fpr=bound["worst", 0.01],
        tpr_bound_at_01pct_fpr=bound["worst", 0.001], tpr_bound_at_1pct_fpr_actual=bound["actual", 0.01],
        tpr_bound_at_01pct_fpr_actual=bound["actual", 0.001],
        mu_actual_uses="a heuristic, not a bound: the max over sampled members of the distance to the nearest "
                       "public/held-out image, in place of the worst-case sensitivity 2 sqrt(d)",
        sensitivity_worst=sensitivity(shape) if releases else None, distance_median=dmed, distance_max=dmax)


# ---------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------


def _suffix(target: str) -> str:
    kind, k = parse_target(target)
    return "" if kind == "server" else f"-client{k}"


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
    rd = RunDir(run_dir)
    run_dir = rd.path
    kind, tk = parse_target(target)  # UserError on a malformed target
    names = FAMILY.resolve(methods)  # UserError listing the known names
    options = dict(options or {})
    check_family_options(FAMILY, options, names)
    if cap < 1:
        raise UserError(f"cap must be at least 1, got {cap}")
    cfg, splits, ds = load_ground_truth(run_dir)
    if kind == "client" and not 0 <= tk < splits.num_clients:
        raise UserError(f"--target client:{tk}: the run has clients 0..{splits.num_clients - 1}")
    dev = str(resolve_device(device))  # UserError for cuda without a GPU
    # the view is verified (manifest, checkpoint, config) before anything is written
    if kind == "client" and cfg.t_c == 0:
        view = ServerView.load(run_dir)  # no client model was ever trained: attacks say NotApplicable
    else:
        view = ServerView.load(run_dir, release_clients=(tk,) if kind == "client" else ())
    for folder in (METRICS_DIR, FIGURES):  # before any computation: a read-only run fails now, naming the folder
        check_writable(run_dir / folder)
    clients = [tk] if kind == "client" else list(range(splits.num_clients))
    cand = sample_candidates(splits, ds.images, clients, cap=cap, seed=seed)
    labels, owner = cand["labels"], cand["client"]
    if labels.sum() == 0:
        raise UserError(f"{run_dir}: no client has both members and held-out images to compare "
                        "(data.holdout_fraction = 0?); membership cannot be scored")  # fmt: skip
    log(f"membership [{target}]: {int(labels.sum())} members + {int((1 - labels).sum())} held-out candidates "
        f"over {len(clients)} client(s); protocol {view.protocol.name}, c = {cfg.protocol.cut_ratio:g}, t_c = {view.t_c}")

    methods_out: dict[str, dict] = {}
    scores, curves = {}, {}
    for name in names:
        t0 = time.perf_counter()
        try:
            attack = make(name, target=target, device=dev, **options.get(name, {}))
            attack.fit(view)
            s = np.empty(len(labels), dtype=np.float64)
            for k in clients:
                sel = owner == k
                s[sel] = attack.score(view, cand["images"][torch.from_numpy(sel)], client=k).double().numpy()
        except NotApplicable as exc:
            methods_out[name] = {"applicable": False, "reason": str(exc), "seconds": time.perf_counter() - t0}
            log(f"  {name}: not applicable ({exc})")
            continue
        seconds = time.perf_counter() - t0
        n_nan = int(np.isnan(s).sum())
        if len(s) and n_nan == len(s):  # nothing was scored: no result, and said so (never an AUC of 0.5)
            why = f"all {n_nan} scores are NaN (a diverged model, or options that leave nothing to score): no result"
            methods_out[name] = {"applicable": False, "reason": why, "seconds": seconds, "nan_scores": n_nan}
            log(f"  {name}: {why}")
            continue
        if n_nan:  # e.g. a diverged model: scored as "surely not a member", and said so
            log(f"  {name}: {n_nan} of {len(s)} scores are NaN; they count as the lowest score")
            s = np.where(np.isnan(s), -np.inf, s)
        scores[name] = s
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
        methods_out[name] = entry
        fpr, tpr, _ = roc_curve(s, labels)
        curves[name] = (fpr, tpr, m["auc"].value)
        log(f"  {name}: AUC {m['auc']}, TPR@1%FPR {m['tpr_at_1pct_fpr'] or unresolved.get('tpr_at_1pct_fpr')} "
            f"({seconds:.1f} s)")

    for name, (entry, s) in _earlier_methods(rd, target, names, cand, cap, seed, log).items():
        methods_out[name] = entry
        if s is not None:
            scores[name] = s
            fpr, tpr, _ = roc_curve(s, labels)
            curves[name] = (fpr, tpr, entry["auc"]["value"] if entry.get("auc") else roc_auc(s, labels))
    order = [n for n in FAMILY.names() if n in methods_out]  # registry order, whichever ran when
    methods_out = {n: methods_out[n] for n in order}
    scores = {n: scores[n] for n in order if n in scores}
    curves = {n: curves[n] for n in order if n in curves}

    n_non = int((1 - labels).sum())
    gdp, gdp_note = None, None
    # the formal bound (server target only: it covers the releases, not a client's model)
    if kind == "server":
        members = cand["images"][torch.from_numpy(labels == 1)]
        pool_ids = sorted(set(splits.public) | {i for h in splits.holdout for i in h})
        dist = nearest_nonmember_distance(members, ds.images[torch.tensor(pool_ids, dtype=torch.long)]) if pool_ids else np.zeros(0)
        gdp = gdp_section(view, recorded_image_ids(run_dir), dist, trained_releases(run_dir))
        grid = np.logspace(math.log10(max(1.0 / max(n_non, 1), 1e-4)), 0, 40)
        for name, s in scores.items():
            _, lo, _ = tpr_band(s, labels, grid, n_boot=min(n_boot, 300), seed=seed)
            bound = gdp_tpr(grid, gdp.mu_worst)
            methods_out[name]["exceeds_worst_case_gdp_bound"] = bool(np.any(lo > bound + 1e-12))
    else:
        gdp_note = "the GDP accounting covers the releases the server received, not a released client model"

    suffix = _suffix(target)
    scores_rel, fig_rel = membership_scores(suffix), membership_roc(suffix)
    buf = io.BytesIO()
    np.savez(buf, labels=labels, client=owner, image_id=cand["image_id"], methods=np.array(list(scores), dtype=str),
             **{f"score_{k}": v for k, v in scores.items()})  # fmt: skip
    atomic_write_bytes(run_dir / scores_rel, buf.getvalue())
    result = MembershipResult(
        protocol=view.protocol.name, cut_ratio=cfg.protocol.cut_ratio, t_c=view.t_c, timesteps=view.timesteps,
        fixed_noise=bool(cfg.protocol.fixed_noise), n_members=int(labels.sum()), n_nonmembers=n_non,
        methods={k: _method(v) for k, v in methods_out.items()},
        caps={"members_per_client": cap, "nonmembers_per_client": cap,
              "per_client": {str(k): v for k, v in cand["per_client"].items()}, "seed": seed},
        min_resolvable_fpr=(MIN_FALSE_POSITIVES / n_non) if n_non else None,
        tpr_interpolation="linear between ROC vertices (top of vertical segments); TPR at an FPR f with fewer "
                          "than 10/f non-members is not reported (not resolvable; Clopper-Pearson intervals of TPR "
                          "and FPR instead, unresolved_intervals)",
        n_boot=n_boot, gdp=gdp, gdp_note=gdp_note, best=best_method(scores, labels, n_boot, seed), record=view.record,
        scores=scores_rel, figure=fig_rel)  # fmt: skip
    if view.record is not None and view.record.not_recorded and kind == "server":
        log(f"  note: the server received {view.record.received} rows, {view.record.not_recorded} of them were not "
            f"recorded (record.max_items={view.record.max_items}); attacks saw {view.record.recorded}")
    _plot(run_dir / fig_rel, curves, result, target, n_non)
    # membership.json comes last and names the sha256 of its scores and figure: files of an
    # interrupted rerun beside it are recognised as not its own
    result = dataclasses.replace(result, files={rel: sha256(run_dir / rel) for rel in (scores_rel, fig_rel)})
    try:
        old = rd.metrics("membership")
    except UserError as exc:
        log(f"  {exc}: its other targets are dropped")
        old = None
    targets = dict(old.targets) if old is not None else {}
    targets[target] = result
    rd.write_metrics("membership", MembershipReport(targets=targets))
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


def best_method(scores: dict[str, np.ndarray], labels: np.ndarray, n_boot: int, seed: int) -> Optional[BestMethod]:
    """The strongest method, chosen on a calibration half of the candidates by TPR at 1% FPR (AUC
    where that half cannot resolve 1%), and scored on the other half: a best-of over several
    methods chosen on the scored data itself would be biased upwards."""
    if not scores:
        return None
    cal, ev = calibration_halves(labels, seed)
    by_tpr = resolvable(0.01, int((labels[cal] == 0).sum()))
    key = (lambda s: (tpr_at_fpr(s[cal], labels[cal], 0.01), roc_auc(s[cal], labels[cal]))) if by_tpr else \
        (lambda s: (roc_auc(s[cal], labels[cal]),))  # fmt: skip
    name = max(scores, key=lambda n: key(scores[n]))
    s, y = scores[name][ev], labels[ev]
    kw = dict(n_boot=n_boot, seed=seed, strata=y)
    tpr = bootstrap(lambda a, b: tpr_at_fpr(a, b, 0.01), s, y, **kw) if resolvable(0.01, int((y == 0).sum())) else None
    return BestMethod(method=name, selected_by=f"{'TPR at 1% FPR' if by_tpr else 'AUC'} on a calibration half "
                      f"({len(cal)} candidates), scored on the other half ({len(ev)})",
                      auc=bootstrap(roc_auc, s, y, **kw), tpr_at_1pct_fpr=tpr,
                      note="" if tpr is not None else "TPR at 1% FPR is not resolvable on the held-out half")  # fmt: skip


def _method(entry: dict) -> MembershipMethod:
    return from_data(MembershipMethod, to_json(entry), Schema(noun="key", where="membership result", json_numbers=True))


def _plot(path: Path, curves: dict, result: MembershipResult, target: str, n_non: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lo = 1.0 / max(2 * n_non, 2)
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    grid = np.logspace(math.log10(lo), 0, 200)
    ax.plot(grid, grid, ":", color="grey", lw=1, label="chance")
    for name, (fpr, tpr, a) in curves.items():
        keep = fpr > 0
        ax.step(fpr[keep], tpr[keep], where="post", lw=1.5, label=f"{name} (AUC {a:.3f})")
    gdp = result.gdp
    if gdp is not None:
        for mu, style, lab in ((gdp.mu_worst, "--", "GDP bound (worst case)"),
                               (gdp.mu_actual, "-.", "GDP at the actual max distance: heuristic, not a bound")):
            if math.isfinite(mu):
                ax.plot(grid, gdp_tpr(grid, mu), style, color="black", lw=1, label=f"{lab} (mu={mu:.3g})")
            elif mu == float("inf"):
                ax.plot(grid, np.ones_like(grid), style, color="black", lw=1, label=f"{lab} (mu=inf)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, 1)
    ax.set_ylim(lo, 1.05)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(f"membership [{target}]: {result.protocol}, c={result.cut_ratio:g}", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def format_membership(result: MembershipResult, target: str) -> str:
    """A plain-text table of one target's results."""
    f = lambda iv, why=None: fmt_interval(iv, ".3f") if iv is not None else ("not resolvable" if why else "-")  # noqa: E731
    lines = [f"membership inference [{target}]: {result.protocol}, c = {result.cut_ratio:g} "
             f"(t_c = {result.t_c}), {result.n_members} members vs {result.n_nonmembers} held-out"]  # fmt: skip
    head = f"{'method':<10} {'AUC':<24} {'bal. acc. (held-out)':<24} {'TPR@1%FPR':<24} {'TPR@0.1%FPR':<24} {'s':>6}"
    lines += [head, "-" * len(head)]
    for name, m in result.methods.items():
        if not m.applicable:
            lines.append(f"{name:<10} not applicable: {m.reason}")
            continue
        u = m.unresolved

        def tpr(iv, key):
            cp = (m.unresolved_intervals or {}).get(key) or {}
            if iv is None and cp.get("tpr_interval"):
                lo, hi = cp["tpr_interval"]
                return f"n.r.; CP [{lo:.3f}, {hi:.3f}]"  # no point estimate: the Clopper-Pearson interval only
            return f(iv, u.get(key))

        lines.append(f"{name:<10} {f(m.auc):<24} {f(m.balanced_accuracy, u.get('balanced_accuracy')):<24} "
                     f"{tpr(m.tpr_at_1pct_fpr, 'tpr_at_1pct_fpr'):<24} "
                     f"{tpr(m.tpr_at_01pct_fpr, 'tpr_at_0.1pct_fpr'):<24} {m.seconds:>6.1f}")  # fmt: skip
    notes = sorted({why for m in result.methods.values() for why in m.unresolved.values()})
    lines += [f"  {why}" for why in notes]
    if any(m.unresolved_intervals for m in result.methods.values()):
        lines.append("  n.r.; CP [lo, hi]: no point estimate; 95% Clopper-Pearson interval of the TPR at the threshold "
                     "that admits at most floor(FPR x n) non-members (unresolved_intervals in membership.json)")  # fmt: skip
    if result.best is not None:
        b = result.best
        lines.append(f"strongest: {b.method} (chosen by {b.selected_by}): AUC {f(b.auc)}, TPR@1%FPR "
                     f"{f(b.tpr_at_1pct_fpr, b.note)}")  # fmt: skip
    gdp = result.gdp
    if gdp is not None:
        lines.append(f"GDP bound: mu worst {num(gdp.mu_worst):.4g} (releases/image {gdp.releases_per_image}); "
                     f"TPR@1%FPR <= {gdp.tpr_bound_at_1pct_fpr:.4g}; heuristic mu at the actual max distance "
                     f"{num(gdp.mu_actual):.4g}")  # fmt: skip
    if result.record is not None and result.record.not_recorded:
        r = result.record
        lines.append(f"the server received {r.received} rows; {r.not_recorded} were not recorded "
                     f"(record.max_items = {r.max_items}) and no attack saw them")  # fmt: skip
    lines.append(f"-> {result.scores}, {result.figure}")
    return "\n".join(lines)
