"""Benchmark: ``view-lrt`` scoring against one bare ``torch.mm`` of the same shapes.

5,000 candidates against 50,000 releases of 28x28 images (random data: the cost does
not depend on the pixels). ``view-lrt`` computes, in chunks of at most 2**22 entries
of the 5,000 x 50,000 matrix, ``logsumexp_j (c h_j.x + b_j)`` per candidate
(:func:`collafuse_privacy.attacks.membership.view_lrt.gaussian_lrt`); the reference is
``torch.mm(X, H.T)`` materialising the whole matrix once. Each variant runs in its own
process so its peak RSS (``resource.getrusage``) is its own; the figure reported is the
peak minus the RSS after the inputs were created. Times are medians over repeats,
after one warm-up call.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_view_lrt.py
    .venv/bin/python benchmarks/bench_view_lrt.py --candidates 5000 --releases 50000 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def child(args) -> dict:
    import torch

    from collafuse_privacy.attacks.membership.view_lrt import gaussian_lrt

    g = torch.Generator().manual_seed(0)
    d = args.side * args.side
    x = torch.rand((args.candidates, d), generator=g) * 2 - 1
    h = torch.randn((args.releases, d), generator=g)
    bias = -(h * h).sum(1) / (2 * (1 - args.abar))
    base = _rss_mib()
    if args.variant == "mm":
        fn = lambda: torch.mm(x, h.t())  # noqa: E731
    else:
        fn = lambda: gaussian_lrt(x, h, args.abar, bias, "logsumexp")  # noqa: E731
    out = fn()
    del out
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
        del out
    return {"variant": args.variant, "seconds": statistics.median(times), "all": times,
            "peak_rss_mib": _rss_mib(), "extra_peak_mib": _rss_mib() - base, "threads": torch.get_num_threads()}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--candidates", type=int, default=5000)
    p.add_argument("--releases", type=int, default=50000)
    p.add_argument("--side", type=int, default=28)
    p.add_argument("--abar", type=float, default=0.3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--variant", choices=["mm", "lrt"], default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.variant:
        print(json.dumps(child(args)))
        return
    res = {}
    for v in ("mm", "lrt"):
        cmd = [sys.executable, __file__, "--variant", v, "--candidates", str(args.candidates), "--releases",
               str(args.releases), "--side", str(args.side), "--abar", str(args.abar), "--repeats", str(args.repeats)]  # fmt: skip
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        res[v] = json.loads(out.strip().splitlines()[-1])
    d = args.side * args.side
    print(f"view-lrt: {args.candidates} candidates x {args.releases} releases, d = {d} ({res['lrt']['threads']} threads)")
    print(f"  bare torch.mm [{args.candidates}x{d}] @ [{d}x{args.releases}]: {res['mm']['seconds']:.3f} s, "
          f"extra peak RSS {res['mm']['extra_peak_mib']:.0f} MiB (process peak {res['mm']['peak_rss_mib']:.0f} MiB)")  # fmt: skip
    print(f"  view-lrt (chunked, logsumexp):       {res['lrt']['seconds']:.3f} s, "
          f"extra peak RSS {res['lrt']['extra_peak_mib']:.0f} MiB (process peak {res['lrt']['peak_rss_mib']:.0f} MiB)")  # fmt: skip
    ratio = res["lrt"]["seconds"] / res["mm"]["seconds"]
    print(f"  ratio view-lrt / torch.mm: {ratio:.2f}x (target <= 3x)")


if __name__ == "__main__":
    main()
