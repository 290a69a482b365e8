"""Schema of ``metrics/privacy.json``, written by ``defenses/privacy.py`` after training (the view's
formal numbers, linked and unlinked, and the clients' DP-SGD); :class:`CutChoice` is the cut chosen for a
target epsilon (``resolve.py``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from ..codec import SCHEMA, artefact


@dataclass(frozen=True)
class ReleasePrivacy:
    mu: Optional[float]  # None: no GDP route (fedavg's view)
    epsilon: float


VIEW_ADJACENCY = ("replace-one: one image of a client replaced by any other image of the pixel domain "
                  "(L2 sensitivity 2 sqrt(d))")
DPSGD_ADJACENCY = "add/remove one image of the client's member set (Opacus' accountant, Poisson sampling)"
# the threat model of each formal number of the view, one line each (issue 25; defenses/unlinked.py)
LINKED_THREAT = ("linked: a server that attributes every release to its image (the most releases any image got, "
                 "composed as Gaussian mechanisms)")  # fmt: skip
FEDAVG_THREAT = ("fedavg: the honest-but-curious aggregator sees every client's uploaded model, named by its client, "
                 "and the global models")  # fmt: skip
UNLINKED_THREAT = ("unlinked: the server cannot know in which rounds an image was drawn (the clients' secret batch "
                   "draws and timesteps), but may recognise its row when present; replace-one, exact for that server: "
                   "delta(eps) = sum_k Binom(k; n, p) delta_GDP(eps; sqrt(k) mu)")  # fmt: skip


@dataclass(frozen=True)
class ViewPrivacy:
    mu: Optional[float]  # None: no GDP route (fedavg: the DP-SGD accountant's epsilon, or none)
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


@artefact("privacy")
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
