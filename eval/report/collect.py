"""Collect the headline numbers of runs and sweeps, from their typed metrics files only."""

from __future__ import annotations

import dataclasses

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from collafuse_privacy.checkpoint import sha256, verified_step_dir
from collafuse_privacy.errors import UserError
from collafuse_privacy.numbers import num
from collafuse_privacy.run.directory import METRICS, RunDir
from collafuse_privacy.run.layout import AUDIT_TWIN_GLOB, CONFIG, SAMPLES_GRID, SWEEP_INDEX
from collafuse_privacy.run.schemas.sweep import read_cell, read_index


def _iv(iv) -> Optional[dict]:
    """An Interval -> {'value', 'lo', 'hi'} floats, or None."""
    if iv is None:
        return None
    return {"value": num(iv.value), "lo": num(iv.lo), "hi": num(iv.hi)}


@dataclass
class CellResult:
    """Headline numbers of one run, all read from its metrics files."""

    label: str
    run_dir: Path
    setting: str = ""  # the label without the training seed (cells of one setting differ only in it)
    status: str = "done"
    error: Optional[str] = None
    cut_ratio: float = float("nan")
    t_c: Optional[int] = None
    protocol: str = ""
    fixed_noise: bool = False
    local_steps: int = 1  # fedavg: rounds between uploads (train.local_steps)
    dp: Optional[dict] = None  # client DP-SGD settings and epsilon
    seed: int = 0
    fid: Optional[float] = None
    fid_per_client: list = field(default_factory=list)
    kid: Optional[float] = None  # raw; tables print it as "KID x 10^3"
    fid_ci: Optional[dict] = None  # {'value', 'lo', 'hi'}: 95% bootstrap over samples
    kid_ci: Optional[dict] = None
    extractor: Optional[str] = None
    extractor_sha256: Optional[str] = None  # the extractor's identity: cells with two cannot share a table
    floor: Optional[dict] = None  # {'label', 'fid': ci, 'kid': ci, 'n'}: members vs held-out, same extractor and n
    membership: dict = field(default_factory=dict)  # target -> method -> {auc, tpr1, tpr01, applicable, reason}
    membership_gdp: dict = field(default_factory=dict)  # target -> GDPSection
    reconstruction: dict = field(default_factory=dict)  # method -> {ssim, psnr, mse, ident, chance, ...}
    reconstruction_sent: Optional[bool] = None
    reconstruction_reason: Optional[str] = None
    view_epsilon: Optional[float] = None
    view_mu: Optional[float] = None
    view_delta: Optional[float] = None
    # the view's epsilon for the unlinked server (privacy.json `unlinked`): replace-one, add/remove, or
    # the one-line reason it is not reported
    view_epsilon_unlinked: Optional[float] = None
    view_epsilon_unlinked_add_remove: Optional[float] = None
    unlinked_reason: Optional[str] = None
    client_flop_share: Optional[float] = None
    bytes_per_image: Optional[float] = None
    paper_kid: Optional[float] = None  # mean over clients: KID(server training images, client members)
    paper_mse: Optional[float] = None
    membership_best: dict = field(default_factory=dict)  # target -> {method, auc, tpr1, selected_by}
    reconstruction_best: Optional[dict] = None  # {method, ssim, psnr, selected_by}
    not_recorded: Optional[int] = None  # rows the server received that the view did not record
    secrets_derived_from_seed: bool = False
    audits: list = field(default_factory=list)  # metrics/audit.json of the run and of its audit-*/ twins
    figures: dict = field(default_factory=dict)  # name -> path

    @property
    def defence(self) -> str:
        parts = []
        if self.dp and self.dp.get("enabled"):
            nm = self.dp.get("noise_multiplier")
            eps = num(self.dp.get("epsilon"))
            parts.append(f"DP-SGD (sigma={nm}, eps={eps:.3g})" if nm is not None else "DP-SGD")
        if self.fixed_noise:
            parts.append("fixed noise")
        return " + ".join(parts) or "none"

    def view_target(self) -> str:
        """The membership target that stands for the server's view in the headline: the server's own
        model, or, for fedavg, client 0's upload (the model the server receives; issue 26) where it
        was attacked (``membership: {targets: [server, "client:0"]}``)."""
        return "client:0" if self.protocol == "fedavg" and "client:0" in self.membership_best else "server"

    def best_membership(self, target: Optional[str] = None, key: str = "tpr1") -> Optional[tuple[str, dict]]:
        """The strongest attack on ``target`` (default :meth:`view_target`), as chosen on a calibration
        half of the candidates and scored on the other (``metrics/membership.json`` ``best``):
        ``(method, interval)``."""
        best = self.membership_best.get(target or self.view_target())
        if not best or best.get(key) is None:
            return None
        return best["method"], best[key]

    def best_reconstruction(self, key: str = "ssim") -> Optional[tuple[str, dict]]:
        """The best reconstruction of *training* images, chosen on half of the scored rows and scored
        on the other half (``inference`` targets the client's generated outputs, a different
        question, and is left out)."""
        b = self.reconstruction_best
        return (b["method"], b[key]) if b and b.get(key) is not None else None

    def nothing_sent(self) -> bool:
        """Nothing crossed (c = 1); a fedavg cell sent its models, which the image attacks do not read."""
        return self.t_c is not None and self.reconstruction_sent is False and self.protocol != "fedavg"

    def to_row(self) -> dict:
        """The headline numbers as plain data (what the report's table shows)."""
        row = {"label": self.label, "status": self.status, "cut_ratio": self.cut_ratio, "t_c": self.t_c,
               "protocol": self.protocol, "defence": self.defence, "fid": self.fid, "kid": self.kid,
               "fid_ci": self.fid_ci, "kid_ci": self.kid_ci, "floor": self.floor,
               "extractor": self.extractor, "extractor_sha256": self.extractor_sha256,
               "view_epsilon": self.view_epsilon, "view_epsilon_unlinked": self.view_epsilon_unlinked,
               "view_epsilon_unlinked_add_remove": self.view_epsilon_unlinked_add_remove,
               "client_dp_epsilon": num(self.dp.get("epsilon")) if self.dp and self.dp.get("enabled") else None,
               "client_flop_share": self.client_flop_share, "bytes_per_image": self.bytes_per_image,
               "paper_kid": self.paper_kid, "paper_mse": self.paper_mse}  # fmt: skip
        for target, methods in sorted(self.membership.items()):
            for name, m in sorted(methods.items()):
                for key in ("auc", "tpr1"):
                    row[f"mia[{target}].{name}.{key}"] = m[key]["value"] if m.get(key) else None
        for name, m in sorted(self.reconstruction.items()):
            for key in ("ssim", "psnr", "ident"):
                row[f"recon.{name}.{key}"] = m[key]["value"] if m.get(key) else None
        return row


