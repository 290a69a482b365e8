"""The report's tables: one function per table, each a header row and one row per cell (or per
cell and target), every number formatted from the collected cells (:mod:`.collect`). Long reasons
for a missing number become numbered footnotes (:class:`_Notes`), so they do not widen the tables.
"""

from __future__ import annotations

from typing import Optional

from collafuse_privacy.numbers import fmt as _fmt
from collafuse_privacy.numbers import fmt_interval
from collafuse_privacy.targets import parse_target

from ..quality import KID_SCALE, KID_UNIT
from .analyse import across_seeds
from .collect import CellResult


def _fmt_iv(iv, spec=".3f") -> str:
    return fmt_interval(iv, spec)


def _kid_iv(iv) -> str:
    """A KID interval in its printed unit (KID_UNIT)."""
    return fmt_interval(None if iv is None else {k: iv[k] * KID_SCALE for k in ("value", "lo", "hi")}, ".4g")


ADJACENCY_NOTE = ("formal eps (view): GDP of what crosses the cut under replace-one adjacency (one image replaced by "
                  "any other, L2 sensitivity 2 sqrt(d)); the client DP-SGD eps in the defence column is Opacus' "
                  "add/remove adjacency: the two answer different questions and are not comparable")
FEDAVG_NOTE = ("formal eps (view) of fedavg: the server sees every client's uploaded model; with DP-SGD clients "
               "each upload is a post-processing of the client's DP-SGD run, so its epsilon (Opacus, add/remove one "
               "member image) bounds the view; without DP-SGD nothing does (inf)")  # fmt: skip
THREAT_NOTE = ("linked: a server that attributes every release to its image (today's number); unlinked: a server "
               "that cannot know in which rounds an image was drawn (the clients' secret batch draws and timesteps) "
               "but may recognise its row when present: the exact secret-sampling bound sum_k Binom(k; n, p) "
               "delta_GDP(eps; sqrt(k) mu), replace-one; add/remove is infinite (a row's presence reveals the image); "
               "reported only with fresh noise, no labels across the cut and OS secrets")  # fmt: skip
SECRETS_NOTE = ("These runs derived the clients' secrets from the config's seed (secrets.derive_from_seed, for "
                "reproducibility): a server that guesses the seed could rebuild their split and noise, so the "
                "numbers hold only for a server that cannot.")


class _Notes:
    """Numbered footnotes for 'n/a' cells, so long reasons do not widen the tables."""

    def __init__(self):
        self.items: list[str] = []

    def na(self, reason) -> str:
        reason = str(reason or "no reason given")
        if reason not in self.items:
            self.items.append(reason)
        return f"n/a [{self.items.index(reason) + 1}]"


def tables(cells: list[CellResult], notes: Optional[dict] = None) -> dict[str, list[list[str]]]:
    """Named tables (header row first) of the report; ``notes`` (if given) receives the
    footnotes of each table: ``{table name: [reason, ...]}``."""
    main, main_notes = _settings_table(cells)
    mia, mia_notes = _membership_table(cells)
    audit, aud_notes = _audit_table(cells)
    if notes is not None:
        notes["audit"] = aud_notes
        notes["membership"] = mia_notes
        notes["settings"] = main_notes
    return {"settings": main, "quality": _quality_table(cells), "membership": mia,
            "reconstruction": _reconstruction_table(cells), "paper": _paper_table(cells), "seeds": _seeds_table(cells),
            "audit": audit}  # fmt: skip


def _settings_table(cells: list[CellResult]) -> tuple[list[list[str]], list[str]]:
    notes = _Notes()
    main = [["setting", "c", "t_c", "protocol", "defence", "FID pooled [95%]", f"{KID_UNIT} pooled [95%]",
             "formal eps (view, linked)", "formal eps (view, unlinked: replace-one / add-remove)", "client FLOP share", "bytes sent / image", "rows not recorded", "status"]]  # fmt: skip
    for c in cells:
        eps = _fmt(c.view_epsilon)
        if c.view_epsilon is not None:
            eps += " " + notes.na(FEDAVG_NOTE if c.protocol == "fedavg" else ADJACENCY_NOTE)[4:]
            if c.secrets_derived_from_seed:  # beside the number it qualifies, cell by cell
                eps += " (derived secrets) " + notes.na(SECRETS_NOTE)[4:]
            if c.protocol != "fedavg":
                eps += " " + notes.na(THREAT_NOTE)[4:]
        if c.view_epsilon_unlinked is not None:
            unlinked = (f"{_fmt(c.view_epsilon_unlinked)} / {_fmt(c.view_epsilon_unlinked_add_remove)} "
                        + notes.na(THREAT_NOTE)[4:])
        elif c.view_epsilon is not None:
            unlinked = notes.na(c.unlinked_reason)
        else:
            unlinked = "n/a"
        main.append([c.label, _fmt(c.cut_ratio, "g"), str(c.t_c if c.t_c is not None else "n/a"), c.protocol, c.defence,
                     _fmt_iv(c.fid_ci, ".2f") if c.fid_ci else _fmt(c.fid, ".2f"), _kid_iv(c.kid_ci), eps, unlinked,
                     _fmt(c.client_flop_share, ".3f"),
                     _fmt(c.bytes_per_image, ".0f"), _fmt(c.not_recorded, ".0f"),
                     c.status + (f": {c.error}" if c.error else "")])  # fmt: skip
    return main, notes.items


