"""train.precision side by side: one party's training step (Adam, clipping, EMA) in fp32, bf16 and
fp16 on the same batches, interleaved; images/s and, on CUDA, peak memory per precision.

    .venv/bin/python benchmarks/bench_precision.py                  # CPU: tiny at 16x16, base at 32x32
    .venv/bin/python benchmarks/bench_precision.py --device cuda    # adds base at 64x64 (the paper's shapes)

bf16 on the CPU is real (torch's CPU autocast; fast where the CPU has AMX or AVX-512 BF16).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time

import torch

from collafuse_privacy.config import TrainConfig
from collafuse_privacy.models import build_unet, num_params
from collafuse_privacy.party import Party

PRECISIONS = ("fp32", "bf16", "fp16")


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench(preset: str, size: int, channels: int, batch: int, reps: int, device: torch.device,
          precisions=PRECISIONS) -> None:  # fmt: skip
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(batch, channels, size, size, generator=g).to(device),
                torch.randint(0, 1000, (batch,), generator=g).to(device),
                torch.randn(batch, channels, size, size, generator=g).to(device)) for _ in range(reps + 2)]  # fmt: skip
    parties = {}
    for p in precisions:
        torch.manual_seed(0)
        parties[p] = Party(build_unet(preset, size, channels), dataclasses.replace(TrainConfig(), precision=p), device)
    times = {p: [] for p in precisions}
    peak = {}
    for _ in range(2):  # interleaved rounds: drift in machine load hits every precision alike
        for p, party in parties.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            for i, b in enumerate(batches):
                _sync(device)
                t0 = time.perf_counter()
                party.train_step(*b)
                _sync(device)
                if i >= 2:
                    times[p].append(time.perf_counter() - t0)
            if device.type == "cuda":
                peak[p] = torch.cuda.max_memory_allocated() / 2**20
    n = num_params(parties["fp32"].model)
    print(f"preset {preset} ({n / 1e6:.2f}M params), {size}x{size}x{channels}, batch {batch}, {device}:")
    base = statistics.median(times["fp32"])
    for p in precisions:
        m = statistics.median(times[p])
        mem = f", peak {peak[p]:.0f} MiB" if p in peak else ""
        print(f"  {p}: {m * 1e3:8.1f} ms/step  {batch / m:8.0f} images/s  fp32/{p} {base / m:5.2f}x{mem}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--reps", type=int, default=10)
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", str(torch.get_num_threads()))))
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {2 * args.reps} steps")
    bench("tiny", 16, 1, 64, args.reps, device)
    if device.type == "cpu":  # the CPU has no fast fp16 kernels (tiny: 47x slower than fp32, measured)
        bench("base", 32, 3, 16, max(3, args.reps // 3), device, ("fp32", "bf16"))
    else:
        bench("base", 32, 3, 64, args.reps, device)
        bench("base", 64, 3, 64, args.reps, device)


if __name__ == "__main__":
    main()
