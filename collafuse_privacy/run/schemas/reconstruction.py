"""Schema of ``metrics/reconstruction.json``, written by ``eval/reconstruction.py`` (``collafuse-privacy
attack reconstruction``): each method's distance to the images behind the server's rows."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from ...numbers import Interval
from ..codec import SCHEMA, artefact
from .view import RecordStats


@dataclass(frozen=True)
class Linking:
    precision: float
    mean_linked: float
    mean_true_releases: float


@dataclass(frozen=True)
class ReconstructionMethod:
    applicable: bool
    reason: Optional[str] = None
    source: str = "messages"
    n: int = 0
    mse: Optional[Interval] = None
    psnr: Optional[Interval] = None
    ssim: Optional[Interval] = None
    lpips: Optional[Interval] = None
    lpips_status: str = ""
    identification: Optional[Interval] = None
    chance: Optional[float] = None
    seconds: float = 0.0
    info: dict = field(default_factory=dict)
    linking: Optional[Linking] = None


@dataclass(frozen=True)
class BestReconstruction:
    """The best method on training images, chosen on one half of the scored rows and scored on the other."""

    method: str
    selected_by: str
    ssim: Interval
    psnr: Interval


@artefact("reconstruction")
@dataclass(frozen=True)
class ReconstructionReport:
    protocol: str
    cut_ratio: float
    t_c: int
    timesteps: int
    fixed_noise: bool
    sent: bool
    n_rows: int
    cap: int
    seed: int
    methods: dict[str, ReconstructionMethod] = field(default_factory=dict)
    reason: Optional[str] = None
    n_scored: int = 0
    n_handover: int = 0
    best: Optional[BestReconstruction] = None
    record: Optional[RecordStats] = None
    figure: Optional[str] = None
    files: dict[str, str] = field(default_factory=dict)  # sha256 of the figure
    schema: int = SCHEMA
