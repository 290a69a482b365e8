"""Render the report: tables, ``report.md``, a self-contained ``report.html`` (images as
data URIs, no scripts) and, when Chromium is installed, a screenshot of its first screen."""

from __future__ import annotations

import base64
import html
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Callable, Optional

from collafuse_privacy.errors import UserError
from collafuse_privacy.io import atomic_write_bytes, atomic_write_text
from collafuse_privacy.lock import locked
from collafuse_privacy.numbers import fmt as _fmt
from collafuse_privacy.numbers import fmt_interval

from .analyse import across_seeds, reading
from ..quality import KID_SCALE, KID_UNIT
from .collect import CellResult, collect
from .figures import tradeoff_figure


def _fmt_iv(iv, spec=".3f") -> str:
    return fmt_interval(iv, spec)


def _kid_iv(iv) -> str:
    """A KID interval in its printed unit (KID_UNIT)."""
    return fmt_interval(None if iv is None else {k: iv[k] * KID_SCALE for k in ("value", "lo", "hi")}, ".4g")


ADJACENCY_NOTE = ("formal eps (view): GDP of what crosses the cut under replace-one adjacency (one image replaced by "
                  "any other, L2 sensitivity 2 sqrt(d)); the client DP-SGD eps in the defence column is Opacus' "
                  "add/remove adjacency: the two answer different questions and are not comparable")
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


AUDIT_READING = (
    "The formal epsilon is a worst case: it holds against a server that knows which releases belong to "
    "the image in question and faces the most different pair of images the pixel range allows. The audit "
    "plays exactly that game: it inserts canaries (by default images at the largest possible distance), "
    "each with a coin flip, trains as usual, and turns the best test's true and false positive rates "
    "into lower bounds that hold with 95% confidence. The view's guarantee is a GDP claim, so its headline is "
    "mu: the GDP route bounds mu (no mu-GDP claim below it can hold), not epsilon. Epsilon bounds come only "
    "from assumption-free routes, each named: Clopper-Pearson where every slot is an independent trial (the "
    "auditor's test scores each canary from its own releases), the one-run bound of Steinke et al. (2023) "
    "where one view or one model scores every slot. When a bound comes close to its formal number, the "
    "accounting is tight for this implementation as it runs; a bound above it is a "
    "failed check (the pipeline sends more than it accounts for). The membership table above asks a "
    "different question: how much a server without those links learns about typical images, which it "
    "must first find among a client's thousands of releases. That search is why the attacks from the "
    "view alone sit far below the formal number, and it is not a guarantee: a server with side "
    "information about which releases to look at is the auditor.")


