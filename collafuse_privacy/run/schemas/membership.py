"""Schema of ``metrics/membership.json``, written by ``eval/membership.py`` (``collafuse-privacy attack
membership``): one result per target, each method's AUC and TPR at low FPR with intervals."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from ...numbers import Interval
from ..codec import SCHEMA, artefact
from .view import RecordStats


@dataclass(frozen=True)
class MembershipMethod:
    applicable: bool
    seconds: float = 0.0
    reason: Optional[str] = None
    auc: Optional[Interval] = None
    balanced_accuracy: Optional[Interval] = None  # threshold chosen on a calibration half, scored on the other
    tpr_at_1pct_fpr: Optional[Interval] = None
    tpr_at_01pct_fpr: Optional[Interval] = field(default=None, metadata={"key": "tpr_at_0.1pct_fpr"})
    unresolved: dict[str, str] = field(default_factory=dict)  # statistic -> why it is not given
    # statistic -> Clopper-Pearson intervals of TPR and FPR where no point estimate is resolvable (eval/roc.py)
    unresolved_intervals: dict[str, dict] = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    nan_scores: int = 0
    per_client_auc: Optional[dict[str, Interval]] = None
    exceeds_worst_case_gdp_bound: Optional[bool] = None


@dataclass(frozen=True)
class BestMethod:
    """The strongest method, chosen on one half of the candidates and scored on the other."""

    method: str
    selected_by: str
    auc: Interval
    tpr_at_1pct_fpr: Optional[Interval] = None
    note: str = ""


@dataclass(frozen=True)
class GDPSection:
    releases_per_image: int
    releases_counted: str
    mu_worst: float
    mu_actual: float
    mu_actual_median: float
    tpr_bound_at_1pct_fpr: float
    tpr_bound_at_01pct_fpr: float = field(metadata={"key": "tpr_bound_at_0.1pct_fpr"})
    tpr_bound_at_1pct_fpr_actual: float = float("nan")
    tpr_bound_at_01pct_fpr_actual: float = field(default=float("nan"), metadata={"key": "tpr_bound_at_0.1pct_fpr_actual"})
    mu_actual_uses: str = ""
    sensitivity_worst: Optional[float] = None
    distance_median: Optional[float] = None
    distance_max: Optional[float] = None


@dataclass(frozen=True)
class MembershipResult:
    protocol: str
    cut_ratio: float
    t_c: int
    timesteps: int
    fixed_noise: bool
    n_members: int
    n_nonmembers: int
    methods: dict[str, MembershipMethod]
    caps: dict = field(default_factory=dict)
    min_resolvable_fpr: Optional[float] = None
    tpr_interpolation: str = ""
    n_boot: int = 0
    gdp: Optional[GDPSection] = None
    gdp_note: Optional[str] = None
    best: Optional[BestMethod] = None
    record: Optional[RecordStats] = None
    scores: Optional[str] = None
    figure: Optional[str] = None
    files: dict[str, str] = field(default_factory=dict)  # sha256 of the scores and the figure


@artefact("membership")
@dataclass(frozen=True)
class MembershipReport:
    targets: dict[str, MembershipResult]
    schema: int = SCHEMA
