"""Run directories: one per run; rerunning the same command resumes it.

``config.yaml`` (resolved), ``splits.json`` (ground truth), ``checkpoints/``,
``server_view/``, ``ground_truth/``, ``samples/``, ``metrics/``, ``figures/``.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from .config import Config, dump_yaml, from_dict
from .errors import UserError
from .io import atomic_write_json, atomic_write_text

# Keys that may change between a run and its resumption: they do not change
# what has been computed so far (train.steps only extends the run).
SWEEP_MARKERS = {"cell.json", "error.log"}
MUTABLE_KEYS = {"device", "train.steps", "sample.n", "sample.batch_size", "train.keep_checkpoints"}


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, prefix + k + "."))
        else:
            out[prefix + k] = v
    return out


def identity(cfg: Config) -> dict:
    """The config without the keys that may change on resume."""
    return {k: v for k, v in _flatten(cfg.to_dict()).items() if k not in MUTABLE_KEYS}


def default_run_dir(cfg: Config, root: str | Path = "runs") -> Path:
    import hashlib

    h = hashlib.sha256(json.dumps(identity(cfg), sort_keys=True).encode()).hexdigest()[:8]
    c = f"{cfg.protocol.cut_ratio:g}"
    return Path(root) / f"{cfg.data.name}-{cfg.protocol.kind}-c{c}-{h}"


def read_run_config(run_dir: str | Path) -> Config:
    run_dir = Path(run_dir)
    path = run_dir / "config.yaml"
    if not run_dir.is_dir():
        raise UserError(f"run directory does not exist: {run_dir}")
    if not path.is_file():
        raise UserError(f"{run_dir} is not a run directory (no config.yaml)")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        raise UserError(f"{path} is not valid YAML") from None
    return from_dict(raw)


def open_run(cfg: Config, run_dir: Path) -> bool:
    """Create ``run_dir`` for ``cfg`` or check that it holds the same run.

    Returns True when the directory already held this run (resume).
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"--out {run_dir} exists and is not a folder")
    cfg_path = run_dir / "config.yaml"
    if cfg_path.is_file():
        old = identity(read_run_config(run_dir))
        new = identity(cfg)
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
    atomic_write_text(cfg_path, dump_yaml(cfg))
    return False


def write_config(cfg: Config, run_dir: Path) -> None:
    atomic_write_text(Path(run_dir) / "config.yaml", dump_yaml(cfg))


def write_json(run_dir: Path, rel: str, obj) -> None:
    atomic_write_json(Path(run_dir) / rel, obj)