def tables(cells: list[CellResult], notes: Optional[dict] = None) -> dict[str, list[list[str]]]:
    """Named tables (header row first) of the report; ``notes`` (if given) receives the
    footnotes of each table: ``{table name: [reason, ...]}``."""
    mia_notes, main_notes = _Notes(), _Notes()
    main = [["setting", "c", "t_c", "protocol", "defence", "FID pooled [95%]", f"{KID_UNIT} pooled [95%]",
             "formal eps (view, linked)", "formal eps (view, unlinked: replace-one / add-remove)", "client FLOP share", "bytes sent / image", "rows not recorded", "status"]]  # fmt: skip
    for c in cells:
        eps = _fmt(c.view_epsilon)
        if c.view_epsilon is not None:
            eps += " " + main_notes.na(ADJACENCY_NOTE)[4:]
            if c.secrets_derived_from_seed:  # beside the number it qualifies, cell by cell
                eps += " (derived secrets) " + main_notes.na(SECRETS_NOTE)[4:]
            eps += " " + main_notes.na(THREAT_NOTE)[4:]
        if c.view_epsilon_unlinked is not None:
            unlinked = (f"{_fmt(c.view_epsilon_unlinked)} / {_fmt(c.view_epsilon_unlinked_add_remove)} "
                        + main_notes.na(THREAT_NOTE)[4:])
        elif c.view_epsilon is not None:
            unlinked = main_notes.na(c.unlinked_reason)
        else:
            unlinked = "n/a"
        main.append([c.label, _fmt(c.cut_ratio, "g"), str(c.t_c if c.t_c is not None else "n/a"), c.protocol, c.defence,
                     _fmt_iv(c.fid_ci, ".2f") if c.fid_ci else _fmt(c.fid, ".2f"), _kid_iv(c.kid_ci), eps, unlinked,
                     _fmt(c.client_flop_share, ".3f"),
                     _fmt(c.bytes_per_image, ".0f"), _fmt(c.not_recorded, ".0f"),
                     c.status + (f": {c.error}" if c.error else "")])  # fmt: skip
    mia_methods = sorted({m for c in cells for t in c.membership.values() for m in t})
    targets = sorted({t for c in cells for t in c.membership})
    mia = [["setting", "target"] + [f"{m} AUC" for m in mia_methods] + [f"{m} TPR@1%FPR" for m in mia_methods]
           + ["strongest (chosen on a held-out half): AUC, TPR@1%FPR where resolvable", "GDP bound TPR@1%FPR"]]  # fmt: skip
    for c in cells:
        for t in targets:
            res = c.membership.get(t)
            if res is None:
                continue
            row = [c.label, t]
            for key in ("auc", "tpr1"):
                for m in mia_methods:
                    mm = res.get(m)
                    if mm is None:
                        row.append("not run")
                    elif not mm.get("applicable", True):
                        row.append(mia_notes.na(mm.get("reason")))
                    elif mm.get(key) is None and (mm.get("unresolved") or {}).get(key):
                        cp = (mm.get("unresolved_cp") or {}).get(key)
                        row.append("not resolvable" + (f"; CP [{cp[0]:.3f}, {cp[1]:.3f}]" if cp else "") + " "
                                   + mia_notes.na(mm["unresolved"][key])[4:])  # fmt: skip
                    else:
                        row.append(_fmt_iv(mm.get(key)))
            best = c.membership_best.get(t)
            row.append(f"{best['method']}: AUC {_fmt_iv(best['auc'])}" + (f", TPR@1%FPR {_fmt_iv(best['tpr1'])}"
                       if best.get("tpr1") else "") if best else "n/a")  # fmt: skip
            gdp = c.membership_gdp.get(t)
            row.append(_fmt(gdp.tpr_bound_at_1pct_fpr, ".3f") if gdp is not None else "n/a")
            mia.append(row)
    rec_methods = sorted({m for c in cells for m in c.reconstruction})
    rec = [["setting"] + [f"{m} SSIM" for m in rec_methods] + [f"{m} PSNR dB" for m in rec_methods]
           + [f"{m} ident." for m in rec_methods] + ["chance ident."]]  # fmt: skip
    for c in cells:
        if c.reconstruction_sent is None:
            continue
        if not c.reconstruction_sent:
            rec.append([c.label] + ["nothing sent"] * (3 * len(rec_methods)) + ["-"])
            continue
        row = [c.label]
        for key, spec in (("ssim", ".3f"), ("psnr", ".1f"), ("ident", ".3f")):
            row += [_fmt_iv(c.reconstruction.get(m, {}).get(key), spec) if m in c.reconstruction else "n/a" for m in rec_methods]
        chances = [v.get("chance") for v in c.reconstruction.values() if v.get("chance") is not None]
        row.append(_fmt(chances[0], ".4f") if chances else "n/a")
        rec.append(row)
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
    paper = [["setting", f"{KID_UNIT}(server training images, client data)", "pixel MSE over pairs",
              "ours: strongest TPR@1%FPR (held-out)", "ours: best SSIM (held-out)"]]  # fmt: skip
    for c in cells:
        bm, br = c.best_membership(), c.best_reconstruction()
        paper.append([c.label, _fmt(None if c.paper_kid is None else c.paper_kid * KID_SCALE, ".4g"), _fmt(c.paper_mse, ".4f"),
                      f"{_fmt(bm[1]['value'], '.3f')} ({bm[0]})" if bm else "n/a",
                      f"{_fmt(br[1]['value'], '.3f')} ({br[0]})" if br else "n/a"])  # fmt: skip
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
    aud_notes = _Notes()
    audit = [["setting", "target", "canaries", "claim", "formal eps (mu)", "mu lower bound (GDP route)",
              "eps lower bound (route)", "ratio", "canaries certify at most eps", "headline method (chosen on a held-out half)",
              "best attack without ground-truth links", "check", "minutes"]]  # fmt: skip
    for c in cells:
        for a in c.audits:
            vo = a["view_only"]
            formal = _fmt(a["formal_epsilon"], ".4g") + (f" ({_fmt(a['formal_mu'], '.4g')})" if a.get("formal_mu") is not None else "")
            if c.secrets_derived_from_seed:
                formal += " (derived secrets) " + aud_notes.na(SECRETS_NOTE)[4:]
            mu = f"{_fmt(a['mu_lb'], '.3g')} ({a['mu_method']})" if a.get("mu_lb") is not None else "n/a"
            eps = f"{_fmt(a['epsilon_lb'], '.3g')} ({a['epsilon_route'] or 'none'}, {a['epsilon_method'] or 'no method'})"
            audit.append([c.label, a["target"], f"{a['canaries']} {a['canary_kind']} ({a['game']})", a["claim"], formal,
                          mu, eps, (f"{_fmt(a['ratio'], '.2f')} ({a['ratio_of']})" if a["ratio"] is not None else "n/a"),
                          _fmt(a["max_certifiable"], ".3g"), str(a["best"] or "none"),
                          f"{_fmt(vo['epsilon_lb'], '.3g')} ({vo['method']}, {vo['route']}, AUC {_fmt(vo['auc'], '.3f')})" if vo else "n/a",
                          a["check"] + "".join(" " + aud_notes.na(n)[4:] for n in ([a["message"]] if a["check"] == "failed" else []) + a["notes"]),
                          _fmt(a["seconds"] / 60, ".1f")])  # fmt: skip
    if notes is not None:
        notes["audit"] = aud_notes.items
        notes["membership"] = mia_notes.items
        notes["settings"] = main_notes.items
    return {"settings": main, "quality": quality, "membership": mia, "reconstruction": rec, "paper": paper,
            "seeds": seeds, "audit": audit}  # fmt: skip


