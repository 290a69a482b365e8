"""The run directory, typed: every file a run writes and reads, in one module.

One folder per run; rerunning the same command resumes it::

    config.yaml                    the resolved config (Config)
    splits.json                    ground truth: public / members / held-out (Splits)
    checkpoints/latest.json        the newest complete checkpoint (LatestCheckpoint)
    checkpoints/step-N/            weights (safetensors) and state.pt
    server_view/meta.json          what the server knows (ViewMeta)
    server_view/public.safetensors the server's own public images
    server_view/train/, handover/  what it received (view.py)
    ground_truth/train/            image ids of the recorded rows (evaluation only)
    samples/, figures/
    metrics/train.jsonl            one TrainRow per round
    metrics/{privacy,quality,burden,membership,reconstruction}.json
    metrics/audit.json             an audit run's result (eval/audit.py; its canaries in audit/)

Every JSON file carries ``"schema"``; a file written by a newer version of this tool is
refused with a clear message, a file of the wrong shape is a one-line :class:`UserError`
naming the file and the key (:mod:`collafuse_privacy.typed`). Numbers that are infinite
or could not be computed are stored as ``"inf"`` / ``null`` (:mod:`collafuse_privacy.numbers`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from .config import Config, DiffusionConfig, config_hash, dump_yaml, from_dict, identity
from .errors import UserError
from .io import atomic_write_json, atomic_write_text
from .numbers import Interval
from .typed import Schema, from_data, to_data

SCHEMA = 1  # version of every JSON file below; bump on an incompatible change
SWEEP_MARKERS = {"cell.json", "error.log", ".lock"}  # may precede a run in its folder


# ---------------------------------------------------------------------------
# The files
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LatestCheckpoint:
    """``checkpoints/latest.json``: the newest complete checkpoint folder and its round."""

    dir: str
    step: int
    schema: int = SCHEMA


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


@dataclass(frozen=True)
class TrainRow:
    """One round of ``metrics/train.jsonl``."""

    step: int
    client_loss: list[Optional[float]]
    client_n: list[int]
    sent: list[int]
    server_loss: Optional[float]
    server_n: int
    seconds: float = 0.0
    client_dp_epsilon: Optional[list[float]] = None


# ---- metrics/privacy.json ----------------------------------------------------


@dataclass(frozen=True)
class ReleasePrivacy:
    mu: float
    epsilon: float


VIEW_ADJACENCY = ("replace-one: one image of a client replaced by any other image of the pixel domain "
                  "(L2 sensitivity 2 sqrt(d))")
DPSGD_ADJACENCY = "add/remove one image of the client's member set (Opacus' accountant, Poisson sampling)"
# the threat model of each formal number of the view, one line each (issue 25; defenses/unlinked.py)
LINKED_THREAT = ("linked: a server that attributes every release to its image (the most releases any image got, "
                 "composed as Gaussian mechanisms)")  # fmt: skip
UNLINKED_THREAT = ("unlinked: the server cannot know in which rounds an image was drawn (the clients' secret batch "
                   "draws and timesteps), but may recognise its row when present; replace-one, exact for that server: "
                   "delta(eps) = sum_k Binom(k; n, p) delta_GDP(eps; sqrt(k) mu)")  # fmt: skip


@dataclass(frozen=True)
class ViewPrivacy:
    mu: float
    epsilon: float
    delta: float  # includes delta_release_bound
    releases_per_image: int
    fixed_noise: bool
    per_release: ReleasePrivacy
    epochs: float
    sensitivity_l2: float
    note: str
    delta_release_bound: float = 0.0  # the probability that the bound on releases per image fails
    adjacency: str = VIEW_ADJACENCY
    threat: str = LINKED_THREAT


@dataclass(frozen=True)
class UnlinkedClient:
    client: int
    sample_rate: float  # p: the chance that one of the image's chances sends a row (defenses/unlinked.py)
    epsilon_replace_one: float
    epsilon_add_remove: float  # inf wherever a row can cross the cut (ADD_REMOVE_REASON)
    chances: int = 0  # n: rounds (Poisson) or the most batches an image can be in (shuffle)


@dataclass(frozen=True)
class UnlinkedPrivacy:
    """The view's epsilon for the unlinked server (``defenses/unlinked.py``): a server that cannot know in
    which rounds an image was drawn but may recognise its row when present. Replace-one, the largest over
    clients; add/remove is infinite (``add_remove_reason``). None with ``reason`` where an assumption fails."""

    epsilon_replace_one: Optional[float]
    epsilon_add_remove: Optional[float]
    delta: float
    rounds: int
    reason: Optional[str] = None  # one line: the assumption that failed (then both epsilons are None)
    mu_per_release: Optional[float] = None
    batch_rate: Optional[float] = None  # q = batch_size / members, of the client with the fewest members
    server_draw_probability: Optional[float] = None  # P(t >= t_c)
    sample_rate: Optional[float] = None  # p: q * P(t >= t_c) (Poisson) or P(t >= t_c) (shuffle), largest over clients
    sampling: Optional[str] = None  # the clients' batches: poisson | shuffle (Config.client_sampling)
    chances: Optional[int] = None  # n: rounds (Poisson) or the epochs bound (shuffle), largest over clients
    add_remove_reason: Optional[str] = None  # why epsilon_add_remove is infinite
    clients: list[UnlinkedClient] = field(default_factory=list)
    accountant: str = ("exact profile of n independent chances, each one Gaussian row of per-release mu with "
                       "probability p, else no row: delta(eps) = sum_k Binom(k; n, p) delta_GDP(eps; sqrt(k) mu) "
                       "(k-sum cut where the binomial tail is below 1e-12 delta, that tail counted in delta), "
                       "solved for eps")  # fmt: skip
    adjacency: str = ("replace-one (one image of a client replaced by any other, L2 sensitivity 2 sqrt(d)); "
                      "add/remove: infinite (a row's presence reveals the image)")  # fmt: skip
    threat: str = UNLINKED_THREAT


@dataclass(frozen=True)
class CutChoice:
    target_epsilon: float
    cut_ratio: float
    t_c: int
    message: str
    delta: Optional[float] = None
    releases_per_image: Optional[int] = None
    mu: Optional[float] = None
    epsilon: Optional[float] = None
    threat: str = "linked"  # which formal epsilon the target bounds (protocol.target_threat)


@dataclass(frozen=True)
class ClientDPEntry:
    client: int
    epsilon: float
    noise_multiplier: float
    sample_rate: float
    steps: int


@dataclass(frozen=True)
class ClientDPReport:
    enabled: bool
    delta: float
    epsilon: float
    steps: int
    note: str
    max_grad_norm: Optional[float] = None
    accountant: Optional[str] = None
    grad_sample_mode: Optional[str] = None
    target_epsilon: Optional[float] = None
    noise_multiplier: Optional[float] = None
    sample_rate: Optional[float] = None
    clients: list[ClientDPEntry] = field(default_factory=list)
    adjacency: str = DPSGD_ADJACENCY


@dataclass(frozen=True)
class PrivacyReport:
    protocol: str
    cut_ratio: float
    t_c: int
    timesteps: int
    step: int
    view: ViewPrivacy
    client_dp: ClientDPReport
    cut_choice: Optional[CutChoice] = None
    secrets_derived_from_seed: bool = False  # then a server that guesses the seed could rebuild them
    unlinked: Optional[UnlinkedPrivacy] = None  # None only in files written before it existed
    schema: int = SCHEMA


# ---- metrics/quality.json -----------------------------------------------------
# FID / KID with 95% bootstrap intervals over samples (eval/quality.py); KID stored raw
# (tables print it as "KID x 10^3"). The extractor is identified by the sha256 of its weights.


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


# ---- metrics/burden.json ------------------------------------------------------


@dataclass(frozen=True)
class BurdenReport:
    t_c: int
    timesteps: int
    sampling_client_flops_per_image: int
    sampling_server_flops_per_image: int
    sampling_local_only_flops_per_image: int
    sampling_flop_ratio: float  # client / local-only
    sampling_client_seconds_per_image: float
    sampling_local_only_seconds_per_image: float
    sampling_time_ratio: float
    training_client_share: float  # fraction of training images the client model trains on
    training_flops_per_image: int  # client, averaged over all its images
    training_local_only_flops_per_image: int
    training_flop_ratio: float
    training_seconds_per_image: float
    training_local_only_seconds_per_image: float
    training_time_ratio: float
    bytes_sent_per_training_image: float
    bytes_received_per_sample: int
    device: str = "cpu"
    schema: int = SCHEMA


# ---- metrics/membership.json --------------------------------------------------


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


@dataclass(frozen=True)
class MembershipReport:
    targets: dict[str, MembershipResult]
    schema: int = SCHEMA


# ---- metrics/reconstruction.json ----------------------------------------------


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


# ---- metrics/audit.json ----------------------------------------------------------


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


AUDIT_FORMAT = 2  # 1: an epsilon from the GDP route, Clopper-Pearson on dependent scores (refused: rerun)


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
    format: int = 1  # AUDIT_FORMAT of the writer; a file without it is format 1
    schema: int = SCHEMA

    def __post_init__(self):
        if self.format != AUDIT_FORMAT:
            raise ValueError(f"audit format {self.format}, written by an older collafuse-privacy (an epsilon from the "
                             f"GDP route, Clopper-Pearson on dependent scores; this version reads format "
                             f"{AUDIT_FORMAT}): rerun the audit")  # fmt: skip


# name -> (file in metrics/, its dataclass)
METRICS: dict[str, tuple[str, type]] = {
    "privacy": ("privacy.json", PrivacyReport),
    "quality": ("quality.json", QualityReport),
    "burden": ("burden.json", BurdenReport),
    "membership": ("membership.json", MembershipReport),
    "reconstruction": ("reconstruction.json", ReconstructionReport),
    "audit": ("audit.json", AuditReport),
}


# ---------------------------------------------------------------------------
# Reading and writing
# ---------------------------------------------------------------------------


def read_json(path: Path, cls):
    """Parse ``path`` as ``cls`` (UserError naming the file for bad JSON, a newer schema or a wrong shape)."""
    try:
        raw = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"file not found: {path}") from None
    except (ValueError, UnicodeDecodeError):
        raise UserError(f"{path} is not valid JSON") from None
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
    return parse(raw, cls, path)


def parse(raw: Any, cls, where) -> Any:
    """``raw`` (plain data of a file) as ``cls``, checking its schema version."""
    if not isinstance(raw, dict):
        raise UserError(f"{where}: expected a JSON object, got {type(raw).__name__}")
    version = raw.get("schema")
    if not isinstance(version, int) or isinstance(version, bool):
        raise UserError(f"{where} has no schema version: it was written by an older collafuse-privacy "
                        "(rerun the step that writes it)")  # fmt: skip
    if version > SCHEMA:
        raise UserError(f"{where} was written by a newer collafuse-privacy (schema {version}; this version reads "
                        f"up to {SCHEMA}): upgrade collafuse-privacy")  # fmt: skip
    return from_data(cls, raw, Schema(noun="key", where=str(where), json_numbers=True))


def write_json(path: Path, obj) -> None:
    """Write a dataclass (validated by a round trip through its own schema) atomically."""
    data = to_data(obj, json_numbers=True)
    parse(data, type(obj), path)  # a writer bug must not leave a file its readers refuse
    atomic_write_json(path, data)


class RunDir:
    """Typed access to one run directory (module docstring)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    # ---- paths ---------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def splits_path(self) -> Path:
        return self.path / "splits.json"

    @property
    def ckpt_dir(self) -> Path:
        return self.path / "checkpoints"

    @property
    def view_dir(self) -> Path:
        return self.path / "server_view"

    @property
    def meta_path(self) -> Path:
        return self.view_dir / "meta.json"

    @property
    def public_path(self) -> Path:
        return self.view_dir / "public.safetensors"

    @property
    def record_path(self) -> Path:
        return self.view_dir / "record.json"

    @property
    def view_manifest_path(self) -> Path:
        return self.view_dir / "manifest.json"

    def record(self) -> Optional[RecordStats]:
        return read_json(self.record_path, RecordStats) if self.record_path.is_file() else None

    @property
    def metrics_dir(self) -> Path:
        return self.path / "metrics"

    @property
    def train_log_path(self) -> Path:
        return self.metrics_dir / "train.jsonl"

    def metrics_path(self, name: str) -> Path:
        return self.metrics_dir / METRICS[name][0]

    # ---- config.yaml -----------------------------------------------------------------
    def exists(self) -> bool:
        return self.config_path.is_file()

    def config(self) -> Config:
        """The run's resolved config; UserError when the folder holds no (valid) run."""
        if self.path.exists() and not self.path.is_dir():
            raise UserError(f"{self.path} is a file, not a run directory")
        if not self.path.is_dir():
            raise UserError(f"run directory does not exist: {self.path}")
        if not self.config_path.is_file():
            raise UserError(f"{self.path} is not a run directory (no config.yaml)")
        from .config import strict_yaml

        try:
            raw = strict_yaml(self.config_path.read_text())
        except (yaml.YAMLError, UnicodeDecodeError):
            raise UserError(f"{self.config_path} is not valid YAML") from None
        try:
            return from_dict(raw)
        except UserError as exc:
            raise UserError(f"{self.config_path}: {exc}") from None

    def write_config(self, cfg: Config) -> None:
        atomic_write_text(self.config_path, dump_yaml(cfg))

    # ---- splits.json -----------------------------------------------------------------
    def splits(self):
        from .data import Splits

        if not self.splits_path.is_file():
            raise UserError(f"{self.path}/splits.json is missing")
        return read_json(self.splits_path, Splits)

    def write_splits(self, splits) -> None:
        write_json(self.splits_path, splits)

    # ---- checkpoints/latest.json -----------------------------------------------------
    def latest(self) -> Optional[LatestCheckpoint]:
        path = self.ckpt_dir / "latest.json"
        return read_json(path, LatestCheckpoint) if path.is_file() else None

    def write_latest(self, latest: LatestCheckpoint) -> None:
        write_json(self.ckpt_dir / "latest.json", latest)

    # ---- server_view/meta.json ------------------------------------------------------
    def meta(self) -> ViewMeta:
        if not self.meta_path.is_file():
            raise UserError(f"{self.path} has no server view (server_view/meta.json); train first")
        return read_json(self.meta_path, ViewMeta)

    def write_meta(self, meta: ViewMeta) -> None:
        write_json(self.meta_path, meta)

    # ---- metrics -------------------------------------------------------------------------
    def metrics(self, name: str):
        """The typed content of ``metrics/<name>.json``, or None when it does not exist."""
        path = self.metrics_path(name)
        return read_json(path, METRICS[name][1]) if path.is_file() else None

    def write_metrics(self, name: str, obj) -> Path:
        """Write ``metrics/<name>.json`` from its dataclass or from plain data in its schema."""
        cls = METRICS[name][1]
        path = self.metrics_path(name)
        if not isinstance(obj, cls):
            obj = parse({"schema": SCHEMA, **to_data(obj, json_numbers=True)}, cls, path)
        write_json(path, obj)
        return path

    def train_log(self) -> list[TrainRow]:
        """Rows of ``metrics/train.jsonl`` (a line cut by an interruption is skipped)."""
        if not self.train_log_path.is_file():
            return []
        rows = []
        schema = Schema(noun="key", where=str(self.train_log_path), json_numbers=True)
        for line in self.train_log_path.read_text().splitlines():
            try:
                raw = json.loads(line)
            except ValueError:
                continue
            rows.append(from_data(TrainRow, raw, schema))
        return rows