def _membership_table(cells: list[CellResult]) -> tuple[list[list[str]], list[str]]:
    notes = _Notes()
    mia_methods = sorted({m for c in cells for t in c.membership.values() for m in t})
    targets = sorted({t for c in cells for t in c.membership})
    mia = [["setting", "target"] + [f"{m} AUC" for m in mia_methods] + [f"{m} TPR@1%FPR" for m in mia_methods]
           + ["strongest (chosen on a held-out half): AUC, TPR@1%FPR where resolvable", "GDP bound TPR@1%FPR"]]  # fmt: skip
    for c in cells:
        for t in targets:
            res = c.membership.get(t)
            if res is None:
                continue
            shown = t if t == "server" else t + (" (its upload)" if c.protocol == "fedavg" else " (released)")
            row = [c.label, shown] + [_mia_cell(res.get(m), key, notes) for key in ("auc", "tpr1") for m in mia_methods]
            best = c.membership_best.get(t)
            row.append(f"{best['method']}: AUC {_fmt_iv(best['auc'])}" + (f", TPR@1%FPR {_fmt_iv(best['tpr1'])}"
                       if best.get("tpr1") else "") if best else "n/a")  # fmt: skip
            gdp = c.membership_gdp.get(t)
            row.append(_fmt(gdp.tpr_bound_at_1pct_fpr, ".3f") if gdp is not None else "n/a")
            mia.append(row)
    return mia, notes.items


def _mia_cell(mm: Optional[dict], key: str, notes: _Notes) -> str:
    """One method's ``key`` (auc / tpr1) for one target: its interval, or why there is none."""
    if mm is None:
        return "not run"
    if not mm.get("applicable", True):
        return notes.na(mm.get("reason"))
    if mm.get(key) is None and (mm.get("unresolved") or {}).get(key):
        cp = (mm.get("unresolved_cp") or {}).get(key)
        return ("not resolvable" + (f"; CP [{cp[0]:.3f}, {cp[1]:.3f}]" if cp else "") + " "
                + notes.na(mm["unresolved"][key])[4:])  # fmt: skip
    return _fmt_iv(mm.get(key))


def _reconstruction_table(cells: list[CellResult]) -> list[list[str]]:
    rec_methods = sorted({m for c in cells for m in c.reconstruction})
    rec = [["setting"] + [f"{m} SSIM" for m in rec_methods] + [f"{m} PSNR dB" for m in rec_methods]
           + [f"{m} ident." for m in rec_methods] + ["chance ident."]]  # fmt: skip
    for c in cells:
        if c.reconstruction_sent is None:
            continue
        if not c.reconstruction_sent:
            what = "uploads, not images" if c.protocol == "fedavg" else "nothing sent"  # update inversion: not built
            rec.append([c.label] + [what] * (3 * len(rec_methods)) + ["-"])
            continue
        row = [c.label]
        for key, spec in (("ssim", ".3f"), ("psnr", ".1f"), ("ident", ".3f")):
            row += [_fmt_iv(c.reconstruction.get(m, {}).get(key), spec) if m in c.reconstruction else "n/a" for m in rec_methods]
        chances = [v.get("chance") for v in c.reconstruction.values() if v.get("chance") is not None]
        row.append(_fmt(chances[0], ".4f") if chances else "n/a")
        rec.append(row)
    return rec


def _quality_table(cells: list[CellResult]) -> list[list[str]]:
    quality = [["setting", "c", "n per client", "FID pooled [95%]", f"{KID_UNIT} pooled [95%]", "extractor"]]
    floors: dict = {}
    for c in cells:
        if c.extractor is None:
            continue
        quality.append([c.label, _fmt(c.cut_ratio, "g"), _fmt(c.floor["n"] if c.floor else None, ".0f"),
                        _fmt_iv(c.fid_ci, ".2f"), _kid_iv(c.kid_ci), f"{c.extractor} (sha256 {c.extractor_sha256[:12]})"])
        if c.floor is not None:  # one row per distinct floor (cells that share a split and n share it)
            key = (c.floor["fid"]["value"], c.floor["n"], c.floor["n_real"]) if c.floor["fid"] else (c.label,)
            floors.setdefault(key, (c.floor, []))[1].append(c.label)
    for fl, labels in floors.values():
        who = labels[0] if len(labels) == 1 else f"{len(labels)} settings"
        quality.append([f"{fl['label']} ({who})", "-", _fmt(fl["n"], ".0f"), _fmt_iv(fl["fid"], ".2f"), _kid_iv(fl["kid"]),
                        "same"])  # fmt: skip
    return quality


