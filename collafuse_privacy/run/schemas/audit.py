"""Schema of ``metrics/audit.json``, written by ``eval/audit.py`` (``collafuse-privacy audit``): an
empirical lower bound on epsilon (or mu) beside the formal number, per attack and the headline."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from ..codec import SCHEMA, artefact


@dataclass(frozen=True)
class AuditBound:
    """One threshold test (chosen on the calibration slots) counted on the evaluation slots."""

    value: float  # the lower bound, confidence 1 - alpha
    point: float  # at the observed rates (an estimate, not a bound)
    threshold: float
    fpr: float
    fnr: float
    n_pos: int
    n_neg: int


@dataclass(frozen=True)
class AuditOneRun:
    epsilon: float
    guesses: int
    correct: int
    slots: int
    abstain_fraction: float
    calibration: float = 0.0  # the bound on the calibration slots


@dataclass(frozen=True)
class AuditMethod:
    """One attack's bounds. ``independent``: each slot's score depends only on its own randomness, so the
    slots are independent trials and the Clopper-Pearson routes (``epsilon``, ``mu``) are valid; otherwise
    (one view or model scores every slot) only the one-run route is, and ``epsilon``/``mu`` stay empty."""

    sees: str  # "server view" or "auditor: ground-truth links of the canaries' releases"
    statistic: str
    auc: Optional[float] = None
    independent: bool = False
    epsilon: Optional[AuditBound] = None  # the (eps, delta) route, Clopper-Pearson (independent scores only)
    mu: Optional[AuditBound] = None  # the GDP route: a bound on mu, not epsilon (independent scores, GDP claims)
    one_run: Optional[AuditOneRun] = None  # Steinke et al. 2023: valid for dependent scores too
    epsilon_lb: Optional[float] = None  # this method's assumption-free epsilon bound ...
    epsilon_route: Optional[str] = None  # ... and its route: "clopper-pearson" or "one-run"
    calibration_epsilon: Optional[float] = None  # the same bound on the calibration slots (best-of choice)
    calibration_mu: Optional[float] = None  # the mu bound on the calibration slots (best-of choice)
    reason: Optional[str] = None  # why it could not run


@dataclass(frozen=True)
class AuditReleases:
    """Distinct recorded releases per canary slot."""

    min: int
    median: float
    max: int
    none: int  # slots whose canary never crossed the cut (their coin cannot be seen)


@dataclass(frozen=True)
class AuditStratum:
    """The known-release test's mu bound within the slots of one release count."""

    releases: int
    slots: int
    mu_lb: Optional[float]
    formal_mu: float
    alpha: float


@dataclass(frozen=True)
class AuditUnlinked:
    """The unlinked claim audited (issue 25): every view-only method's one-run epsilon lower bound (no
    ground-truth links, at the unlinked number's delta) against ``privacy.json``'s unlinked epsilon
    (replace-one, the server of our threat model). ``check``: ``passed`` | ``failed`` (a bound exceeds
    it) | ``not audited`` (no unlinked number: ``reason``)."""

    check: str
    message: str
    formal_epsilon: Optional[float] = None
    delta: Optional[float] = None
    reason: Optional[str] = None  # why there is nothing to audit (the unlinked number's refusal)
    bounds: dict[str, float] = field(default_factory=dict)  # every view-only method's bound
    best: Optional[str] = None  # the method chosen on the calibration slots
    epsilon_lb: Optional[float] = None  # its bound on the evaluation slots
    ratio: Optional[float] = None  # epsilon_lb / formal_epsilon
    max_certifiable_epsilon: Optional[float] = None  # what a perfect attack would certify at this delta


AUDIT_FORMAT = 2  # 1: an epsilon from the GDP route, Clopper-Pearson on dependent scores (refused: rerun)


@artefact("audit")
@dataclass(frozen=True)
class AuditReport:
    target: str  # "server" (its view) or "client:K" (client K's released model)
    game: str
    canaries: int
    canary_kind: str
    distance: float  # median L2 distance between a slot's two inputs
    alpha: float
    delta: float
    formal_epsilon: float
    formal_note: str
    claim: str  # "mu-GDP" (the view's release bound: the headline is mu) or "(eps, delta)" (Opacus: epsilon)
    methods: dict[str, AuditMethod]
    best: Optional[str]  # the headline's method, chosen on the calibration slots
    epsilon_lb: float  # the best assumption-free epsilon lower bound (chosen on the calibration slots) ...
    epsilon_method: Optional[str]
    epsilon_route: Optional[str]  # ... its route: "clopper-pearson" (independent scores) or "one-run"
    ratio: Optional[float]  # headline bound / formal number: mu_lb / formal_mu (mu-GDP) or epsilon_lb / formal_epsilon
    ratio_of: str  # "mu" or "epsilon"
    max_certifiable_epsilon: float
    check: str  # "passed" | "failed"
    message: str
    seconds: float
    formal_mu: Optional[float] = None
    mu_lb: Optional[float] = None  # GDP route, independent scores only: bounds mu, not epsilon
    mu_method: Optional[str] = None
    canary_formal_mu: Optional[float] = None  # the largest per-canary mu at its own releases and distance
    max_certifiable_mu: Optional[float] = None
    releases: Optional[AuditReleases] = None
    strata: list[AuditStratum] = field(default_factory=list)  # by release count (fresh noise: counts vary)
    notes: list[str] = field(default_factory=list)
    unlinked: Optional[AuditUnlinked] = None  # the server's view only: the unlinked claim's audit
    format: int = 1  # AUDIT_FORMAT of the writer; a file without it is format 1
    schema: int = SCHEMA

    def __post_init__(self):
        if self.format != AUDIT_FORMAT:
            raise ValueError(f"audit format {self.format}, written by an older collafuse-privacy (an epsilon from the "
                             f"GDP route, Clopper-Pearson on dependent scores; this version reads format "
                             f"{AUDIT_FORMAT}): rerun the audit")  # fmt: skip
