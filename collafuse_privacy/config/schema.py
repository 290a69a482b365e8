"""The config's schema: a tree of frozen dataclasses, one per section (DESIGN.md §6).

The keys listed in DESIGN.md §6 are a public contract (outside tools set them).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional


@dataclass(frozen=True)
class DataConfig:
    name: str = "mnist5k"  # mnist5k | digits | cifar10 | image-folder
    root: Optional[str] = None  # cifar10 / image-folder only
    image_size: int = 16
    channels: Optional[int] = None  # image-folder only (1 or 3); others are fixed
    attributes: Optional[str] = None  # image-folder: CSV with a file column and a label column
    label_column: Optional[str] = None  # image-folder: which CSV column is the label
    # image-folder: label = first group whose attributes an image has (CSV values 1 / -1 or 1 / 0),
    # e.g. "hair=Black_Hair,Blond_Hair; eyes=Narrow_Eyes"; images in no group are left out
    attribute_groups: Optional[str] = None
    max_images: Optional[int] = None  # cap on images loaded (first N after a seeded shuffle)
    clients: int = 3
    partition: str = "iid"  # iid | by-class | dirichlet
    dirichlet_alpha: float = 0.5
    holdout_fraction: float = 0.2
    public_fraction: float = 0.1


@dataclass(frozen=True)
class DiffusionConfig:
    timesteps: int = 200
    schedule: str = "linear"  # linear | cosine
    # Linear betas are given for T = 1000 and scaled by 1000 / T (Nichol & Dhariwal 2021),
    # so abar[T-1] stays close to 0 for small T.
    beta_start: float = 1e-4
    beta_end: float = 0.02


@dataclass(frozen=True)
class ModelConfig:
    preset: str = "tiny"  # micro | tiny | small | base
    client_preset: Optional[str] = None  # None: same as preset
    server_conditioning: str = "none"  # none | client | labels

    @property
    def client_model_preset(self) -> str:
        return self.client_preset or self.preset


@dataclass(frozen=True)
class ProtocolConfig:
    kind: str = "cut-image"  # shared-noise | cut-image | fedavg (the federated baseline: protocol/fedavg.py)
    cut_ratio: float = 0.5  # clients' share c of the denoising steps; t_c = round(c * T)
    fixed_noise: bool = False  # cut-image: one release per image (eps1 seeded by image id)
    # Privacy-budgeted cut (cut-image): when set, the smallest cut ratio whose server view is
    # (target_epsilon, delta)-DP (GDP release accounting, DESIGN.md §4) REPLACES cut_ratio;
    # the resolved config.yaml records the chosen cut_ratio.
    target_epsilon: Optional[float] = None
    # delta of the server-view epsilon (target and report); None: defense.client_dp.delta
    target_delta: Optional[float] = None
    # which formal epsilon target_epsilon bounds: linked (the server attributes every release to its
    # image) | unlinked (the secret-sampling bound: the server cannot know in which rounds an image was
    # drawn; needs fresh noise, no labels across the cut, OS secrets: defenses/unlinked.py)
    target_threat: str = "linked"


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 900  # rounds; each round every client draws one batch
    # protocol.kind fedavg: the server averages the clients' models every local_steps rounds (and at the last)
    local_steps: int = 1
    batch_size: int = 64  # images per client per round
    # shuffle: seeded epochs over the client's members | poisson: each member independently with rate
    # batch_size / members per round. Both from the client's secret; the unlinked epsilon covers both
    # (defenses/unlinked.py). DP-SGD clients always draw Poisson.
    sampling: str = "shuffle"
    lr: float = 2e-3
    # forward passes under torch.autocast: auto (fp32 on the CPU, bf16 on CUDA) | fp32 | bf16 | fp16
    # (fp16 with a gradient scaler). Weights, optimiser, EMA, loss, the view and its accounting stay
    # fp32 / record.dtype whatever the precision. DP-SGD clients run in fp32.
    precision: str = "auto"
    # the clients' local steps of a round in one vmap over their stacked models (training/batched.py):
    # null (on CUDA only) | true | false. Equal to the one-by-one loop within float tolerance, not bitwise.
    batched_clients: Optional[bool] = None
    # torch.use_deterministic_algorithms for every party's steps and the run's sampling (rng.py): on CUDA
    # a resumed run is then bit-identical to an uninterrupted one, at some speed; on the CPU no number changes
    deterministic: bool = False
    lr_warmup: int = 50
    grad_clip: float = 1.0
    checkpoint_every: int = 250
    keep_checkpoints: int = 2
    memory_check: bool = True  # refuse a run whose memory estimate exceeds the machine's (resources.py)


@dataclass(frozen=True)
class RecordConfig:
    enabled: bool = True
    max_items: int = 200_000  # messages (images) kept in server_view/ at most
    shard_size: int = 8192
    dtype: str = "float32"  # float32 | float16 (halves the disk; shared-noise x0 algebra then loses ~70 dB PSNR)


@dataclass(frozen=True)
class SampleConfig:
    n: int = 64  # samples per client
    batch_size: int = 256
    # Clipping rule of the one sampler every party steps (collafuse_privacy/sampling/sampler.py): none |
    # x0 (x0_hat clipped to [-1, 1] at every step) | low-noise (only where abar_t >= 0.5)
    clip: str = "low-noise"
    # the clients' half of sampling in one vmap over their stacked models (sampling/batched.py): null (on
    # CUDA only) | true | false. The same draws; equal to the one-by-one loop within float tolerance.
    batched_clients: Optional[bool] = None


@dataclass(frozen=True)
class ClientDPConfig:
    enabled: bool = False
    noise_multiplier: Optional[float] = None
    target_epsilon: Optional[float] = None
    max_grad_norm: float = 1.0
    delta: float = 1e-5
    accountant: str = "prv"  # prv | rdp (Opacus)
    grad_sample_mode: str = "hooks"  # hooks (with contiguous conv inputs) | functorch
    log_every: int = 10  # epsilon in metrics/train.jsonl every N rounds (and the last); 1 = every round


@dataclass(frozen=True)
class SecretsConfig:
    # The clients' randomness (their split, t/eps draws, batch order, row order of their messages,
    # fixed hand-over noise, DP-SGD noise) comes from a secret drawn from the OS when the run is
    # created and kept in clients/secrets.json, which the server never sees. true: derive it from
    # `seed` instead, so a run is reproducible from its config alone (tests, the demo) -- but then
    # a server that guesses the seed could rebuild all of it; every report says so.
    derive_from_seed: bool = False


@dataclass(frozen=True)
class DefenseConfig:
    client_dp: ClientDPConfig = field(default_factory=ClientDPConfig)


@dataclass(frozen=True)
class Config:
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    data: DataConfig = field(default_factory=DataConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    protocol: ProtocolConfig = field(default_factory=ProtocolConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    record: RecordConfig = field(default_factory=RecordConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    defense: DefenseConfig = field(default_factory=DefenseConfig)
    secrets: SecretsConfig = field(default_factory=SecretsConfig)

    # ---- derived quantities -------------------------------------------------
    @property
    def t_c(self) -> int:
        """First server timestep: clients own ``t < t_c``, the server ``t >= t_c``."""
        return cut_timestep(self.protocol.cut_ratio, self.diffusion.timesteps)

    @property
    def client_sampling(self) -> str:
        """How the clients draw their batches: ``poisson`` with ``train.sampling: poisson`` and for DP-SGD
        clients (Opacus' accounting needs it; they train where ``t_c > 0``), else ``shuffle``."""
        dp_on = self.defense.client_dp.enabled and self.t_c > 0
        return "poisson" if self.train.sampling == "poisson" or dp_on else "shuffle"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def cut_timestep(cut_ratio: float, timesteps: int) -> int:
    """``t_c = round(c * T)``; Python's round-half-even is avoided for stability."""
    return int(min(timesteps, max(0, int(cut_ratio * timesteps + 0.5))))
