"""Render the report: ``report.md``, a self-contained ``report.html`` (images as data URIs, no
scripts) and, when Chromium is installed, a screenshot of its first screen. The tables are
:mod:`.tabulate`'."""

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

from ..quality import KID_UNIT
from .analyse import reading
from .collect import CellResult, collect
from .figures import tradeoff_figure
from .tabulate import SECRETS_NOTE, tables  # noqa: F401  (tables: re-exported)

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




def _write_report(dirs, cells: list[CellResult], out: Path, screenshot: bool, log) -> dict:
    fig_dir = out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    tradeoff = fig_dir / "tradeoff.png"
    tradeoff_figure(cells, tradeoff)
    copied = _copy_figures(cells, fig_dir)
    notes: dict = {}
    tabs = tables(cells, notes)
    words = reading(cells)
    title = "CollaFuse privacy report: " + ", ".join(d.name for d in dirs)
    lead = _lead(cells)
    sections = _sections(tabs)
    page = _Page(title, lead, words, sections, tabs, notes, copied)
    atomic_write_text(out / "report.md", page.markdown())
    atomic_write_text(out / "report.html", page.html(tradeoff))
    result = {"report_md": str(out / "report.md"), "report_html": str(out / "report.html"),
              "figures": sorted(str(p) for p in fig_dir.glob("*.png")), "rows": [c.to_row() for c in cells],
              "reading": words}  # fmt: skip
    if screenshot:
        result["screenshot"] = screenshot_report(out / "report.html", out / "report-screenshot.png", log)
    return result


def _copy_figures(cells: list[CellResult], fig_dir: Path) -> dict[str, list[tuple[str, Path]]]:
    """Each cell's own figures copied beside the report, by kind: ``{kind: [(label, path), ...]}``."""
    copied: dict[str, list[tuple[str, Path]]] = {"roc": [], "reconstruction": [], "samples": []}
    for i, c in enumerate(cells):
        for name, p in c.figures.items():
            if not Path(p).is_file():
                continue
            kind = "roc" if name.startswith("roc") else name
            dst = fig_dir / f"{i:02d}-{name.replace(':', '')}.png"
            atomic_write_bytes(dst, Path(p).read_bytes())
            copied.setdefault(kind, []).append((f"{c.label} ({name})" if kind == "roc" else c.label, dst))
    return copied


def _lead(cells: list[CellResult]) -> str:
    """The paragraph under the title: what the axes measure, and how."""
    ext = next((f"{c.extractor}, weights sha256 {c.extractor_sha256[:12]}" for c in cells if c.extractor), None)
    lead = (f"{len(cells)} setting{'' if len(cells) == 1 else 's'}. Utility: FID/KID of collaborative samples against each client's held-out "
            f"images ({ext or 'no quality metrics found'}; 95% bootstrap intervals over samples; {KID_UNIT}), read "
            "beside the floor: real members against held-out images, same extractor and n. Disclosure: what an honest-but-curious server "
            "infers from its view alone (membership and reconstruction attacks, scored against ground truth "
            "with bootstrap 95% intervals over candidates; the strongest method of each family is chosen on one "
            "half of the candidates and scored on the other), and the formal GDP epsilon of that view.")  # fmt: skip
    if any(c.secrets_derived_from_seed for c in cells):
        lead += " " + SECRETS_NOTE
    return lead


def _sections(tabs: dict) -> list[tuple[str, Optional[str]]]:
    """``(heading, table name)`` in the report's order; tables with no rows left out."""
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
    return sections


FIGURE_SECTIONS = (("roc", "ROC curves (log-log, with the GDP bound)"), ("reconstruction", "Reconstructions"),
                   ("samples", "Samples per client"))  # fmt: skip


class _Page:
    """The report's content, written out as Markdown or as one self-contained HTML page."""

    def __init__(self, title: str, lead: str, words: list[str], sections: list, tabs: dict, notes: dict, copied: dict):
        self.title, self.lead, self.words, self.sections = title, lead, words, sections
        self.tabs, self.notes, self.copied = tabs, notes, copied

    def markdown(self) -> str:
        md = [f"# {self.title}", "", self.lead, "", "![trade-off](figures/tradeoff.png)", "", "## Reading", ""]
        md += [f"- {w}" for w in self.words]
        for head, key in self.sections[2:]:
            md += ["", f"## {head}", ""] + ([AUDIT_READING, ""] if key == "audit" else []) + [_md_table(self.tabs[key])]
            md += [""] + [f"[{i + 1}] {n}  " for i, n in enumerate(self.notes.get(key, []))]
        for kind, head in FIGURE_SECTIONS:
            if self.copied.get(kind):
                md += ["", f"## {head}", ""] + [f"![{lab}](figures/{p.name})" for lab, p in self.copied[kind]]
        return "\n".join(md) + "\n"

    def html(self, tradeoff: Path) -> str:
        body = [f"<h1>{html.escape(self.title)}</h1>", f"<p class='lead'>{html.escape(self.lead)}</p>",
                f"<div class='fig'><img alt='trade-off plot' src='{_data_uri(tradeoff)}'></div>",
                "<h2>Reading</h2><ul>" + "".join(f"<li>{html.escape(w)}</li>" for w in self.words) + "</ul>"]  # fmt: skip
        for head, key in self.sections[2:]:
            foot = "".join(f"<li>[{i + 1}] {html.escape(n)}</li>" for i, n in enumerate(self.notes.get(key, [])))
            body.append(f"<h2>{html.escape(head)}</h2>" + (f"<p>{html.escape(AUDIT_READING)}</p>" if key == "audit" else "")
                        + _html_table(self.tabs[key])
                        + (f"<ul class='notes'>{foot}</ul>" if foot else ""))  # fmt: skip
        for kind, head in FIGURE_SECTIONS:
            if self.copied.get(kind):
                figs = "".join(f"<figure><img alt='{html.escape(lab)}' src='{_data_uri(p)}'><figcaption>{html.escape(lab)}"
                               f"</figcaption></figure>" for lab, p in self.copied[kind])  # fmt: skip
                body.append(f"<h2>{html.escape(head)}</h2><div class='grid'>{figs}</div>")
        return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>"
                f"<link rel='icon' href='data:,'><style>{CSS}</style></head><body>{''.join(body)}</body></html>")  # fmt: skip


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