def _own(run_dir: Path, rel: str, files: dict) -> bool:
    """Whether ``rel`` is the file its metrics were written with (not one of an interrupted rerun)."""
    f = run_dir / rel
    return f.is_file() and (rel not in files or sha256(f) == files[rel])


def read_run(run_dir: Path, label: Optional[str] = None, status: str = "done", error: Optional[str] = None,
             setting: Optional[str] = None) -> CellResult:  # fmt: skip
    """Collect one run's headline numbers from ``metrics/*.json`` (and its config), all validated.

    The files are read in a fixed order (quality, membership, reconstruction, privacy, burden,
    audits); where two give the same number (``t_c``, rows not recorded) the later one's is kept."""
    rd = RunDir(run_dir)
    label = label or rd.path.name
    if not rd.exists() and status != "done":  # a sweep cell that has not started
        return CellResult(label=label, run_dir=rd.path, setting=setting or label, status=status, error=error)
    r = _cell(rd, label, status, error, setting)
    _read_quality(r, rd.metrics("quality"))
    _read_membership(r, rd.metrics("membership"), rd.path)
    _read_reconstruction(r, rd.metrics("reconstruction"), rd.path)
    _read_privacy(r, rd.metrics("privacy"))
    b = rd.metrics("burden")
    if b is not None:
        r.client_flop_share, r.bytes_per_image, r.t_c = b.sampling_flop_ratio, b.bytes_sent_per_training_image, b.t_c
    for adir in [rd.path] + sorted(p for p in rd.path.glob(AUDIT_TWIN_GLOB) if p.is_dir()):
        a = RunDir(adir).metrics("audit")
        if a is not None:
            r.audits.append(_audit_row(a))
    grid = rd.path / SAMPLES_GRID
    if grid.is_file():
        r.figures["samples"] = grid
    return r


