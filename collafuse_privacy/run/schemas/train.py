"""Schemas of training's own files: ``checkpoints/latest.json`` (written by ``checkpoint.commit_step_dir``
and on resume) and the rows of ``metrics/train.jsonl`` (one per round, written by the training loop, in
process or collected from the Flower parties)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..codec import SCHEMA, artefact


@artefact("latest-checkpoint")
@dataclass(frozen=True)
class LatestCheckpoint:
    """``checkpoints/latest.json``: the newest complete checkpoint folder and its round."""

    dir: str
    step: int
    schema: int = SCHEMA


@artefact("train-row")
@dataclass(frozen=True)
class TrainRow:
    """One round of ``metrics/train.jsonl``."""

    step: int
    client_loss: list[Optional[float]]
    client_n: list[int]
    sent: list[int]
    server_loss: Optional[float]
    server_n: int
    seconds: float = 0.0
    client_dp_epsilon: Optional[list[float]] = None
