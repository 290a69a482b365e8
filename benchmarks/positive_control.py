"""Positive and negative controls of the model-based membership attacks, as a table.

Trains ``configs/positive-control.yaml`` (the server memorises at c = 0) and the same at a
small cut (c = 0.2: the clients' models memorise instead), then scores ``loss``, ``secmi`` and
``pia``:

* on the target that memorised: its members against non-members (the run's held-out images and
  200 images of the dataset the run never loaded, so that 1% FPR is resolvable);
* on the control: two halves of 200 never-seen images, one of them called "members".

    .venv/bin/python benchmarks/positive_control.py [--out runs/positive-control] [--n-boot 1000]
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from collafuse_privacy.attacks.membership import make
from collafuse_privacy.config import load_config
from collafuse_privacy.data import load_dataset
from collafuse_privacy.eval.roc import membership_metrics
from collafuse_privacy.numbers import fmt_interval
from collafuse_privacy.run.directory import RunDir
from collafuse_privacy.training import train
from collafuse_privacy.view import ServerView


def main() -> None:
    args = _args()
    torch.set_num_threads(2)
    cfg0 = load_config(Path(str(resources.files("collafuse_privacy.configs"))) / "positive-control.yaml")
    unseen = _unseen(cfg0)
    rows = []
    for c in [float(x) for x in args.cuts.split(",")]:
        rows += _cut_rows(cfg0, c, unseen, args)
    print(f"{'c':>4}  {'target':22} {'attack':7} {'AUC [95% CI]':24} {'TPR@1%FPR [95% CI]':24} {'mem/non':>8}  train s  attack s")
    for c, what, name, a, t, n, s, sa in rows:
        print(f"{c:>4g}  {what:22} {name:7} {a:24} {t:24} {n:>8}  {s:7.0f}  {sa:8.0f}")


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/positive-control")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--cuts", default="0,0.2")
    ap.add_argument("--attacks", default="loss,secmi,pia",
                    help="e.g. loss,lira,rmia (lira and rmia train reference models)")
    ap.add_argument("--n-ref", type=int, default=4, help="lira's and rmia's reference models")
    ap.add_argument("--ref-steps", type=int, default=None,
                    help="rounds each reference trains (default: as many as the target)")
    return ap.parse_args()


def _unseen(cfg0) -> torch.Tensor:
    """200 images of the data set the run never loaded (none equal to a loaded one)."""
    full = load_dataset(dataclasses.replace(cfg0.data, max_images=None))
    used = load_dataset(cfg0.data).images
    d = torch.cdist(full.images.flatten(1), used.flatten(1)).amin(1)
    others = torch.nonzero(d > 0).flatten()
    return full.images[others[torch.randperm(len(others), generator=torch.Generator().manual_seed(0))[:200]]]


def _cut_rows(cfg0, c: float, unseen: torch.Tensor, args) -> list[tuple]:
    """Train the run at cut ``c`` and score every attack on its memorising target and on the control."""
    cfg = dataclasses.replace(cfg0, protocol=dataclasses.replace(cfg0.protocol, cut_ratio=c))
    run = Path(args.out) / f"c{c:g}"
    t0 = time.perf_counter()
    train(cfg, run, device="cpu", quiet=True)
    t_train = time.perf_counter() - t0
    splits, ds = RunDir(run).splits(), load_dataset(cfg.data)
    target = "server" if c == 0 else "client:0"
    clients = [0, 1] if target == "server" else [0]
    view = ServerView.load(run, release_clients=() if target == "server" else (0,))
    members = ds.images[sorted(i for k in clients for i in splits.members[k])]
    holdout = ds.images[sorted(i for k in clients for i in splits.holdout[k])]
    rows = []
    for name in args.attacks.split(","):
        t1 = time.perf_counter()
        refs = {"n_ref": args.n_ref, "ref_steps": args.ref_steps} if name in ("lira", "rmia") else {}
        attack = make(name, target=target, **refs).fit(view)
        score = lambda x: attack.score(view, x, client=clients[0] if target != "server" else None).numpy()  # noqa: E731
        s_mem, s_non = score(members), np.r_[score(holdout), score(unseen)]
        t_attack = time.perf_counter() - t1
        for what, s, y in (
            (f"{target} (memorised)", np.r_[s_mem, s_non], np.r_[np.ones(len(s_mem)), np.zeros(len(s_non))]),
            ("control (never seen)", score(unseen), np.r_[np.ones(100), np.zeros(100)]),
        ):
            m, notes = membership_metrics(s, y.astype(int), n_boot=args.n_boot)
            rows.append((c, what, name, fmt_interval(m["auc"]),
                         fmt_interval(m["tpr_at_1pct_fpr"]) if m["tpr_at_1pct_fpr"] else notes["tpr_at_1pct_fpr"],
                         f"{int(y.sum())}/{int((1 - y).sum())}", t_train, t_attack))  # fmt: skip
    return rows


if __name__ == "__main__":
    main()
