"""Benchmark: does linking repeated releases help the server, and does ``fixed_noise`` stop it?

For each cut ratio it trains two runs that differ only in ``protocol.fixed_noise`` (fresh noise
every epoch vs one release per image), then scores ``rescale``, ``learned`` and ``average``
(plus any ``--methods``) with ``collafuse_privacy.eval.reconstruction.run_reconstruction`` and
prints one table: MSE and PSNR with bootstrap 95% intervals, identification rate, and for
``average`` the distinct releases it linked per image, their precision, and how many releases
of the image the client actually sent. Runs land in ``--root`` (reused when present).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_reconstruction.py                  # digits 8x8
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_reconstruction.py --data mnist5k --cuts 0.2 \\
        --steps 150 --batch 64 --timesteps 100 --preset micro --max-images 0
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from collafuse_privacy.config import load_config
from collafuse_privacy.eval.reconstruction import run_reconstruction
from collafuse_privacy.io import atomic_write_json
from collafuse_privacy.training import train
from collafuse_privacy.typed import to_data


def main() -> None:
    args = _args()
    torch.set_num_threads(1)
    size = 8 if args.data == "digits" else 16
    base = [f"data.name={args.data}", f"data.image_size={size}", "data.clients=2" if args.data == "digits" else "data.clients=3",
            f"diffusion.timesteps={args.timesteps}", f"model.preset={args.preset}", f"train.steps={args.steps}",
            f"train.batch_size={args.batch}", f"train.checkpoint_every={args.steps}", f"data.public_fraction={args.public_fraction}",
            "device=cpu", "sample.n=4"]  # fmt: skip
    if args.max_images:
        base.append(f"data.max_images={args.max_images}")
    rows = []
    for c in [float(x) for x in args.cuts.split(",")]:
        for fixed in (False, True):
            rows += _run_rows(args, base, c, fixed)
    print(f"data {args.data} {size}x{size}, T = {args.timesteps}, {args.steps} rounds x batch {args.batch}, "
          f"max_images {args.max_images or 'all'}, public fraction {args.public_fraction}")  # fmt: skip
    _print(rows)
    atomic_write_json(Path(args.root) / "bench.json", rows)
    print(f"-> {Path(args.root) / 'bench.json'}")


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="digits", choices=["digits", "mnist5k"])
    ap.add_argument("--cuts", default="0.1,0.2")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--timesteps", type=int, default=20)
    ap.add_argument("--preset", default="micro")
    ap.add_argument("--max-images", type=int, default=300, help="0: the whole data set")
    ap.add_argument("--public-fraction", type=float, default=0.25)
    ap.add_argument("--attack-steps", type=int, default=None, help="training steps of learned/average (default: theirs)")
    ap.add_argument("--methods", default="rescale,learned,average")
    ap.add_argument("--cap", type=int, default=512)
    ap.add_argument("--root", default="runs/bench-reconstruction")
    return ap.parse_args()


def _run_rows(args, base: list[str], c: float, fixed: bool) -> list[dict]:
    """Train (or reuse) the run at cut ``c`` with fresh or fixed noise, score the methods: one row each."""
    run = Path(args.root) / f"{args.data}-c{c:g}-{'fixed' if fixed else 'fresh'}"
    cfg = load_config(None, base + [f"protocol.cut_ratio={c}", f"protocol.fixed_noise={str(fixed).lower()}"])
    opts = {m: {"steps": args.attack_steps} for m in ("learned", "average") if args.attack_steps}
    t0 = time.perf_counter()
    train(cfg, run, device="cpu", quiet=True)
    t_train = time.perf_counter() - t0
    r = to_data(run_reconstruction(run, methods=args.methods.split(","), options=opts, cap=args.cap, figure=False,
                                   log=lambda m: None), json_numbers=True)  # fmt: skip
    rows = []
    for name, m in r["methods"].items():
        if not m["applicable"]:
            continue
        lk = m.get("linking") or {}
        rows.append({"c": c, "t_c": r["t_c"], "noise": "fixed" if fixed else "fresh", "method": name, "n": m["n"],
                     "mse": m["mse"], "psnr": m["psnr"], "ident": m["identification"]["value"],
                     "linked": lk.get("mean_linked"), "precision": lk.get("precision"),
                     "sent": lk.get("mean_true_releases"), "seconds": m["seconds"], "train_s": t_train})  # fmt: skip
    return rows


def _print(rows: list[dict]) -> None:
    head = f"{'c':>4} {'t_c':>4} {'noise':6} {'method':8} {'n':>4}  {'MSE [95% CI]':26} {'PSNR':>6} {'ident':>6}  linked/prec/sent    s"
    print(head)
    for x in rows:
        mse = f"{x['mse']['value']:.4f} [{x['mse']['lo']:.4f}, {x['mse']['hi']:.4f}]"
        link = "" if x["linked"] is None else f"{x['linked']:.1f}/{x['precision']:.2f}/{x['sent']:.1f}"
        print(f"{x['c']:>4g} {x['t_c']:>4} {x['noise']:6} {x['method']:8} {x['n']:>4}  {mse:26} "
              f"{float(x['psnr']['value']):6.2f} {x['ident']:6.3f}  {link:17} {x['seconds']:5.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
