"""The sweep's files: ``<cell>/cell.json`` (:class:`CellStatus`, written by
``orchestration/cells.py``) and ``OUT/sweep.json`` (:class:`SweepIndex`, written by
``orchestration/sweep.py``), with their readers, here so that ``report`` reads them without
importing the orchestration."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ...errors import UserError
from ...typed import to_data
from ..codec import artefact, parse, read_json
from ..layout import CELL, SWEEP_INDEX


@artefact("cell")
@dataclass(frozen=True)
class CellStatus:
    """``<cell>/cell.json``: which stages of the cell are done, with which options and config, and how
    long each took; ``status`` pending | running | done | failed (``failed_stage``, ``error``)."""

    id: str
    overrides: dict[str, Any]
    label: str
    config_hash: Optional[str] = None
    stages_done: list[str] = field(default_factory=list)
    stage_options: dict[str, Any] = field(default_factory=dict)
    status: str = "pending"
    seconds: dict[str, float] = field(default_factory=dict)
    failed_stage: Optional[str] = None
    error: Optional[str] = None
    schema: int = 1


def read_status(run_dir: Path) -> Optional[CellStatus]:
    """A cell's ``cell.json`` (None when missing or damaged: its stages are then re-checked). A file from
    before the schema version was written reads as version 1."""
    f = Path(run_dir) / CELL
    try:
        raw = json.loads(f.read_text()) if f.is_file() else None
        if isinstance(raw, dict):
            return parse({"schema": 1, **raw}, CellStatus, f)
    except (ValueError, UserError):
        pass  # a corrupt marker only costs a re-check of the stages
    return None


def read_cell(run_dir: Path) -> dict:
    """``cell.json`` as plain data (empty when missing or damaged); for readers of the old dict API."""
    status = read_status(run_dir)
    return {} if status is None else to_data(status)


@dataclass(frozen=True)
class IndexCell:
    """One cell in ``sweep.json``."""

    id: str
    dir: str
    overrides: dict
    label: str
    setting: str = ""  # the label without the training seed
    status: str = "pending"
    error: Optional[str] = None
    seconds: dict = field(default_factory=dict)


@artefact("sweep-index")
@dataclass(frozen=True)
class SweepIndex:
    """``OUT/sweep.json``: the sweep's name, stages and cells (what ``report`` reads)."""

    name: str
    stages: dict
    cells: list[IndexCell]
    schema: int = 1


def read_index(out: str | Path) -> SweepIndex:
    return read_json(Path(out) / SWEEP_INDEX, SweepIndex)
