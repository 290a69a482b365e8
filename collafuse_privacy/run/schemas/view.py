"""Schemas of the server's view ``server_view/``: ``meta.json`` (written when training starts,
``training/session.py``), ``record.json`` (``view.ViewRecorder``) and ``manifest.json`` (``view.seal_view``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ...config import DiffusionConfig
from ..codec import SCHEMA, artefact


@artefact("view-meta")
@dataclass(frozen=True)
class ViewMeta:
    """``server_view/meta.json``: what the server legitimately knows (DESIGN.md §2).

    The protocol, the schedule and the cut, the model presets, the number of clients, the
    image shape; its public images are in ``public.safetensors`` beside it. No seed, no
    dataset path, no ids: nothing from which the clients' splits could be rebuilt.
    """

    protocol: str
    cut_ratio: float
    fixed_noise: bool
    t_c: int
    timesteps: int
    handover_level: int
    abar_handover: float
    diffusion: DiffusionConfig
    server_conditioning: str
    model_preset: str
    client_preset: Optional[str]
    clients: int
    data_name: str
    image_shape: list[int]
    public_images: int
    # the server's own optimiser (it runs it), for reference models it trains itself (attacks/lira.py)
    server_lr: float = 2e-3
    server_lr_warmup: int = 50
    server_grad_clip: float = 1.0
    # how the clients drew their batches (Config.client_sampling): shuffle | poisson (the server knows the
    # protocol; the draws themselves stay secret). None: a view written before the field (its clients drew
    # shuffled batches, or Poisson ones with DP-SGD: ViewMeta.client_sampling)
    sampling: Optional[str] = None
    schema: int = SCHEMA

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(x) for x in self.image_shape)  # type: ignore[return-value]

    def client_sampling(self, dp_sgd: bool) -> str:
        """``sampling``, or for a view written before the field what its clients did then: Poisson for
        DP-SGD clients (``dp_sgd``: they train, ``t_c > 0``), else shuffled epochs."""
        return self.sampling if self.sampling is not None else ("poisson" if dp_sgd else "shuffle")


@artefact("view-record")
@dataclass(frozen=True)
class RecordStats:
    """``server_view/record.json``: rows the server received in training and rows recorded
    (``record.max_items`` caps the latter; attacks see only what was recorded)."""

    received: int
    recorded: int
    max_items: int
    dtype: str
    schema: int = SCHEMA

    @property
    def not_recorded(self) -> int:
        return self.received - self.recorded


@artefact("view-manifest")
@dataclass(frozen=True)
class ViewManifest:
    """``server_view/manifest.json``, written last at every checkpoint (``view.seal_view``): the
    round, the rows recorded, the run's identity hash and the sha256 of every view file
    (``meta.json``, ``record.json``, ``public.safetensors``, ``train/shard-*``). ``ServerView.load``
    verifies all of it: a view damaged, cut short or out of step with its run is refused."""

    step: int
    rows: int
    config_hash: str
    files: dict[str, str]
    schema: int = SCHEMA
