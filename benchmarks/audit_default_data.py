"""The privacy audit on the default data as it ships: mnist5k, fresh hand-over noise, the demo's
models (micro UNet, T = 100, 300 rounds, 3 clients), worst-case and in-distribution canaries,
several training seeds, the clients' secrets from the OS (so the formal number holds for a server
that knows the config). Prints one row per (canary kind, seed) and the spread over seeds.

    .venv/bin/python benchmarks/audit_default_data.py [--out runs/audit-default] [--cut 0.8]
        [--seeds 0 1 2] [--canaries-worst 1000] [--canaries-in 450] [--jobs 2]

Each audit is ``collafuse-privacy audit`` in its own process with one torch thread, ``--jobs`` at a
time; rerunning resumes (finished audits are scored again without training). The default cut is
c = 0.8, where the formal number is in a range an audit can test (at c = 0.2 and 0.5 the view's
formal mu per image is in the tens: every test is perfect and certifies only what the canary count
allows). In-distribution canaries are pairs of held-out images (at most half the held-out pool:
450 slots with mnist5k's 900 held-out images).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

DEMO = ["diffusion.timesteps=100", "model.preset=micro", "train.steps=300", "train.checkpoint_every=100",
        "secrets.derive_from_seed=false"]  # fmt: skip


def run_one(out: Path, kind: str, m: int, seed: int, cut: float) -> tuple[str, int, Path, float]:
    d = out / f"{kind}-seed{seed}"
    args = [str(Path(sys.executable).parent / "collafuse-privacy"), "--threads", "1", "audit", "--out", str(d),
            "--canaries", str(m), "--kind", kind, "--quiet"]
    for kv in DEMO + [f"seed={seed}", f"protocol.cut_ratio={cut}"]:
        args += ["--set", kv]
    t0 = time.perf_counter()
    r = subprocess.run(args, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if r.returncode not in (0, 1):  # 1: a failed check, which is a result
        sys.exit(f"{d}: exit {r.returncode}: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ''}")
    return kind, seed, d, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/audit-default")
    ap.add_argument("--cut", type=float, default=0.8)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--canaries-worst", type=int, default=1000)
    ap.add_argument("--canaries-in", type=int, default=450)
    ap.add_argument("--jobs", type=int, default=2)
    a = ap.parse_args()
    out = Path(a.out)
    jobs = [(kind, m, s) for kind, m in (("worst-case", a.canaries_worst), ("in-distribution", a.canaries_in))
            for s in a.seeds]  # fmt: skip
    t0 = time.perf_counter()
    with ThreadPoolExecutor(a.jobs) as pool:
        done = list(pool.map(lambda j: run_one(out, j[0], j[1], j[2], a.cut), jobs))
    print(f"c = {a.cut:g}, fresh noise, mnist5k 16x16, micro UNet, T = 100, 300 rounds; {len(done)} audits in "
          f"{time.perf_counter() - t0:.0f} s with {a.jobs} at a time")  # fmt: skip
    head = ("kind", "seed", "formal eps", "formal mu", "canaries' own formal mu", "mu lb (GDP)", "ratio", "eps lb (route)", "known-rel. AUC",
            "view-lrt AUC / one-run eps", "releases min/med/max", "strata: count slots mu_lb/formal", "s")
    print(" | ".join(head))
    by_kind: dict[str, list[float]] = {}
    for kind, seed, d, sec in done:
        r = json.loads((d / "metrics" / "audit.json").read_text())
        kr, vl = r["methods"]["known-release"], r["methods"].get("view-lrt", {})
        strata = "; ".join(f"{x['releases']}x {x['slots']} {x['mu_lb'] if x['mu_lb'] is None else round(x['mu_lb'], 3)}"
                           f"/{x['formal_mu']:.3g}" for x in r.get("strata", [])) or "none with >= 40 slots"  # fmt: skip
        rel = r["releases"]
        row = (kind, seed, f"{r['formal_epsilon']:.4g}", f"{r['formal_mu']:.4g}", f"{r['canary_formal_mu']:.4g}",
               f"{r['mu_lb']:.3f}" if r["mu_lb"] is not None else "n/a",
               f"{r['ratio']:.2f}" if r["ratio"] is not None else "n/a",
               f"{r['epsilon_lb']:.3f} ({r['epsilon_route']})", f"{kr['auc']:.3f}",
               f"{vl.get('auc', float('nan')):.3f} / {(vl.get('one_run') or {}).get('epsilon', float('nan')):.3f}",
               f"{rel['min']}/{rel['median']:g}/{rel['max']}", strata, f"{sec:.0f}")  # fmt: skip
        print(" | ".join(map(str, row)))
        if r["ratio"] is not None:
            by_kind.setdefault(kind, []).append(r["ratio"])
    for kind, ratios in by_kind.items():
        sd = statistics.stdev(ratios) if len(ratios) > 1 else float("nan")
        print(f"{kind}: ratio of mu over {len(ratios)} seeds: mean {statistics.mean(ratios):.3f}, sd {sd:.3f}, "
              f"range {min(ratios):.3f}-{max(ratios):.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