def _target_tag(c: CellResult) -> str:
    """``", upload of client K"`` where a fedavg cell's headline attack targets an upload."""
    kind, k = parse_target(c.view_target())
    return "" if kind == "server" else f", upload of client {k}"


def _paper_table(cells: list[CellResult]) -> list[list[str]]:
    paper = [["setting", f"{KID_UNIT}(server training images, client data)", "pixel MSE over pairs",
              "ours: strongest TPR@1%FPR (held-out)", "ours: best SSIM (held-out)"]]  # fmt: skip
    for c in cells:
        bm, br = c.best_membership(), c.best_reconstruction()
        paper.append([c.label, _fmt(None if c.paper_kid is None else c.paper_kid * KID_SCALE, ".4g"), _fmt(c.paper_mse, ".4f"),
                      f"{_fmt(bm[1]['value'], '.3f')} ({bm[0]}{_target_tag(c)})" if bm else "n/a",
                      f"{_fmt(br[1]['value'], '.3f')} ({br[0]})" if br else "n/a"])  # fmt: skip
    return paper


def _seeds_table(cells: list[CellResult]) -> list[list[str]]:
    seeds = [["setting", "seeds", "FID pooled: mean [95% across seeds]", f"{KID_UNIT} pooled: mean [95% across seeds]",
              "strongest TPR@1%FPR", "strongest AUC", "best SSIM",
              f"median bootstrap width (FID / {KID_UNIT} / TPR / AUC / SSIM)"]]  # fmt: skip
    for g in across_seeds(cells):
        cell = lambda key, spec=".3f": ("n/a" if g.get(key) is None else  # noqa: E731
                                        f"{_fmt(g[key]['mean'], spec)} [{_fmt(g[key]['lo'], spec)}, {_fmt(g[key]['hi'], spec)}]")
        kid = g.get("kid")
        kid = None if kid is None else {k: None if v is None else v * KID_SCALE for k, v in kid.items()}
        g = {**g, "kid": kid}
        widths = " / ".join(_fmt((g.get(k) or {}).get("bootstrap_width"), {"fid": ".2f", "kid": ".4g"}.get(k, ".3f"))
                            for k in ("fid", "kid", "tpr1", "auc", "ssim"))  # fmt: skip
        seeds.append([g["setting"], str(g["seeds"]), cell("fid", ".2f"), cell("kid", ".4g"), cell("tpr1"), cell("auc"),
                      cell("ssim"), widths])  # fmt: skip
    return seeds


def _unlinked_cell(u: Optional[dict], notes: "_Notes") -> str:
    """The unlinked claim's audit: formal, best view-only bound and ratio, or why it is not audited."""
    if not u:
        return "n/a"
    if u["check"] == "not audited":
        return "not audited " + notes.na(u["reason"])[4:]
    ratio = f" ({_fmt(u['ratio'], '.2f')})" if u.get("ratio") is not None else ""
    return f"{_fmt(u['formal_epsilon'], '.4g')}: {_fmt(u['epsilon_lb'], '.3g')}{ratio}, {u['best']}, {u['check']}"


def _audit_table(cells: list[CellResult]) -> tuple[list[list[str]], list[str]]:
    notes = _Notes()
    audit = [["setting", "target", "canaries", "claim", "formal eps (mu)", "mu lower bound (GDP route)",
              "eps lower bound (route)", "ratio", "canaries certify at most eps", "headline method (chosen on a held-out half)",
              "best attack without ground-truth links", "unlinked eps: best view-only bound (ratio)", "check", "minutes"]]  # fmt: skip
    for c in cells:
        for a in c.audits:
            vo = a["view_only"]
            formal = _fmt(a["formal_epsilon"], ".4g") + (f" ({_fmt(a['formal_mu'], '.4g')})" if a.get("formal_mu") is not None else "")
            if c.secrets_derived_from_seed:
                formal += " (derived secrets) " + notes.na(SECRETS_NOTE)[4:]
            mu = f"{_fmt(a['mu_lb'], '.3g')} ({a['mu_method']})" if a.get("mu_lb") is not None else "n/a"
            eps = f"{_fmt(a['epsilon_lb'], '.3g')} ({a['epsilon_route'] or 'none'}, {a['epsilon_method'] or 'no method'})"
            audit.append([c.label, a["target"], f"{a['canaries']} {a['canary_kind']} ({a['game']})", a["claim"], formal,
                          mu, eps, (f"{_fmt(a['ratio'], '.2f')} ({a['ratio_of']})" if a["ratio"] is not None else "n/a"),
                          _fmt(a["max_certifiable"], ".3g"), str(a["best"] or "none"),
                          f"{_fmt(vo['epsilon_lb'], '.3g')} ({vo['method']}, {vo['route']}, AUC {_fmt(vo['auc'], '.3f')})" if vo else "n/a",
                          _unlinked_cell(a.get("unlinked"), notes),
                          a["check"] + "".join(" " + notes.na(n)[4:] for n in ([a["message"]] if a["check"] == "failed" else []) + a["notes"]),
                          _fmt(a["seconds"] / 60, ".1f")])  # fmt: skip
    return audit, notes.items
