"""Ground truth of a run, for scoring only (never given to attacks): the splits, the
dataset, and the image id of every recorded message."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch

from collafuse_privacy.data import Splits, load_dataset
from collafuse_privacy.errors import UserError
from collafuse_privacy.rundir import read_run_config
from collafuse_privacy.view import load_shards


def load_splits(run_dir: str | Path) -> Splits:
    """``splits.json`` of a run; UserError when missing or corrupt."""
    run_dir = Path(run_dir)
    try:
        return Splits.from_dict(json.loads((run_dir / "splits.json").read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(f"{run_dir}/splits.json is missing or corrupt") from None


def load_ground_truth(run_dir: str | Path):
    """``(cfg, splits, dataset)`` of a run."""
    cfg = read_run_config(run_dir)
    return cfg, load_splits(run_dir), load_dataset(cfg.data)


def message_image_ids(run_dir: str | Path, n_rows: Optional[int] = None) -> torch.Tensor:
    """Image id of every recorded training message ``[N]`` (same order as the view).

    ``n_rows``: the number of rows the view holds; a mismatch is a UserError.
    """
    run_dir = Path(run_dir)
    ids = load_shards(run_dir / "ground_truth" / "train").get("image_id")
    ids = torch.zeros(0, dtype=torch.long) if ids is None else ids.long()
    if n_rows is not None and len(ids) != n_rows:
        raise UserError(f"{run_dir}: ground truth holds {len(ids)} image ids for {n_rows} recorded messages")
    return ids