def _cell(rd: RunDir, label: str, status: str, error: Optional[str], setting: Optional[str]) -> CellResult:
    """A cell with what its config says (and whether it was ever trained), before any metrics."""
    twins = sorted(p for p in rd.path.glob(AUDIT_TWIN_GLOB) if RunDir(p).exists())
    if not rd.exists() and twins:  # a cell whose only stage is an audit: its twin holds the config
        cfg = RunDir(twins[0]).config()
    else:
        cfg = rd.config()
    r = CellResult(label=label, run_dir=rd.path, setting=setting or label, status=status, error=error,
                   cut_ratio=cfg.protocol.cut_ratio, protocol=cfg.protocol.kind, fixed_noise=cfg.protocol.fixed_noise,
                   local_steps=cfg.train.local_steps, seed=cfg.seed, secrets_derived_from_seed=cfg.secrets.derive_from_seed)  # fmt: skip
    # A folder with a config but neither an intact checkpoint nor any scored metrics was never trained (a
    # killed first round, a Flower `prepare`): not "done". Metrics alone are enough (reports read only them).
    if status == "done" and rd.exists() and not any(rd.metrics_path(n).is_file() for n in METRICS):
        try:
            verified_step_dir(rd)
        except UserError as e:
            r.status, r.error = "not trained", str(e)
    dp = cfg.defense.client_dp
    if dp.enabled:
        r.dp = {"enabled": True, "noise_multiplier": dp.noise_multiplier, "target_epsilon": dp.target_epsilon}
    return r


def _read_quality(r: CellResult, q) -> None:
    """FID / KID of the cell's own cut ratio, the floor, and the paper's disclosure figures."""
    if q is None:
        return
    r.extractor, r.extractor_sha256 = q.extractor, q.extractor_sha256
    own = [x for x in q.runs if abs(x.cut_ratio - r.cut_ratio) < 1e-9 and x.protocol in ("", r.protocol)]
    if own:
        r.fid, r.kid = own[0].pooled.fid, own[0].pooled.kid
        r.fid_ci, r.kid_ci = _iv(own[0].pooled.fid_ci), _iv(own[0].pooled.kid_ci)
        r.fid_per_client = [c.fid for c in own[0].per_client]
        r.t_c = own[0].t_c
    r.floor = {"label": q.floor.label, "fid": _iv(q.floor.pooled.fid_ci), "kid": _iv(q.floor.pooled.kid_ci),
               "n": q.floor.pooled.n_samples, "n_real": q.floor.pooled.n_real}  # fmt: skip
    training = [d.training for d in q.disclosure if d.training is not None and d.training.kid is not None]
    r.paper_kid = float(np.mean([t.kid for t in training])) if training else None
    r.paper_mse = float(np.mean([t.pixel_mse for t in training])) if training else None


def _read_membership(r: CellResult, mem, path: Path) -> None:
    """Every target's methods, GDP section, strongest method, and ROC figure (when it is its own)."""
    for target, res in (mem.targets.items() if mem is not None else []):
        r.t_c = res.t_c
        r.membership[target] = {
            name: {"applicable": m.applicable, "reason": m.reason, "auc": _iv(m.auc), "tpr1": _iv(m.tpr_at_1pct_fpr),
                   "tpr01": _iv(m.tpr_at_01pct_fpr), "bacc": _iv(m.balanced_accuracy),
                   "unresolved": {"tpr1": m.unresolved.get("tpr_at_1pct_fpr"),
                                  "tpr01": m.unresolved.get("tpr_at_0.1pct_fpr")},
                   "unresolved_cp": {"tpr1": (m.unresolved_intervals.get("tpr_at_1pct_fpr") or {}).get("tpr_interval"),
                                     "tpr01": (m.unresolved_intervals.get("tpr_at_0.1pct_fpr") or {}).get("tpr_interval")}}
            for name, m in res.methods.items()
        }  # fmt: skip
        r.membership_gdp[target] = res.gdp
        if res.best is not None:
            r.membership_best[target] = {"method": res.best.method, "auc": _iv(res.best.auc),
                                         "tpr1": _iv(res.best.tpr_at_1pct_fpr), "selected_by": res.best.selected_by}
        if res.record is not None and target == "server":
            r.not_recorded = res.record.not_recorded
        if res.figure and _own(path, res.figure, res.files):
            r.figures[f"roc-{target}"] = path / res.figure


def _read_reconstruction(r: CellResult, rec, path: Path) -> None:
    """Each applicable method's summaries, the best method, and the figure (when it is its own)."""
    if rec is None:
        return
    r.t_c = rec.t_c
    r.reconstruction_sent, r.reconstruction_reason = rec.sent, rec.reason
    for name, m in rec.methods.items():
        if m.applicable:
            r.reconstruction[name] = {"ssim": _iv(m.ssim), "psnr": _iv(m.psnr), "mse": _iv(m.mse),
                                      "ident": _iv(m.identification), "chance": m.chance, "source": m.source}
    if rec.best is not None:
        r.reconstruction_best = {"method": rec.best.method, "ssim": _iv(rec.best.ssim), "psnr": _iv(rec.best.psnr),
                                 "selected_by": rec.best.selected_by}
    if rec.record is not None:
        r.not_recorded = rec.record.not_recorded
    if rec.figure and _own(path, rec.figure, rec.files):
        r.figures["reconstruction"] = path / rec.figure


