"""Ground truth of a run, for scoring only (never given to attacks): the splits, the
dataset (an audit run's with its canaries, :mod:`.canaries`), and the image id of every
recorded message."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from collafuse_privacy.data import Splits, load_dataset
from collafuse_privacy.errors import UserError
from collafuse_privacy.run.directory import RunDir
from collafuse_privacy.run.layout import TRUTH_TRAIN
from collafuse_privacy.view import load_shards

from .canaries import with_canaries


def load_splits(run_dir: str | Path) -> Splits:
    """``splits.json`` of a run; UserError when missing or corrupt."""
    return RunDir(run_dir).splits()


def load_ground_truth(run_dir: str | Path):
    """``(cfg, splits, dataset)`` of a run (an audit run's with its canaries)."""
    rd = RunDir(run_dir)
    cfg = rd.config()
    return cfg, rd.splits(), with_canaries(run_dir, load_dataset(cfg.data))


def message_image_ids(run_dir: str | Path, n_rows: Optional[int] = None) -> torch.Tensor:
    """Image id of every recorded training message ``[N]`` (same order as the view).

    ``n_rows``: the number of rows the view holds; a mismatch is a UserError.
    """
    run_dir = Path(run_dir)
    ids = load_shards(run_dir / TRUTH_TRAIN).get("image_id")
    ids = torch.zeros(0, dtype=torch.long) if ids is None else ids.long()
    if n_rows is not None and len(ids) != n_rows:
        raise UserError(f"{run_dir}: ground truth holds {len(ids)} image ids for {n_rows} recorded messages")
    return ids
