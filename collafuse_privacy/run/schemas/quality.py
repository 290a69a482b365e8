"""Schema of ``metrics/quality.json``, written by ``eval/evaluate.py`` (``collafuse-privacy evaluate``).

FID / KID with 95% bootstrap intervals over samples (eval/quality.py); KID stored raw
(tables print it as "KID x 10^3"). The extractor is identified by the sha256 of its weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from ...numbers import Interval
from ..codec import SCHEMA, artefact


@dataclass(frozen=True)
class ClientQuality:
    client: int
    fid: float
    kid: float
    kid_std: float  # std over KID's random subsets (torchmetrics), not an interval
    n_samples: int
    n_real: int
    kid_note: str = ""
    fid_ci: Optional[Interval] = None  # 95% bootstrap over samples; None only in files of format 1
    kid_ci: Optional[Interval] = None


@dataclass(frozen=True)
class PooledQuality:
    fid: float
    kid: float
    kid_std: float
    n_samples: int
    n_real: int
    fid_ci: Optional[Interval] = None
    kid_ci: Optional[Interval] = None


@dataclass(frozen=True)
class QualityRun:
    cut_ratio: float
    t_c: int
    run_dir: str
    per_client: list[ClientQuality]
    pooled: PooledQuality
    protocol: str = ""  # protocol.kind of the run ("": a file from before fedavg, a split protocol)


@dataclass(frozen=True)
class QualityFloor:
    """Real against real, same extractor and n: a seeded subset of each client's members
    (as many as the samples scored per client) against its held-out images, and pooled."""

    label: str
    per_client: list[ClientQuality]
    pooled: PooledQuality


@dataclass(frozen=True)
class DisclosureFigures:
    kid: Optional[float] = None
    kid_std: Optional[float] = None
    pixel_mse: Optional[float] = None
    n_server: Optional[int] = None
    n_client: Optional[int] = None
    unavailable: Optional[str] = None


@dataclass(frozen=True)
class ClientDisclosure:
    client: int
    training: Optional[DisclosureFigures] = None
    inference: Optional[DisclosureFigures] = None


QUALITY_FORMAT = 2  # 1: no intervals, no floor, no extractor sha256 (refused: rerun evaluate)


@artefact("quality")
@dataclass(frozen=True)
class QualityReport:
    extractor: str
    extractor_note: str
    n_samples_per_client: int
    runs: list[QualityRun]
    extractor_sha256: str = ""  # sha256 of the extractor's weights: its identity
    floor: Optional[QualityFloor] = None
    disclosure: list[ClientDisclosure] = field(default_factory=list)
    format: int = 1  # QUALITY_FORMAT of the writer; a file without it is format 1
    schema: int = SCHEMA

    def __post_init__(self):
        if self.format != QUALITY_FORMAT or not self.extractor_sha256 or self.floor is None:
            raise ValueError(f"quality format {self.format}, written by an older collafuse-privacy (no intervals, "
                             f"floor or extractor sha256; this version reads format {QUALITY_FORMAT}): rerun evaluate")