def _read_privacy(r: CellResult, priv) -> None:
    """The view's formal numbers (linked, and unlinked or why not) and the clients' DP-SGD epsilon."""
    if priv is None:
        return
    r.view_epsilon, r.view_mu, r.view_delta = priv.view.epsilon, priv.view.mu, priv.view.delta
    u = priv.unlinked
    if u is not None and u.reason is None and u.sampling is None:  # the sum-form number: not a bound
        r.unlinked_reason = ("privacy.json from before the secret-sampling bound (its unlinked number assumed the "
                             "other rows hide the target's): rerun `collafuse-privacy privacy`")  # fmt: skip
    elif u is not None:
        r.view_epsilon_unlinked, r.view_epsilon_unlinked_add_remove = u.epsilon_replace_one, u.epsilon_add_remove
        r.unlinked_reason = u.reason
    else:
        r.unlinked_reason = "privacy.json from before the unlinked accountant: rerun `collafuse-privacy privacy`"
    if priv.client_dp.enabled:
        r.dp = {**(r.dp or {}), "enabled": True, "epsilon": priv.client_dp.epsilon}
        if priv.client_dp.noise_multiplier is not None:
            r.dp["noise_multiplier"] = priv.client_dp.noise_multiplier
    r.t_c = priv.t_c


def _audit_row(a) -> dict:
    """The headline numbers of one ``metrics/audit.json``; the best attack without ground-truth links is
    chosen on the calibration slots (its ``calibration_epsilon``), and its bound is the evaluation slots'."""
    view_only = [(n, m) for n, m in a.methods.items() if m.reason is None and not m.sees.startswith("auditor")
                 and m.epsilon_lb is not None and m.calibration_epsilon is not None]  # fmt: skip
    best_view = max(view_only, key=lambda nm: nm[1].calibration_epsilon, default=None)
    return {"target": a.target, "game": a.game, "canaries": a.canaries, "canary_kind": a.canary_kind,
            "formal_epsilon": a.formal_epsilon, "formal_mu": a.formal_mu, "claim": a.claim,
            "epsilon_lb": a.epsilon_lb, "epsilon_route": a.epsilon_route, "epsilon_method": a.epsilon_method,
            "mu_lb": a.mu_lb, "mu_method": a.mu_method, "ratio": a.ratio, "ratio_of": a.ratio_of,
            "max_certifiable": a.max_certifiable_epsilon, "best": a.best, "check": a.check,
            "message": a.message, "seconds": a.seconds, "notes": list(a.notes),
            "unlinked": None if a.unlinked is None else dataclasses.asdict(a.unlinked),
            "view_only": None if best_view is None else {"method": best_view[0], "epsilon_lb": best_view[1].epsilon_lb,
                                                         "route": best_view[1].epsilon_route, "auc": best_view[1].auc}}  # fmt: skip


def collect(dirs) -> list[CellResult]:
    """Cells of every sweep directory and every run directory given (each directory once)."""
    out, seen = [], set()
    for d in dirs:
        d = Path(d)
        if not d.is_dir():
            raise UserError(f"not a directory: {d}")
        if d.resolve() in seen:
            continue
        seen.add(d.resolve())
        if (d / SWEEP_INDEX).is_file():
            for c in read_index(d).cells:
                cdir = d / c.dir
                cell = read_cell(cdir)
                out.append(read_run(cdir, label=c.label, status=cell.get("status", "pending"), error=cell.get("error"),
                                    setting=c.setting or c.label))  # fmt: skip
        elif (d / CONFIG).is_file():
            out.append(read_run(d))
        else:
            raise UserError(f"{d} is neither a run directory (config.yaml) nor a sweep directory (sweep.json)")
    if not out:
        raise UserError("no runs found in " + ", ".join(map(str, dirs)))
    check_one_extractor(out)
    return out


def check_one_extractor(cells: list[CellResult]) -> None:
    """UserError (one line) when the cells' quality numbers come from different feature extractors
    (different weights' sha256): an FID is only comparable in one feature space."""
    seen: dict[str, CellResult] = {}
    for c in cells:
        if c.extractor_sha256 is not None:
            seen.setdefault(c.extractor_sha256, c)
    if len(seen) > 1:
        a, b = list(seen.values())[:2]
        raise UserError(f"quality numbers from {len(seen)} different feature extractors cannot share a table: "
                        f"[{a.label}] {a.extractor} (sha256 {a.extractor_sha256[:12]}) vs [{b.label}] {b.extractor} "
                        f"(sha256 {b.extractor_sha256[:12]}); rerun evaluate on one side with the other's extractor")
