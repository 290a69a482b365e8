"""``view-lrt`` against the composed view test (``view-composed``) on trained runs, as a table.

For every run given (a run directory, or a sweep directory: its cells), on a copy so that the
run's own membership files stay as they are, scores the server target with

* ``view-lrt``: log-mean-exp of the per-release likelihood ratios (one release is the candidate's);
* ``view-composed``, ``R`` unknown (the default: a uniform mixture over ``R = 1..64``);
* ``view-composed``, ``R`` given: the expected number of releases of a member,
  ``epochs x (T - t_c) / T`` (what a server can compute from the message counts and the cut),

and prints AUC and TPR at 1% FPR with their bootstrap intervals (or why TPR@1% is not resolvable).

    .venv/bin/python benchmarks/composed_vs_lrt.py runs/demo [--n-boot 1000]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dirs", nargs="+")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--all", action="store_true", help="also fixed-noise, DP and c in {0, 1} cells")
    args = ap.parse_args()

    from collafuse_privacy.eval.membership import run_membership
    from collafuse_privacy.numbers import fmt_interval
    from collafuse_privacy.run.directory import RunDir

    runs = []
    for d in map(Path, args.dirs):
        runs += sorted(p.parent for p in d.glob("cells/*/config.yaml")) if (d / "cells").is_dir() else [d]
    rows = []
    for run in runs:
        rd = RunDir(run)
        cfg, privacy = rd.config(), rd.metrics("privacy")
        c = cfg.protocol.cut_ratio
        if privacy is None:
            print(f"{run}: no metrics/privacy.json (train it first); skipped")
            continue
        if not args.all and (cfg.protocol.fixed_noise or cfg.defense.client_dp.enabled or cfg.protocol.kind != "cut-image"
                             or c is None or not 0 < c < 1):  # fmt: skip
            continue
        T = cfg.diffusion.timesteps
        t_c = round(c * T)
        R = max(1, round(privacy.view.epochs * (T - t_c) / T))
        variants = [("view-lrt", "view-lrt", {}), ("view-composed (R unknown)", "view-composed", {}),
                    (f"view-composed (R = {R})", "view-composed", {"releases": R})]  # fmt: skip
        with tempfile.TemporaryDirectory() as tmp:
            copy = Path(tmp) / "run"
            shutil.copytree(run, copy, ignore=shutil.ignore_patterns("checkpoints", "figures"))
            for label, name, opts in variants:
                t0 = time.perf_counter()
                res = run_membership(copy, methods=[name], n_boot=args.n_boot, log=lambda m: None, options={name: opts})
                m = res.methods[name]
                tpr = fmt_interval(m.tpr_at_1pct_fpr) if m.tpr_at_1pct_fpr else m.unresolved.get("tpr_at_1pct_fpr", "n/a")
                rows.append((f"{c:g}", label, fmt_interval(m.auc), tpr, f"{time.perf_counter() - t0:.0f}",
                             f"{res.n_members}/{res.n_nonmembers}"))  # fmt: skip
                print(" | ".join(rows[-1]), flush=True)
    print()
    print("| c | method | AUC [95% CI] | TPR@1%FPR [95% CI] | s | members/non-members |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
