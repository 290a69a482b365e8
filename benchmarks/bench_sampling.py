"""Benchmark: collaborative sampling, the clients one by one against the clients batched
(``sample.batched_clients``), against a plain diffusers DDPM loop over the same number of images,
side by side in one run.

The models have random weights (sampling costs the same whatever they learnt). CollaFuse at cut
ratio c: the server's steps ``T-1 .. t_c`` for every client's images, then each client's steps
``t_c-1 .. 0`` with its own model, either one client after another or all clients in one ``vmap``
over their stacked models. The plain loop: one model stepping all ``K x n`` images through the
whole chain with diffusers' ``DDPMScheduler``. Images/s is the median of ``--repeats`` runs;
peak memory is CUDA's allocator peak on a GPU and the process' peak RSS on the CPU.

    .venv/bin/python benchmarks/bench_sampling.py                      # CPU defaults
    .venv/bin/python benchmarks/bench_sampling.py --device cuda --n 256 --preset small
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time


def _sync(dev):
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize()


def _peak_mb(dev) -> float:
    import torch

    if dev.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=3)
    p.add_argument("--n", type=int, default=32, help="samples per client")
    p.add_argument("--cut", type=float, default=0.5)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--image-size", type=int, default=16)
    p.add_argument("--timesteps", type=int, default=100)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    import torch

    from collafuse_privacy.config import load_config
    from collafuse_privacy.models import build_unet
    from collafuse_privacy.sampling import CollaFusePipeline, Sampler
    from collafuse_privacy.protocol import Cut

    dev = torch.device(args.device)
    cfg = load_config(None, [f"data.clients={args.clients}", f"model.preset={args.preset}", f"device={args.device}",
                             f"data.image_size={args.image_size}", f"diffusion.timesteps={args.timesteps}",
                             f"protocol.cut_ratio={args.cut}", f"sample.batch_size={args.n}"])  # fmt: skip
    torch.manual_seed(0)
    server = build_unet(args.preset, args.image_size, 1).to(dev).eval()
    clients = [build_unet(args.preset, args.image_size, 1).to(dev).eval() for _ in range(args.clients)]
    pipe = CollaFusePipeline.from_parts(cfg, server, clients)
    scheduler = Sampler.make_scheduler(Cut.from_config(cfg))
    total = args.clients * args.n

    @torch.no_grad()
    def plain():
        g = torch.Generator(device=dev).manual_seed(0)
        x = torch.randn((total, 1, args.image_size, args.image_size), generator=g, device=dev)
        for s in range(args.timesteps - 1, -1, -1):
            t = torch.full((total,), s, device=dev, dtype=torch.long)
            x = scheduler.step(server(x, t).sample, s, x, generator=g).prev_sample
        return x

    variants = {
        "plain DDPM loop": plain,
        "CollaFuse, clients one by one": lambda: pipe(args.n, 0, batched_clients=False),
        "CollaFuse, clients batched": lambda: pipe(args.n, 0, batched_clients=True),
    }
    times = {k: [] for k in variants}
    for _ in range(args.repeats):
        for name, f in variants.items():  # alternating, side by side
            _sync(dev)
            t0 = time.perf_counter()
            f()
            _sync(dev)
            times[name].append(time.perf_counter() - t0)
    print(f"sampling {total} images ({args.clients} clients x {args.n}), c = {args.cut}, T = {args.timesteps}, "
          f"preset {args.preset}, {args.image_size}x{args.image_size}, {dev}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, median of {args.repeats}")  # fmt: skip
    base = statistics.median(times["CollaFuse, clients one by one"])
    for name, ts in times.items():
        m = statistics.median(ts)
        print(f"{name:>32}: {total / m:9.1f} images/s  ({m:.3f} s; {base / m:.2f}x the one-by-one loop)")
    print(f"peak memory: {_peak_mb(dev):.0f} MB ({'CUDA allocator' if dev.type == 'cuda' else 'process RSS'})")


if __name__ == "__main__":
    main()
