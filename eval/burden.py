"""Client burden (DESIGN.md §5): what a client pays to collaborate, against local-only.

* Sampling: FLOPs (``torch.utils.flop_counter``) and wall time of the client's
  steps ``t = t_c-1 .. 0`` per image, as a ratio to sampling all ``T`` steps locally.
  Both are measured by running the real sampling loops, not by formula; with equal
  architectures the FLOP ratio is ``t_c / T``.
* Training: FLOPs and wall time per training image of the client's share (images with
  ``t < t_c`` train its model; the fraction comes from the run's own log), as a ratio
  to local-only training (every image trains the client model).
* Bytes per image: what a client sends per training image (the protocol's message,
  float32 as sent in-process) and receives per sample (the hand-over image).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from collafuse_privacy.config import Config
from collafuse_privacy.diffusion import p_losses
from collafuse_privacy.protocol import Cut, protocol_for
from collafuse_privacy.rundir import BurdenReport, RunDir
from collafuse_privacy.sampler import Sampler
from collafuse_privacy.sampling import client_denoise

Burden = BurdenReport  # the measured figures, as metrics/burden.json stores them


def _flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def measure_burden(cfg: Config, server, client, run_dir: Path | None = None, batch: int = 32, reps: int = 2) -> Burden:
    """Measure the client's burden for ``cfg`` with its ``server`` and ``client`` models (CPU)."""
    proto = protocol_for(cfg)
    cut, local = proto.cut, Cut.at_ratio(cfg.diffusion, 1.0)
    T, t_c = cut.T, cut.t_c
    C, S = client.config.in_channels, cfg.data.image_size
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, C, S, S, generator=g)
    labels = None
    if cfg.model.server_conditioning != "none":
        labels = torch.zeros(1, dtype=torch.long)
    sampler = Sampler.from_config(cfg, cut)
    f_server = _flops(lambda: proto.server_denoise(server, x, labels, g, sampler)) if not cut.sends_nothing else 0
    f_client = _flops(lambda: client_denoise(client, sampler, x, g))
    f_local = _flops(lambda: client_denoise(client, sampler.at(local), x, g))

    xb = torch.randn(batch, C, S, S, generator=g)

    def timed(fn, reps: int = reps) -> float:
        """Seconds per image of ``batch`` (the measured call may hold fewer images)."""
        fn()  # warm-up
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        return (time.perf_counter() - t0) / reps / batch

    s_client = timed(lambda: client_denoise(client, sampler, xb, g))
    s_local = timed(lambda: client_denoise(client, sampler.at(local), xb, g))

    # Training: one forward + backward per image the client trains on.
    share = t_c / T
    rows = RunDir(run_dir).train_log() if run_dir is not None else []
    if rows:
        local_n = sum(sum(r.client_n) for r in rows)
        sent_n = sum(sum(r.sent) for r in rows)
        if local_n + sent_n:
            share = local_n / (local_n + sent_n)

    def train_step(xx):
        client.zero_grad(set_to_none=True)
        p_losses(client, xx, torch.zeros(len(xx), dtype=torch.long), torch.randn(xx.shape, generator=g)).mean().backward()

    f_train = _flops(lambda: train_step(x))
    # A round of `batch` images costs the client one step on its share of them;
    # per training image, against a local-only step on all of them.
    xl = xb[: max(1, round(batch * share))]
    s_train_full = timed(lambda: train_step(xb), reps=4 * reps)
    s_train_client = timed(lambda: train_step(xl), reps=4 * reps)
    client.zero_grad(set_to_none=True)

    d = C * S * S
    per_msg = proto.bytes_per_row((C, S, S), with_labels=cfg.model.server_conditioning == "labels")
    return BurdenReport(
        t_c=t_c,
        timesteps=T,
        sampling_client_flops_per_image=f_client,
        sampling_server_flops_per_image=f_server,
        sampling_local_only_flops_per_image=f_local,
        sampling_flop_ratio=f_client / f_local if f_local else float("nan"),
        sampling_client_seconds_per_image=s_client,
        sampling_local_only_seconds_per_image=s_local,
        sampling_time_ratio=s_client / s_local if s_local else float("nan"),
        training_client_share=share,
        training_flops_per_image=int(round(share * f_train)),
        training_local_only_flops_per_image=f_train,
        training_flop_ratio=share,
        training_seconds_per_image=s_train_client,
        training_local_only_seconds_per_image=s_train_full,
        training_time_ratio=s_train_client / s_train_full if s_train_full else float("nan"),
        bytes_sent_per_training_image=(1 - share) * per_msg,
        bytes_received_per_sample=4 * d if not cut.sends_nothing else 0,
    )
