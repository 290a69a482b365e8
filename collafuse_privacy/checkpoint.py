"""Checkpoints: every party's weights and EMA weights (safetensors) and the training state
(``state.pt``, loaded with ``weights_only=True``) in ``checkpoints/step-N/``, written to a
temporary folder and renamed, then named in ``checkpoints/latest.json``.

A resumed run restores every generator, batcher and counter, so it is bit-identical to an
uninterrupted one on the CPU.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Optional

from .errors import UserError
from .io import load_state, load_tensors, save_state, save_tensors
from .party import Party
from .rundir import LatestCheckpoint, RunDir


def step_name(step: int) -> str:
    return f"step-{step:08d}"


def save_checkpoint(rd: RunDir, step: int, parties: list[tuple[str, Party]], state: dict, keep: int) -> None:
    """Write ``checkpoints/step-<step>/`` atomically, point ``latest.json`` at it, keep the newest ``keep``."""
    name = step_name(step)
    final, tmp = rd.ckpt_dir / name, rd.ckpt_dir / f".{name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    for pname, party in parties:
        save_tensors(tmp / f"{pname}.safetensors", party.model.state_dict())
        save_tensors(tmp / f"{pname}_ema.safetensors", party.ema_state_dict())
    state = {"step": step, "parties": {pname: party.state_dict() for pname, party in parties}, **state}
    save_state(tmp / "state.pt", state)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    rd.write_latest(LatestCheckpoint(dir=name, step=step))
    old = sorted(p for p in rd.ckpt_dir.iterdir() if p.is_dir() and p.name.startswith("step-"))
    for p in old[:-keep]:
        shutil.rmtree(p)


def remove_partial(rd: RunDir) -> None:
    """Checkpoint folders cut off by an interruption."""
    if rd.ckpt_dir.is_dir():
        for p in rd.ckpt_dir.glob(".step-*.tmp"):
            shutil.rmtree(p)


def load_checkpoint(rd: RunDir, parties: list[tuple[str, Party]]) -> Optional[tuple[Path, dict]]:
    """Load the latest checkpoint into ``parties``; returns ``(its folder, its state)`` or None."""
    remove_partial(rd)
    latest = rd.latest()
    if latest is None:
        return None
    d = rd.ckpt_dir / latest.dir
    state = load_state(d / "state.pt")
    for pname, party in parties:
        w = load_tensors(d / f"{pname}.safetensors")
        e = load_tensors(d / f"{pname}_ema.safetensors")
        try:
            party.load(w, e, state["parties"][pname])
        except (RuntimeError, KeyError, ValueError, TypeError) as exc:
            raise UserError(f"checkpoint {d} does not fit this config ({pname}: {type(exc).__name__})") from None
    return d, state