# ---------------------------------------------------------------------------
# Creating and resuming runs
# ---------------------------------------------------------------------------


def default_run_dir(cfg: Config, root: str | Path = "runs") -> Path:
    """``runs/<data>-<protocol>-c<ratio>-<identity hash>`` (the same command resumes the same run)."""
    return Path(root) / f"{cfg.data.name}-{cfg.protocol.kind}-c{cfg.protocol.cut_ratio:g}-{config_hash(cfg, 8)}"


def read_run_config(run_dir: str | Path) -> Config:
    return RunDir(run_dir).config()


def open_run(cfg: Config, run_dir: Path) -> bool:
    """Create ``run_dir`` for ``cfg`` or check that it holds the same run.

    Returns True when the directory already held this run (resume).
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"--out {run_dir} exists and is not a folder")
    rd = RunDir(run_dir)
    if rd.config_path.is_file():
        old, new = identity(rd.config()), identity(cfg)
        diff = [k for k in new if old.get(k) != new.get(k)]
        if diff:
            k = diff[0]
            raise UserError(
                f"{run_dir} holds a run with a different config ({k}: {old.get(k)!r} there, {new.get(k)!r} now); "
                "choose another --out"
            )
        return True  # the caller rewrites config.yaml once the checkpoint has loaded
    # a sweep's own markers (sweep.py) may precede the run in its cell folder
    if run_dir.is_dir() and any(p.name not in SWEEP_MARKERS for p in run_dir.iterdir()):
        raise UserError(f"--out {run_dir} is a non-empty folder that holds no run; choose another --out")
    run_dir.mkdir(parents=True, exist_ok=True)
    rd.write_config(cfg)
    return False
