"""One run directory, typed: :class:`RunDir` reads and writes every typed file of a run (its paths are
:class:`~collafuse_privacy.run.layout.RunLayout`'s, its schemas :mod:`collafuse_privacy.run.schemas`'),
and :func:`open_run` creates a run or checks that a folder holds the same one (resume)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import yaml

from ..config import Config, config_hash, dump_yaml, from_dict, identity, strict_yaml
from ..data import Splits
from ..errors import UserError
from ..io import atomic_write_text
from .codec import artefact_named, parse_plain, parse_row, read_json, write_json
from .layout import METRIC_NAMES, SPLITS, SWEEP_MARKERS, RunLayout
from .schemas import LatestCheckpoint, RecordStats, TrainRow, ViewMeta  # and every artefact registers

# name -> (file in metrics/, its dataclass)
METRICS: dict[str, tuple[str, type]] = {name: (f"{name}.json", artefact_named(name).cls) for name in METRIC_NAMES}


class RunDir(RunLayout):
    """Typed access to one run directory (:mod:`collafuse_privacy.run.layout` draws it)."""

    def record(self) -> Optional[RecordStats]:
        return read_json(self.record_path, RecordStats) if self.record_path.is_file() else None

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
    def splits(self) -> Splits:
        if not self.splits_path.is_file():
            raise UserError(f"{self.path}/{SPLITS} is missing")
        return read_json(self.splits_path, Splits)

    def write_splits(self, splits: Splits) -> None:
        write_json(self.splits_path, splits)

    # ---- checkpoints/latest.json -----------------------------------------------------
    def latest(self) -> Optional[LatestCheckpoint]:
        return read_json(self.latest_path, LatestCheckpoint) if self.latest_path.is_file() else None

    def write_latest(self, latest: LatestCheckpoint) -> None:
        write_json(self.latest_path, latest)

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
        path = self.metrics_path(name)
        write_json(path, parse_plain(obj, METRICS[name][1], path))
        return path

    def train_log(self) -> list[TrainRow]:
        """Rows of ``metrics/train.jsonl`` (a line cut by an interruption is skipped)."""
        if not self.train_log_path.is_file():
            return []
        rows = []
        for line in self.train_log_path.read_text().splitlines():
            try:
                raw = json.loads(line)
            except ValueError:
                continue
            rows.append(parse_row(raw, TrainRow, self.train_log_path))
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
