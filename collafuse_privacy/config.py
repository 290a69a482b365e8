"""Typed, frozen run configuration.

A config is a tree of frozen dataclasses. It is loaded from YAML with
``yaml.safe_load``, overridden with dotted ``key=value`` pairs (values parsed as
YAML scalars, so ``protocol.cut_ratio=0.3`` is a float), and validated on load:
unknown keys, wrong types and out-of-range values raise :class:`UserError`
naming the key. The resolved config is saved into every run directory.

The keys listed in DESIGN.md §6 are a public contract (outside tools set them).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Optional

import yaml

from .errors import UserError


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
    kind: str = "cut-image"  # shared-noise | cut-image
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
    batch_size: int = 64  # images per client per round
    # shuffle: seeded epochs over the client's members | poisson: each member independently with rate
    # batch_size / members per round. Both from the client's secret; the unlinked epsilon covers both
    # (defenses/unlinked.py). DP-SGD clients always draw Poisson.
    sampling: str = "shuffle"
    lr: float = 2e-3
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
    # Clipping rule of the one sampler every party steps (collafuse_privacy/sampler.py): none |
    # x0 (x0_hat clipped to [-1, 1] at every step) | low-noise (only where abar_t >= 0.5)
    clip: str = "low-noise"


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


# Keys that may change between a run and its resumption: they do not change what has been
# computed so far (train.steps only extends the run, device and sample sizes do not enter it).
MUTABLE_KEYS = ("device", "train.steps", "train.keep_checkpoints", "sample.n", "sample.batch_size")


def flatten(d: dict, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, prefix + k + "."))
        else:
            out[prefix + k] = v
    return out


# Keys added after runs were made with them absent: at their default they stay out of the hashes, so a
# run (or a sweep cell) made before they existed keeps its name and its sealed view.
LATE_KEYS = {"train.sampling": "shuffle", "protocol.target_threat": "linked"}


def _hashed(cfg: Config) -> dict:
    return {k: v for k, v in flatten(cfg.to_dict()).items() if not (k in LATE_KEYS and LATE_KEYS[k] == v)}


def identity(cfg: Config) -> dict:
    """The config without :data:`MUTABLE_KEYS`: what makes two configs the same run."""
    return {k: v for k, v in _hashed(cfg).items() if k not in MUTABLE_KEYS}


def config_hash(cfg: Config, n: int = 10, full: bool = False) -> str:
    """sha256 of the run's identity (``full``: of every key but ``device``), ``n`` hex digits.

    The identity hash names run directories and sweep cells: a run whose ``train.steps``
    grows is the same run, extended (resumed from its checkpoint). The full hash records
    what a run's stages were computed with (a sweep reruns a cell's later stages when it
    changes).
    """
    d = {k: v for k, v in _hashed(cfg).items() if k != "device"} if full else identity(cfg)
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:n]


def cut_timestep(cut_ratio: float, timesteps: int) -> int:
    """``t_c = round(c * T)``; Python's round-half-even is avoided for stability."""
    return int(min(timesteps, max(0, int(cut_ratio * timesteps + 0.5))))


# The clipping rules of the one sampler (collafuse_privacy/sampler.py).
CLIP_RULES = ("none", "x0", "low-noise")

CHOICES = {
    "device": ("auto", "cpu", "cuda"),
    "data.name": ("mnist5k", "digits", "cifar10", "image-folder"),
    "data.partition": ("iid", "by-class", "dirichlet"),
    "diffusion.schedule": ("linear", "cosine"),
    "model.preset": ("micro", "tiny", "small", "base"),
    "model.client_preset": (None, "micro", "tiny", "small", "base"),
    "model.server_conditioning": ("none", "client", "labels"),
    "record.dtype": ("float16", "float32"),
    "defense.client_dp.accountant": ("prv", "rdp"),
    "defense.client_dp.grad_sample_mode": ("hooks", "functorch"),
    "sample.clip": CLIP_RULES,
    "train.sampling": ("shuffle", "poisson"),
    "protocol.target_threat": ("linked", "unlinked"),
}

