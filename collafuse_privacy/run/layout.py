"""The layout of a run directory: every folder, file and party name a run has, in one module.

One folder per run; rerunning the same command resumes it::

    config.yaml                    the resolved config (Config)
    splits.json                    ground truth: public / members / held-out (data.Splits)
    clients/secrets.json           the clients' secrets (client_secrets.Secrets)
    checkpoints/latest.json        the newest complete checkpoint (LatestCheckpoint)
    checkpoints/step-N/            server[_ema].safetensors, client-K[_ema].safetensors, state.pt, manifest.json
    server_view/meta.json          what the server knows (ViewMeta)
    server_view/public.safetensors the server's own public images
    server_view/record.json, manifest.json, train/shard-A-B.safetensors, handover/sample.safetensors
    ground_truth/train/            image ids of the recorded rows (evaluation only)
    samples/                       client-K.safetensors, grid[-client-K].png, handover.png, manifest.json
    figures/                       membership_roc[-clientK].png, reconstruction.png
    metrics/train.jsonl            one TrainRow per round
    metrics/{privacy,quality,burden,membership,reconstruction,audit}.json, membership_scores[-clientK].npz
    audit/canaries.safetensors     an audit run's canaries (eval/audit.py); audit-<target>/: a cell's audit twin
    flower/                        plan.json, result.json, and one folder per party (PARTY_FILES)
    cell.json, error.log           a sweep cell's record (sweep.py); sweep.json, cells/<id>/ in a sweep folder

Names are run-relative POSIX strings (``run_dir / SAMPLES_MANIFEST``) or functions of a party, a
client or a round (:func:`party_file`, :func:`samples_file`, :func:`step_name`); :class:`RunLayout`
gives the same as paths of one run. Parties are ``"server"`` and ``"client-K"``: this module is the one
place that spells a party's name (:func:`client_name`, :func:`client_index`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional, Union

from ..lock import LOCK_NAME

CONFIG = "config.yaml"
SPLITS = "splits.json"

# ---- parties ------------------------------------------------------------------------------

SERVER = "server"
_CLIENT = re.compile(r"client-(\d+)$")


def client_name(k: int) -> str:
    """Client ``k``'s party name: ``client-K``."""
    return f"client-{k}"


def client_index(name: str) -> Optional[int]:
    """K of a party name ``client-K``; None for the server or any other name."""
    m = _CLIENT.match(name)
    return int(m.group(1)) if m else None


def party_names(clients: int) -> list[str]:
    """``["server", "client-0", ..., "client-<clients-1>"]``."""
    return [SERVER] + [client_name(k) for k in range(clients)]


def party_file(who: Union[int, str], ema: bool = False) -> str:
    """A party's weights in a checkpoint folder: ``server.safetensors``, ``client-K_ema.safetensors``;
    ``who``: a party name or a client's index."""
    name = who if isinstance(who, str) else client_name(who)
    return f"{name}{'_ema' if ema else ''}.safetensors"


# ---- checkpoints/ ---------------------------------------------------------------------------

CHECKPOINTS = "checkpoints"
LATEST = f"{CHECKPOINTS}/latest.json"
STATE = "state.pt"  # in a step folder, beside the parties' weights
MANIFEST = "manifest.json"  # sha256 of a folder's files (a step folder, server_view/, samples/)
STEP_PREFIX = "step-"
PARTIAL_STEP_GLOB = f".{STEP_PREFIX}*.tmp"


def step_name(step: int) -> str:
    """The checkpoint folder of round ``step``: ``step-%08d``."""
    return f"{STEP_PREFIX}{step:08d}"


def partial_step_name(step: int) -> str:
    """The temporary folder a checkpoint is written in before its rename."""
    return f".{step_name(step)}.tmp"


def is_step_name(name: str) -> bool:
    return name.startswith(STEP_PREFIX)


def step_of(name: str) -> int:
    """The round of a step folder's name."""
    return int(name.split("-")[-1])


# ---- server_view/, ground_truth/ ---------------------------------------------------------------

VIEW = "server_view"
VIEW_FILES = ("meta.json", "record.json", "public.safetensors")  # in server_view/, sealed by its manifest
VIEW_META = f"{VIEW}/meta.json"
VIEW_RECORD = f"{VIEW}/record.json"
VIEW_PUBLIC = f"{VIEW}/public.safetensors"
VIEW_MANIFEST = f"{VIEW}/{MANIFEST}"
SHARDS = "train"  # the messages' shards, in server_view/, ground_truth/
VIEW_TRAIN = f"{VIEW}/{SHARDS}"
HANDOVER_DIR = f"{VIEW}/handover"
HANDOVER = f"{HANDOVER_DIR}/sample.safetensors"
TRUTH_TRAIN = f"ground_truth/{SHARDS}"
SHARD_RE = re.compile(r"shard-(\d{8})-(\d{8})\.safetensors$")


def shard_name(first: int, last: int) -> str:
    """The shard of the rows of rounds ``first..last``."""
    return f"shard-{first:08d}-{last:08d}.safetensors"


# ---- samples/, figures/, metrics/ ------------------------------------------------------------------

SAMPLES = "samples"
SAMPLES_MANIFEST = f"{SAMPLES}/{MANIFEST}"
SAMPLES_GRID = f"{SAMPLES}/grid.png"
HANDOVER_GRID = f"{SAMPLES}/handover.png"
FIGURES = "figures"
METRICS_DIR = "metrics"
TRAIN_LOG = f"{METRICS_DIR}/train.jsonl"
RECONSTRUCTION_FIGURE = f"{FIGURES}/reconstruction.png"
METRIC_NAMES = ("privacy", "quality", "burden", "membership", "reconstruction", "audit")  # metrics/<name>.json


