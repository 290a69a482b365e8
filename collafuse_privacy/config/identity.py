"""What makes two configs the same run: the identity (every key but the mutable ones) and its hash,
which names run directories and sweep cells."""

from __future__ import annotations

import hashlib
import json

from .schema import Config


# Keys that may change between a run and its resumption: they do not change what has been
# computed so far (train.steps only extends the run, device and sample sizes do not enter it).
MUTABLE_KEYS = ("device", "train.steps", "train.keep_checkpoints", "sample.n", "sample.batch_size",
                "sample.batched_clients")


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
LATE_KEYS = {"train.sampling": "shuffle", "protocol.target_threat": "linked", "train.precision": "auto",
             "train.batched_clients": None, "train.deterministic": False, "sample.batched_clients": None,
             "train.local_steps": 1}


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
