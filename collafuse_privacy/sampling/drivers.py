"""Who drives the one sampling pipeline (:class:`~.pipeline.CollaFusePipeline`).

* :func:`sample_run`: ``collafuse-privacy sample`` on a trained run, in-process (both halves);
* :func:`server_handovers` / :func:`client_finish`: Flower's server and clients, each its half
  in its own process (thin calls into the pipeline: the same loop, the same random streams);
* :func:`export_pipeline`: a run's trained system as a diffusers pipeline folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from ..client_secrets import read_secrets
from ..config import Config
from ..errors import UserError
from ..io import check_writable
from ..lock import locks_run
from ..party import resolve_device
from ..resources import check_sample_memory
from ..rng import deterministic_algorithms
from ..run.directory import RunDir
from .pipeline import CollaFusePipeline
from .samples import write_samples


def run_client_secrets(run_dir: str | Path, cfg: Config) -> list[int]:
    """Every client's sampling secret of a run (client-side knowledge: never in a pipeline's config)."""
    secrets = read_secrets(run_dir)
    if secrets is None:
        raise UserError(f"{run_dir} has no clients/secrets.json (a run made by an older version): retrain it")
    return [secrets.client(k, cfg.seed) for k in range(cfg.data.clients)]


@locks_run
def sample_run(run_dir: str | Path, n: Optional[int] = None, device: str = "auto", seed: Optional[int] = None) -> dict:
    """Collaborative samples for every client of a trained run.

    Writes ``samples/client-K.safetensors`` and ``samples/grid-client-K.png`` (client
    outputs, client-side), ``samples/grid.png`` (a row band per client) and records
    the hand-over images the server produced in ``server_view/handover/``.
    """
    run_dir = Path(run_dir)
    rd = RunDir(run_dir)
    cfg = rd.config()
    n = n or cfg.sample.n
    check_sample_memory(cfg, n, rd.meta().shape)  # before anything is allocated or written
    pipe = CollaFusePipeline.from_run(run_dir, ema=True, device=resolve_device(device))
    seed = cfg.seed if seed is None else seed
    own = run_client_secrets(run_dir, cfg)
    for folder in (rd.samples_dir, rd.handover_dir):  # nothing is computed for a folder we cannot write
        folder.mkdir(parents=True, exist_ok=True)
        check_writable(folder)
    with deterministic_algorithms(cfg.train.deterministic):
        out = pipe(n, seed, client_secrets=own, batched_clients=cfg.sample.batched_clients)
    return write_samples(run_dir, cfg, out.raw, out.handovers, pipe.config.step, n, seed)


def server_handovers(server, cfg: Config, clients: int, n: int, seed: int, device=None, batch_size: int = 256,
                     shape=None) -> Optional[torch.Tensor]:  # fmt: skip
    """The server's half of sampling (Flower's server): ``n`` hand-over images per client
    ``[K, n, C, S, S]`` (None where nothing crosses, c = 1), on the model's device (``device``
    and ``shape`` are the model's own; kept for the callers)."""
    with deterministic_algorithms(cfg.train.deterministic):
        return CollaFusePipeline.from_parts(cfg, server, [], batch_size=batch_size).handovers(n, seed, clients)


def client_finish(model, cfg: Config, handover: Optional[torch.Tensor], n: int, gen: torch.Generator, device=None,
                  batch_size: int = 256, shape=None) -> torch.Tensor:  # fmt: skip
    """A client's half of sampling (a Flower client): its ``n`` outputs ``[n, C, S, S]`` before the
    final clamp, from the hand-over images ``handover`` [n, ...] it was sent (None, c = 1: from its
    own noise), ``gen`` its stream (:func:`~.pipeline.client_sample_generator`)."""
    with deterministic_algorithms(cfg.train.deterministic):
        return CollaFusePipeline.from_parts(cfg, None, [model], batch_size=batch_size).finish(0, handover, n, gen)


def export_pipeline(run_dir: str | Path, out_dir: str | Path, ema: bool = True) -> Path:
    """Save a trained run's system (latest checkpoint, EMA weights with ``ema``) as a diffusers
    pipeline folder ``out_dir``: ``CollaFusePipeline.from_pretrained(out_dir)`` loads it."""
    if Path(out_dir).resolve() == Path(run_dir).resolve():
        raise UserError(f"export the pipeline into its own folder, not the run directory {run_dir}")
    CollaFusePipeline.from_run(run_dir, ema=ema).save_pretrained(out_dir)
    return Path(out_dir)