def samples_file(k: int) -> str:
    """Client ``k``'s samples: ``samples/client-K.safetensors``."""
    return f"{SAMPLES}/{client_name(k)}.safetensors"


def samples_client(rel: str) -> Optional[int]:
    """K of a run-relative ``samples/client-K.safetensors``; None for any other file."""
    folder, _, name = rel.partition("/")
    return client_index(name.removesuffix(".safetensors")) if folder == SAMPLES else None


def samples_grid(k: int) -> str:
    return f"{SAMPLES}/grid-{client_name(k)}.png"


def metrics_file(name: str) -> str:
    """``metrics/<name>.json`` of one of :data:`METRIC_NAMES`."""
    if name not in METRIC_NAMES:
        raise KeyError(name)
    return f"{METRICS_DIR}/{name}.json"


def membership_scores(suffix: str = "") -> str:
    """Raw membership scores of a target (``suffix``: ``""`` for the server, ``-clientK``)."""
    return f"{METRICS_DIR}/membership_scores{suffix}.npz"


def membership_roc(suffix: str = "") -> str:
    return f"{FIGURES}/membership_roc{suffix}.png"


# ---- audit/, clients/ ------------------------------------------------------------------------------

AUDIT_CANARIES = "audit/canaries.safetensors"
SECRETS = "clients/secrets.json"


AUDIT_TWIN_GLOB = "audit-*"


def audit_twin(target: str) -> str:
    """The folder where a cell's audit of ``target`` (``server``, ``client:K``) trains its twin."""
    return f"audit-{target.replace(':', '-')}"


# ---- flower/ ---------------------------------------------------------------------------------------

FLOWER = "flower"
PLAN = "plan.json"  # in flower/ and in each client's folder
FLOWER_PLAN = f"{FLOWER}/{PLAN}"
FLOWER_RESULT = f"{FLOWER}/result.json"
FLOWER_APP = f"{FLOWER}/app"  # the Flower app folder (flwr run builds it into a FAB)
FLOWER_HOME = f"{FLOWER}/home"  # FLWR_HOME: Flower's own state stays in the run
FLOWER_LOGS = f"{FLOWER}/logs"  # superlink.log, supernode-K.log
# a party's own folder flower/<party>/ (party_dir)
PARTY_DATA = "data.safetensors"
PARTY_SECRET = "secret.json"
PARTY_ASSIGNMENT = "assignment.json"
PARTY_LOG = "train.jsonl"
PARTY_SENT = "sent"
PARTY_SAMPLES = "samples.safetensors"
PARTY_FILES = (CONFIG, PLAN, PARTY_DATA, PARTY_SECRET, PARTY_ASSIGNMENT, PARTY_LOG, PARTY_SENT, PARTY_SAMPLES,
               CHECKPOINTS)  # fmt: skip


def flower_dir(run_dir) -> Path:
    return Path(run_dir) / FLOWER


def party_dir(run_dir, who: Union[int, str]) -> Path:
    """``flower/<party>/``; ``who``: a party name or a client's index."""
    return flower_dir(run_dir) / (who if isinstance(who, str) else client_name(who))


# ---- sweeps ---------------------------------------------------------------

CELL = "cell.json"
CELL_ERROR = "error.log"
SWEEP_INDEX = "sweep.json"
CELLS = "cells"
SWEEP_MARKERS = {CELL, CELL_ERROR, LOCK_NAME}  # may precede a run in its folder


class RunLayout:
    """The paths of one run directory (module docstring); :class:`~collafuse_privacy.run.RunDir`
    adds reading and writing its typed files."""

    def __init__(self, path: Union[str, Path]):
        self.path = Path(path)

    config_path = property(lambda self: self.path / CONFIG)
    splits_path = property(lambda self: self.path / SPLITS)
    ckpt_dir = property(lambda self: self.path / CHECKPOINTS)
    latest_path = property(lambda self: self.path / LATEST)
    view_dir = property(lambda self: self.path / VIEW)
    meta_path = property(lambda self: self.path / VIEW_META)
    public_path = property(lambda self: self.path / VIEW_PUBLIC)
    record_path = property(lambda self: self.path / VIEW_RECORD)
    view_manifest_path = property(lambda self: self.path / VIEW_MANIFEST)
    view_train_dir = property(lambda self: self.path / VIEW_TRAIN)
    handover_dir = property(lambda self: self.path / HANDOVER_DIR)
    handover_path = property(lambda self: self.path / HANDOVER)
    truth_dir = property(lambda self: self.path / TRUTH_TRAIN)
    samples_dir = property(lambda self: self.path / SAMPLES)
    samples_manifest_path = property(lambda self: self.path / SAMPLES_MANIFEST)
    figures_dir = property(lambda self: self.path / FIGURES)
    metrics_dir = property(lambda self: self.path / METRICS_DIR)
    train_log_path = property(lambda self: self.path / TRAIN_LOG)
    canaries_path = property(lambda self: self.path / AUDIT_CANARIES)
    secrets_path = property(lambda self: self.path / SECRETS)

    def metrics_path(self, name: str) -> Path:
        return self.path / metrics_file(name)

    def step_dir(self, step: int) -> Path:
        return self.ckpt_dir / step_name(step)