# (key, low, high, low inclusive, high inclusive)
RANGES = [
    ("seed", 0, 2**63 - 1, True, True),  # the largest seed torch and numpy both take
    ("protocol.cut_ratio", 0.0, 1.0, True, True),
    # membership attacks and FID compare members with held-out images: a run needs some
    ("data.holdout_fraction", 0.0, 1.0, False, False),
    ("data.public_fraction", 0.0, 1.0, True, False),
    ("data.dirichlet_alpha", 0.0, None, False, False),
    ("data.image_size", 4, 1024, True, True),
    ("data.clients", 1, None, True, False),
    ("diffusion.timesteps", 2, 100_000, True, True),
    ("diffusion.beta_start", 0.0, 1.0, False, False),
    ("diffusion.beta_end", 0.0, 1.0, False, False),
    ("train.steps", 0, None, True, False),
    ("train.batch_size", 1, None, True, False),
    ("train.lr", 0.0, None, False, False),
    ("train.lr_warmup", 0, None, True, False),
    ("train.grad_clip", 0.0, None, False, False),
    ("train.checkpoint_every", 1, None, True, False),
    ("train.keep_checkpoints", 1, None, True, False),
    ("record.max_items", 0, None, True, False),
    ("record.shard_size", 1, None, True, False),
    ("sample.n", 1, None, True, False),
    ("sample.batch_size", 1, None, True, False),
    ("data.max_images", 1, None, True, False),
    ("data.channels", 1, 3, True, True),
    ("defense.client_dp.max_grad_norm", 0.0, None, False, False),
    ("defense.client_dp.delta", 0.0, 1.0, False, False),
    ("defense.client_dp.noise_multiplier", 0.0, None, True, False),
    ("defense.client_dp.target_epsilon", 0.0, None, False, False),
    ("defense.client_dp.log_every", 1, None, True, False),
    ("protocol.target_epsilon", 0.0, None, True, False),
    ("protocol.target_delta", 0.0, 1.0, False, False),
]


def _get(cfg: Config, key: str):
    obj = cfg
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


def validate(cfg: Config) -> Config:
    from .protocol import PROTOCOLS

    for key, allowed in {**CHOICES, "protocol.kind": tuple(PROTOCOLS.names())}.items():
        value = _get(cfg, key)
        if value not in allowed:
            shown = ", ".join("null" if a is None else str(a) for a in allowed)
            raise UserError(f"config key '{key}' must be one of {shown}, got {value!r}")
    for key, lo, hi, lo_inc, hi_inc in RANGES:
        value = _get(cfg, key)
        if value is None:
            continue
        bad = (lo is not None and (value < lo if lo_inc else value <= lo)) or (
            hi is not None and (value > hi if hi_inc else value >= hi)
        )
        if bad:
            lo_s = ("[" if lo_inc else "(") + str(lo)
            hi_s = (str(hi) if hi is not None else "inf") + ("]" if hi_inc else ")")
            raise UserError(f"config key '{key}' must lie in {lo_s}, {hi_s}, got {value!r}")
    if cfg.diffusion.beta_end <= cfg.diffusion.beta_start:
        raise UserError("config key 'diffusion.beta_end' must be larger than 'diffusion.beta_start'")
    if cfg.data.holdout_fraction + cfg.data.public_fraction >= 1.0:
        raise UserError("config keys 'data.holdout_fraction' + 'data.public_fraction' must stay below 1")
    if cfg.data.name in ("cifar10", "image-folder") and not cfg.data.root:
        raise UserError(f"config key 'data.root' is required for data.name={cfg.data.name}")
    dp = cfg.defense.client_dp
    if dp.enabled:
        if dp.noise_multiplier is not None and dp.target_epsilon is not None:
            raise UserError(
                "config keys 'defense.client_dp.noise_multiplier' and 'defense.client_dp.target_epsilon' "
                "exclude each other: set one (the other is derived)"
            )
        if dp.noise_multiplier is None and dp.target_epsilon is None:
            raise UserError(
                "config key 'defense.client_dp.enabled' needs 'defense.client_dp.noise_multiplier' "
                "or 'defense.client_dp.target_epsilon'"
            )
    PROTOCOLS.get(cfg.protocol.kind).check_config(cfg)  # what only some protocols can do
    from .diffusion import make_scheduler

    make_scheduler(cfg.diffusion)  # a schedule that does not end near pure noise is refused here
    return cfg


class StrictLoader(yaml.SafeLoader):
    """``yaml.safe_load`` that refuses a mapping with a key twice (YAML would keep the last one,
    silently) and an alias-expanded document of more than :data:`MAX_NODES` nodes (an alias bomb)."""

    MAX_NODES = 1_000_000

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                dup = key in seen
            except TypeError:  # an unhashable key: SafeLoader reports it
                break
            if dup:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {str(key)[:60]!r} (line {key_node.start_mark.line + 1})",
                    key_node.start_mark)  # fmt: skip
            seen.add(key)
        return super().construct_mapping(node, deep=deep)

    def compose_document(self):
        node = super().compose_document()
        count, stack = 0, [node]
        while stack:  # nodes as the tree expands them: an alias counts every time it is used
            n = stack.pop()
            count += 1
            if count > self.MAX_NODES:
                raise yaml.YAMLError(f"the document expands to more than {self.MAX_NODES} values (aliases)")
            if isinstance(n, yaml.MappingNode):
                stack += [x for kv in n.value for x in kv]
            elif isinstance(n, yaml.SequenceNode):
                stack += list(n.value)
        return node