def _md_table(rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    out += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return "\n".join(out)


def _html_table(rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(x)}</td>" for x in r) + "</tr>" for r in rows[1:])
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


CSS = """body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:1.5em auto;max-width:1280px;color:#222;padding:0 1em}
h1{font-size:1.5em;margin:.2em 0}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.82em;margin:.6em 0;display:block;overflow-x:auto}
td,th{border:1px solid #ddd;padding:3px 6px;text-align:left;white-space:nowrap}th{background:#f4f4f4}
img{max-width:100%;border:1px solid #eee}.fig{margin:.5em 0}.grid{display:flex;flex-wrap:wrap;gap:12px}
.grid figure{margin:0;max-width:420px}figcaption{font-size:.8em;color:#555}p.lead{color:#444;margin:.3em 0 .8em}ul.notes{font-size:.8em;color:#555;list-style:none;padding-left:.5em}"""


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode()


def write_report(dirs, out: Optional[str | Path] = None, screenshot: bool = True,
                 log: Callable[[str], None] = print) -> dict:  # fmt: skip
    """Collect, plot and write ``report.md`` / ``report.html`` / ``figures/``; returns paths and rows."""
    dirs = [Path(d) for d in dirs]
    cells = collect(dirs)
    out = Path(out) if out else dirs[0]
    if out.exists() and not out.is_dir():
        raise UserError(f"report --out {out}: exists and is not a folder")
    with locked(out):
        return _write_report(dirs, cells, out, screenshot, log)


def _write_report(dirs, cells, out: Path, screenshot: bool, log) -> dict:
    fig_dir = out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    tradeoff = fig_dir / "tradeoff.png"
    tradeoff_figure(cells, tradeoff)
    copied: dict[str, list[tuple[str, Path]]] = {"roc": [], "reconstruction": [], "samples": []}
    for i, c in enumerate(cells):
        for name, p in c.figures.items():
            if not Path(p).is_file():
                continue
            kind = "roc" if name.startswith("roc") else name
            dst = fig_dir / f"{i:02d}-{name.replace(':', '')}.png"
            atomic_write_bytes(dst, Path(p).read_bytes())
            copied.setdefault(kind, []).append((f"{c.label} ({name})" if kind == "roc" else c.label, dst))
    notes: dict = {}
    tabs = tables(cells, notes)
    words = reading(cells)
    ext = next((f"{c.extractor}, weights sha256 {c.extractor_sha256[:12]}" for c in cells if c.extractor), None)
    title = "CollaFuse privacy report: " + ", ".join(d.name for d in dirs)
    lead = (f"{len(cells)} setting{'' if len(cells) == 1 else 's'}. Utility: FID/KID of collaborative samples against each client's held-out "
            f"images ({ext or 'no quality metrics found'}; 95% bootstrap intervals over samples; {KID_UNIT}), read "
            "beside the floor: real members against held-out images, same extractor and n. Disclosure: what an honest-but-curious server "
            "infers from its view alone (membership and reconstruction attacks, scored against ground truth "
            "with bootstrap 95% intervals over candidates; the strongest method of each family is chosen on one "
            "half of the candidates and scored on the other), and the formal GDP epsilon of that view.")  # fmt: skip
    if any(c.secrets_derived_from_seed for c in cells):
        lead += " " + SECRETS_NOTE
    sections = [("Trade-off", None), ("Reading", None), ("Settings", "settings"),
                ("Quality, beside the floor (members vs held-out, same extractor and n)", "quality"),
                ("Membership inference", "membership"),
                ("Reconstruction", "reconstruction"), ("The paper's disclosure figures beside ours", "paper")]  # fmt: skip
    if len(tabs["quality"]) == 1:
        sections = [x for x in sections if x[1] != "quality"]
    if len(tabs["audit"]) > 1:
        at = sections.index(("Reconstruction", "reconstruction"))
        sections.insert(at, ("Privacy audit: an empirical epsilon beside the formal one", "audit"))
    if len(tabs["seeds"]) > 1:
        sections.append(("Across training seeds (training randomness beside the candidate bootstrap)", "seeds"))

    md = [f"# {title}", "", lead, "", "![trade-off](figures/tradeoff.png)", "", "## Reading", ""]
    md += [f"- {w}" for w in words]
    for head, key in sections[2:]:
        md += ["", f"## {head}", ""] + ([AUDIT_READING, ""] if key == "audit" else []) + [_md_table(tabs[key])]
        md += [""] + [f"[{i + 1}] {n}  " for i, n in enumerate(notes.get(key, []))]
    for kind, head in (("roc", "ROC curves (log-log, with the GDP bound)"), ("reconstruction", "Reconstructions"),
                       ("samples", "Samples per client")):  # fmt: skip
        if copied.get(kind):
            md += ["", f"## {head}", ""] + [f"![{lab}](figures/{p.name})" for lab, p in copied[kind]]
    atomic_write_text(out / "report.md", "\n".join(md) + "\n")

    body = [f"<h1>{html.escape(title)}</h1>", f"<p class='lead'>{html.escape(lead)}</p>",
            f"<div class='fig'><img alt='trade-off plot' src='{_data_uri(tradeoff)}'></div>",
            "<h2>Reading</h2><ul>" + "".join(f"<li>{html.escape(w)}</li>" for w in words) + "</ul>"]  # fmt: skip
    for head, key in sections[2:]:
        foot = "".join(f"<li>[{i + 1}] {html.escape(n)}</li>" for i, n in enumerate(notes.get(key, [])))
        body.append(f"<h2>{html.escape(head)}</h2>" + (f"<p>{html.escape(AUDIT_READING)}</p>" if key == "audit" else "")
                    + _html_table(tabs[key])
                    + (f"<ul class='notes'>{foot}</ul>" if foot else ""))  # fmt: skip
    for kind, head in (("roc", "ROC curves (log-log, with the GDP bound)"), ("reconstruction", "Reconstructions"),
                       ("samples", "Samples per client")):  # fmt: skip
        if copied.get(kind):
            figs = "".join(f"<figure><img alt='{html.escape(lab)}' src='{_data_uri(p)}'><figcaption>{html.escape(lab)}"
                           f"</figcaption></figure>" for lab, p in copied[kind])  # fmt: skip
            body.append(f"<h2>{html.escape(head)}</h2><div class='grid'>{figs}</div>")
    page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<link rel='icon' href='data:,'><style>{CSS}</style></head><body>{''.join(body)}</body></html>")  # fmt: skip
    atomic_write_text(out / "report.html", page)
    result = {"report_md": str(out / "report.md"), "report_html": str(out / "report.html"),
              "figures": sorted(str(p) for p in fig_dir.glob("*.png")), "rows": [c.to_row() for c in cells],
              "reading": words}  # fmt: skip
    if screenshot:
        result["screenshot"] = screenshot_report(out / "report.html", out / "report-screenshot.png", log)
    return result


def chromium_path() -> Optional[str]:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        p = shutil.which(name)
        if p:
            return p
    return None


def screenshot_report(page: Path, png: Path, log: Callable[[str], None] = print) -> dict:
    """First screen of the report in headless Chromium, and its console errors (if Chromium is installed)."""
    exe = chromium_path()
    if exe is None:
        log("no Chromium found: skipped the report screenshot (install Debian's 'chromium' to get one)")
        return {"taken": False, "reason": "chromium not installed"}
    with tempfile.TemporaryDirectory() as profile:
        tmp_png = Path(profile) / "shot.png"
        cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", "--hide-scrollbars",
               "--window-size=1366,900", f"--screenshot={tmp_png}", Path(page).resolve().as_uri()]  # fmt: skip
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        except (subprocess.TimeoutExpired, OSError) as exc:
            log(f"Chromium screenshot failed: {exc}")
            return {"taken": False, "reason": str(exc)}
        console = [ln for ln in proc.stderr.splitlines() if "CONSOLE" in ln or "Uncaught" in ln]
        if not tmp_png.is_file():
            log(f"Chromium produced no screenshot (exit {proc.returncode})")
            return {"taken": False, "reason": f"chromium exit {proc.returncode}", "console": console}
        atomic_write_bytes(png, tmp_png.read_bytes())
    log(f"screenshot of the report's first screen: {png} ({len(console)} console messages)")
    return {"taken": True, "path": str(png), "console_messages": console}
