"""Client burden (DESIGN.md §5): what a client pays to collaborate, against local-only.

* Sampling: FLOPs and wall time of the client's steps ``t = t_c-1 .. 0`` per image, as a
  ratio to sampling all ``T`` steps locally, measured on the real sampling loops, not by
  formula: the model calls a loop makes are counted (a forward hook on the real loop at
  batch 1), times the FLOPs of one forward pass of that model (``torch.utils.flop_counter``,
  which counts the convolutions and matrix products; every one of them is inside the model,
  the sampler's own arithmetic is elementwise). The same total as counting the whole loop
  under the counter, without its per-op dispatch cost (seconds per chain on a CPU). With
  equal architectures the FLOP ratio is ``t_c / T``.
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
from collafuse_privacy.protocol import Cut
from collafuse_privacy.run.directory import RunDir
from collafuse_privacy.run.schemas import BurdenReport
from collafuse_privacy.sampling import CollaFusePipeline

Burden = BurdenReport  # the measured figures, as metrics/burden.json stores them


def _flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def _calls(model, fn) -> int:
    """How many times ``fn()`` calls ``model``'s forward."""
    n = [0]

    def hook(*_):
        n[0] += 1

    handle = model.register_forward_hook(hook)
    try:
        fn()
    finally:
        handle.remove()
    return n[0]


def _forward_flops(model, x: torch.Tensor, labels=None) -> int:
    """FLOPs of one forward pass of ``model`` on ``x`` (the UNet's cost does not depend on ``t``)."""
    t = torch.zeros(len(x), dtype=torch.long)
    kwargs = {} if labels is None else {"class_labels": labels}
    with torch.no_grad():
        return _flops(lambda: model(x, t, **kwargs))


def _sampling_flops(pipe: CollaFusePipeline, local: CollaFusePipeline, x: torch.Tensor, g) -> tuple[int, int, int]:
    """FLOPs per image of the server's steps, the client's and a local-only client's (all ``T``
    steps): the model calls the pipeline's two halves make from ``x`` [1, ...], times one forward."""
    server, client = pipe.server, pipe.clients[0]
    labels = None if pipe.config.server_conditioning == "none" else torch.zeros(1, dtype=torch.long)
    f_server = 0
    if not pipe.cut.sends_nothing:
        f_server = _calls(server, lambda: pipe.server_steps(x, g, labels)) * _forward_flops(server, x, labels)
    f_forward = _forward_flops(client, x)
    f_client = _calls(client, lambda: pipe.client_steps(0, x, g)) * f_forward
    f_local = _calls(client, lambda: local.client_steps(0, x, g)) * f_forward
    return f_server, f_client, f_local


def _seconds_per_image(fn, batch: int, reps: int, warm) -> float:
    """Seconds per image of ``batch`` over ``reps`` calls of ``fn`` after ``warm()`` (the measured
    call may hold fewer images)."""
    warm()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps / batch


def _client_share(t_c: int, T: int, run_dir: Path | None) -> float:
    """Share of the training images the client trains on: from the run's log, else ``t_c / T``."""
    rows = RunDir(run_dir).train_log() if run_dir is not None else []
    local_n = sum(sum(r.client_n) for r in rows)
    sent_n = sum(sum(r.sent) for r in rows)
    return local_n / (local_n + sent_n) if local_n + sent_n else t_c / T


def _upload_bytes_per_image(protocol, client, cfg: Config, run_dir: Path | None) -> float:
    """fedavg: the bytes of a client's uploads over the images it trained on (from the run's log,
    else one upload per ``train.local_steps`` rounds of ``train.batch_size`` images)."""
    per_upload = protocol.bytes_per_upload(sum(p.numel() for p in client.parameters()))
    rows = RunDir(run_dir).train_log() if run_dir is not None else []
    images = sum(r.client_n[0] for r in rows)
    uploads = sum(r.sent[0] for r in rows)
    if images:
        return uploads * per_upload / images
    return per_upload / (cfg.train.local_steps * cfg.train.batch_size)


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def measure_burden(cfg: Config, server, client, run_dir: Path | None = None, batch: int = 32, reps: int = 1) -> Burden:
    """Measure the client's burden for ``cfg`` with its ``server`` and ``client`` models (CPU).

    Wall times: ``reps`` runs of each sampling chain (one chain is ``t_c`` or ``T`` forward
    passes at ``batch``), ``4 reps`` training steps, each after a warm-up."""
    pipe = CollaFusePipeline.from_parts(cfg, server, [client])
    local = CollaFusePipeline.from_parts(cfg, None, [client], cut=Cut.at_ratio(cfg.diffusion, 1.0))  # every step
    cut = pipe.cut
    C, S = client.config.in_channels, cfg.data.image_size
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, C, S, S, generator=g)
    f_server, f_client, f_local = _sampling_flops(pipe, local, x, g)
    xb = torch.randn(batch, C, S, S, generator=g)

    def warm_up():
        with torch.no_grad():
            client(xb, torch.zeros(batch, dtype=torch.long))  # one forward pass at the batch size, not a chain

    s_client = _seconds_per_image(lambda: pipe.client_steps(0, xb, g), batch, reps, warm_up)
    s_local = _seconds_per_image(lambda: local.client_steps(0, xb, g), batch, reps, warm_up)

    # Training: one forward + backward per image the client trains on, on its share of the images.
    share = 1.0 if pipe.protocol.aggregates else _client_share(cut.t_c, cut.T, run_dir)

    def train_step(xx):
        client.zero_grad(set_to_none=True)
        p_losses(client, xx, torch.zeros(len(xx), dtype=torch.long), torch.randn(xx.shape, generator=g)).mean().backward()

    f_train = _flops(lambda: train_step(x))
    # A round of `batch` images costs the client one step on its share of them; per training image,
    # against a local-only step on all of them.
    xl = xb[: max(1, round(batch * share))]
    s_train_full = _seconds_per_image(lambda: train_step(xb), batch, 4 * reps, lambda: train_step(xb))
    s_train_client = _seconds_per_image(lambda: train_step(xl), batch, 4 * reps, lambda: train_step(xl))
    client.zero_grad(set_to_none=True)
    sent_per_image = (1 - share) * pipe.protocol.bytes_per_row((C, S, S))
    if pipe.protocol.aggregates:  # fedavg: whole models, every train.local_steps rounds
        sent_per_image = _upload_bytes_per_image(pipe.protocol, client, cfg, run_dir)
    return BurdenReport(
        t_c=cut.t_c, timesteps=cut.T,
        sampling_client_flops_per_image=f_client, sampling_server_flops_per_image=f_server,
        sampling_local_only_flops_per_image=f_local, sampling_flop_ratio=_ratio(f_client, f_local),
        sampling_client_seconds_per_image=s_client, sampling_local_only_seconds_per_image=s_local,
        sampling_time_ratio=_ratio(s_client, s_local),
        training_client_share=share, training_flops_per_image=int(round(share * f_train)),
        training_local_only_flops_per_image=f_train, training_flop_ratio=share,
        training_seconds_per_image=s_train_client, training_local_only_seconds_per_image=s_train_full,
        training_time_ratio=_ratio(s_train_client, s_train_full),
        bytes_sent_per_training_image=sent_per_image,
        bytes_received_per_sample=4 * C * S * S if not cut.sends_nothing else 0,
    )  # fmt: skip
