"""Checkpoints: every party's weights and EMA weights (safetensors) and the training state
(``state.pt``, loaded with ``weights_only=True``) in ``checkpoints/step-N/``, with a
``manifest.json`` holding the sha256 of each file; written to a temporary folder and
renamed, then named in ``checkpoints/latest.json``.

On load every file is checked against its manifest and every weight for finiteness: a
checkpoint damaged in place (same size, other bytes) is refused with the previous intact
one offered; with ``latest.json`` missing, the newest intact step folder is used, and the
caller says so. A resumed run restores every generator, batcher and counter, so it is
bit-identical to an uninterrupted one on the CPU.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from .errors import UserError
from .io import load_state, load_tensors, save_state, save_tensors
from .party import Party
from .run.codec import read_json, write_json
from .run.directory import RunDir
from .run.layout import MANIFEST, PARTIAL_STEP_GLOB, STATE, is_step_name, partial_step_name, party_file, step_name
from .run.schemas import LatestCheckpoint


@dataclass(frozen=True)
class Manifest:
    """``checkpoints/step-N/manifest.json``: the round and the sha256 of every file."""

    step: int
    files: dict[str, str]
    schema: int = 1


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_checkpoint(rd: RunDir, step: int, parties: list[tuple[str, Party]], state: dict, keep: int) -> None:
    """Write ``checkpoints/step-<step>/`` atomically, point ``latest.json`` at it, keep the newest ``keep``."""
    tmp = new_step_dir(rd, step)
    for pname, party in parties:
        save_tensors(tmp / party_file(pname), party.model.state_dict())
        save_tensors(tmp / party_file(pname, ema=True), party.ema_state_dict())
    state = {"step": step, "parties": {pname: party.state_dict() for pname, party in parties}, **state}
    save_state(tmp / STATE, state)
    commit_step_dir(rd, step, tmp, keep)


def new_step_dir(rd: RunDir, step: int) -> Path:
    """An empty temporary folder for the checkpoint of round ``step`` (``commit_step_dir`` makes it one)."""
    tmp = rd.ckpt_dir / partial_step_name(step)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def commit_step_dir(rd: RunDir, step: int, tmp: Path, keep: Optional[int] = None) -> None:
    """Seal the filled folder ``tmp`` (its manifest), rename it to ``step-<step>/``, point
    ``latest.json`` at it and keep the newest ``keep`` step folders (all when None)."""
    name = step_name(step)
    final = rd.ckpt_dir / name
    write_json(tmp / MANIFEST, Manifest(step, {f.name: sha256(f) for f in sorted(tmp.iterdir())}))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    rd.write_latest(LatestCheckpoint(dir=name, step=step))
    if keep is not None:
        old = sorted(p for p in rd.ckpt_dir.iterdir() if p.is_dir() and is_step_name(p.name))
        for p in old[:-keep]:
            shutil.rmtree(p)


def remove_partial(rd: RunDir) -> None:
    """Checkpoint folders cut off by an interruption."""
    if rd.ckpt_dir.is_dir():
        for p in rd.ckpt_dir.glob(PARTIAL_STEP_GLOB):
            shutil.rmtree(p)


def damage(step_dir: Path, files: Optional[list[str]] = None) -> Optional[str]:
    """Why ``step_dir`` (or just its ``files``) cannot be trusted, or None when it is intact."""
    mpath = step_dir / MANIFEST
    if not mpath.is_file():
        return "it has no manifest.json (an older version's checkpoint, or a damaged one)"
    try:
        manifest = read_json(mpath, Manifest)
    except UserError as exc:
        return f"its manifest is unreadable ({exc})"
    for name in files if files is not None else manifest.files:
        f = step_dir / name
        if name not in manifest.files:
            return f"{name} is not in its manifest"
        if not f.is_file():
            return f"{name} is missing"
        if sha256(f) != manifest.files[name]:
            return f"{name} does not match the sha256 in its manifest (changed after it was written)"
    return None


def step_dirs(rd: RunDir) -> list[Path]:
    """Complete step folders, newest first."""
    if not rd.ckpt_dir.is_dir():
        return []
    return sorted((p for p in rd.ckpt_dir.iterdir() if p.is_dir() and is_step_name(p.name)), reverse=True)


def newest_intact(rd: RunDir, below: Optional[Path] = None) -> Optional[Path]:
    for d in step_dirs(rd):
        if (below is None or d.name < below.name) and damage(d) is None:
            return d
    return None


def verified_step_dir(rd: RunDir, files: Optional[list[str]] = None) -> tuple[Path, Optional[str]]:
    """The checkpoint folder to use, checked: ``(folder, note)``; note says when ``latest.json``
    was missing and the newest intact folder was taken instead. UserError for a damaged one."""
    latest = rd.latest()
    note = None
    if latest is None:
        d = newest_intact(rd)
        if d is None:
            raise UserError(f"{rd.path} has no checkpoint yet; run train first")
        note = f"{rd.ckpt_dir}/latest.json is missing: using {d.name}, the newest intact checkpoint"
    else:
        d = rd.ckpt_dir / latest.dir
        why = damage(d, files)
        if why is not None:
            prev = newest_intact(rd, below=d)
            offer = (f"the previous checkpoint, {prev.name}, is intact: remove {d} to resume from it" if prev
                     else "no earlier intact checkpoint is left: retrain")  # fmt: skip
            raise UserError(f"checkpoint {d} is damaged: {why}; {offer}")
    return d, note


def check_finite(tensors: dict[str, torch.Tensor], where) -> None:
    bad = sum(int((~torch.isfinite(t)).sum()) for t in tensors.values() if t.is_floating_point())
    if bad:
        raise UserError(f"{where} holds {bad} non-finite weights (NaN or inf): the model diverged before it was saved")


def load_checkpoint(rd: RunDir, parties: list[tuple[str, Party]],
                    step: Optional[int] = None) -> Optional[tuple[Path, dict, Optional[str]]]:  # fmt: skip
    """Load the latest intact checkpoint (or the one of round ``step``) into ``parties``:
    ``(its folder, its state, note)`` or None."""
    remove_partial(rd)
    if rd.latest() is None and not step_dirs(rd):
        return None
    if step is None:
        d, note = verified_step_dir(rd)
    else:
        d, note = rd.ckpt_dir / step_name(step), None
        why = damage(d) if d.is_dir() else "it does not exist"
        if why is not None:
            raise UserError(f"checkpoint {d} cannot be used: {why}")
    state = load_state(d / STATE)
    for pname, party in parties:
        w = load_tensors(d / party_file(pname))
        e = load_tensors(d / party_file(pname, ema=True))
        check_finite(w, d / party_file(pname))
        check_finite(e, d / party_file(pname, ema=True))
        try:
            party.load(w, e, state["parties"][pname])
        except (RuntimeError, KeyError, ValueError, TypeError) as exc:
            raise UserError(f"checkpoint {d} does not fit this config ({pname}: {type(exc).__name__})") from None
    if note is not None or step is not None:
        rd.write_latest(LatestCheckpoint(dir=d.name, step=int(state["step"])))
    return d, state, note
