"""Wall time of `train` in-process against the same training through a localhost Flower
deployment (`collafuse-privacy flower run --engine deployment`), side by side in one run.

    .venv/bin/python benchmarks/flower_wall_time.py [--set KEY=VALUE ...] [--engine deployment|simulation]

Prints both times, their ratio, and whether the two runs' server_view/ and final weights are
bit-identical. Needs the flower extra (pip install -e '.[flower]').
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
import time
from pathlib import Path

from collafuse_privacy.config import load_config
from collafuse_privacy.flower.launch import run_flower
from collafuse_privacy.training import train


def digest(run: Path) -> dict[str, str]:
    names = [p for p in sorted(run.rglob("*.safetensors"))  # flower/: the parties' own folders
             if p.relative_to(run).parts[0] == "server_view"
             or (p.relative_to(run).parts[0] == "checkpoints" and p.parent.name.startswith("step-"))]
    latest = max((p.parent.name for p in names if p.parent.name.startswith("step-")), default=None)
    return {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest() for p in names
            if not p.parent.name.startswith("step-") or p.parent.name == latest}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--engine", default="deployment", choices=["deployment", "simulation"])
    ap.add_argument("--keep", default=None, metavar="DIR", help="Keep both runs in DIR (default: a temporary folder).")
    args = ap.parse_args()
    cfg = load_config(None, ["device=cpu"] + args.overrides)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = args.keep or tmp
        a, b = Path(tmp) / "in-process", Path(tmp) / "flower"
        t0 = time.perf_counter()
        train(cfg, a, device="cpu", quiet=True)
        t_in = time.perf_counter() - t0
        t0 = time.perf_counter()
        run_flower(cfg, b, engine=args.engine, device="cpu", quiet=True, secrets=_secrets(a), sample=False)
        t_fl = time.perf_counter() - t0
        da, db = digest(a), digest(b)
        same = da == db
        differ = sorted(k for k in set(da) | set(db) if da.get(k) != db.get(k))
        print(f"config: default{' + ' + ' '.join(args.overrides) if args.overrides else ''}; {cfg.train.steps} rounds, "
              f"{cfg.data.clients} clients, checkpoint_every {cfg.train.checkpoint_every}")
        print(f"in-process train:            {t_in:8.1f} s")
        print(f"flower {args.engine:11s}:          {t_fl:8.1f} s   (prepare + run + collect)")
        print(f"ratio flower / in-process:   {t_fl / t_in:8.2f}")
        print(f"server_view/ and final weights bit-identical: {same} ({len(da)} files)"
              + ("" if same else f"; differ: {', '.join(differ)}"))


def _secrets(run: Path):
    from collafuse_privacy.client_secrets import read_secrets

    return read_secrets(run)


if __name__ == "__main__":
    main()