def strict_yaml(text: str) -> Any:
    """YAML text as plain data (safe types only; duplicate keys and alias bombs refused, yaml.YAMLError)."""
    return yaml.load(text, Loader=StrictLoader)  # noqa: S506 - a SafeLoader subclass


def _yaml_problem(exc: yaml.YAMLError) -> str:
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return str(problem)[:120]


def parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise UserError(f"--set expects key=value, got '{item[:200]}'")
    key, _, text = item.partition("=")
    key = key.strip()
    try:
        value = strict_yaml(text) if text.strip() else None
    except yaml.YAMLError as exc:
        if "duplicate key" in str(exc) or "expands to" in str(exc):
            raise UserError(f"--set {key}: {_yaml_problem(exc)}") from None
        value = text
    return key, value


def _merge_into(node: dict, key: str, value: Any) -> None:
    """``node[key] = value``, except that a mapping is merged key by key into the mapping there:
    ``--set 'data={name: digits}'`` changes ``data.name`` and keeps the other ``data`` keys."""
    if isinstance(value, dict) and isinstance(node.get(key), dict):
        for k, v in value.items():
            _merge_into(node[key], k, v)
    else:
        node[key] = value


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    raw = json.loads(json.dumps(raw))  # deep copy of plain data
    for item in overrides:
        key, value = parse_override(item)
        parts = key.split(".")
        node = raw
        for part in parts[:-1]:
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise UserError(f"--set {key}: '{part}' is not a section")
            node = nxt
        _merge_into(node, parts[-1], value)
    return raw


MAX_CONFIG_BYTES = 16 * 2**20


def default_config_text() -> str:
    return resources.files("collafuse_privacy.configs").joinpath("default.yaml").read_text()


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if path.is_dir():
        raise UserError(f"config file {path} is a folder; give a YAML file")
    if path.exists() and not path.is_file():
        raise UserError(f"config file {path} is not a regular file (a device or a pipe?); give a YAML file")
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise UserError(f"config file {path} is larger than {MAX_CONFIG_BYTES // 2**20} MiB: not a config")
    try:
        raw = strict_yaml(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        dup = f": {_yaml_problem(exc)}" if "duplicate key" in str(exc) or "expands to" in str(exc) else ""
        raise UserError(f"config file {path} is not valid YAML{where}{dup}") from None
    except UnicodeDecodeError:
        raise UserError(f"config file {path} is not a text file") from None
    return {} if raw is None else raw


def from_dict(raw: Any) -> Config:
    """A validated :class:`Config` from plain data (unknown keys, wrong types and ranges are UserErrors)."""
    from .typed import from_data

    return validate(from_data(Config, raw))


def load_config(path: Optional[str | Path] = None, overrides: Optional[list[str]] = None) -> Config:
    """Load ``path`` (default: the embedded ``configs/default.yaml``), apply
    ``--set`` overrides and validate. Raises :class:`UserError` naming the key."""
    if path is None:
        raw = yaml.safe_load(default_config_text()) or {}
    else:
        raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise UserError(f"config file {path} must hold a mapping of keys")
    return from_dict(apply_overrides(raw, list(overrides or [])))


def with_overrides(cfg: Config, overrides: list[str]) -> Config:
    """``cfg`` with dotted ``key=value`` overrides applied (validated)."""
    return from_dict(apply_overrides(cfg.to_dict(), overrides))


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def _scalar(v) -> str:
    return yaml.safe_dump({"x": v}, default_flow_style=False).strip()[3:]


def describe(cfg: Config) -> str:
    """``cfg`` as YAML with every key; a comment gives the default where the value differs,
    and the allowed values where the key is a choice. Loads back to ``cfg``."""
    from .protocol import PROTOCOLS

    defaults = flatten(Config().to_dict())
    choices = {**CHOICES, "protocol.kind": tuple(PROTOCOLS.names())}
    lines = ["# the resolved config: every key (--set KEY=VALUE overrides any of them)"]

    def walk(d: dict, depth: int, prefix: str) -> None:
        for k, v in d.items():
            key = prefix + k
            pad = "  " * depth
            if isinstance(v, dict):
                lines.append(f"{pad}{k}:")
                walk(v, depth + 1, key + ".")
                continue
            notes = []
            if defaults.get(key) != v:
                notes.append(f"default: {_scalar(defaults.get(key))}")
            if key in choices:
                notes.append("one of " + " | ".join(_scalar(c) for c in choices[key]))
            lines.append(f"{pad}{k}: {_scalar(v)}" + (f"  # {'; '.join(notes)}" if notes else ""))

    walk(cfg.to_dict(), 0, "")
    return "\n".join(lines)
