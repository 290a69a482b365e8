"""``collafuse-privacy sweep``: a grid of ordinary runs, resumable, failure-tolerant.

A sweep file (YAML, ``yaml.safe_load``)::

    name: default                  # optional, shown in the report
    config: default.yaml           # a config file (relative to the sweep file), and/or
    base:                          # a config mapping (refines 'config' when both are given)
      train: {steps: 300}
    grid:                          # dotted key -> list of values (cartesian product)
      protocol.cut_ratio: [0.2, 0.5, 0.8]
      seed: [0, 1]
    include:                       # optional extra cells (overrides on top of base)
      - {protocol.cut_ratio: 0.5, defense.client_dp.enabled: true}
      - {protocol.cut_ratio: 0.8, protocol.fixed_noise: true,
         stages: {audit: {canaries: 1000}}}   # stages for this cell only (added to 'stages')
    stages:                        # optional; what each cell runs (default: all, in this order)
      train: {}
      sample: {}
      evaluate: {n: 128, extractor: auto}
      privacy: {}
      reconstruction: {methods: [rescale, learned, average]}
      membership: {methods: null, targets: [server, client:0]}

Each cell is an ordinary run directory ``OUT/cells/<hash>`` keyed by the hash of
its run identity (``config.config_hash``: every key but ``device``, ``train.steps``
and the sample sizes), so rerunning skips finished stages of finished cells and
resumes unfinished ones (training resumes from its last checkpoint). A cell whose
full config changed since its stages ran (``train.steps`` raised, say) reruns them:
training extends from its checkpoint, the later stages are recomputed. A cell that
fails is recorded with its error (``cell.json`` and ``error.log``) and the others go
on. ``jobs > 1`` runs cells in parallel processes, each with ``threads // jobs`` torch
threads (``--threads``, default the cores). The stages come from one registry (``stages.py``) shared with the CLI.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from .config import apply_overrides, config_hash, from_dict, read_yaml
from .errors import UserError
from .io import atomic_write_json, atomic_write_text
from .lock import locked
from .run.codec import read_json, write_json
from .run.layout import CELL, CELL_ERROR, CELLS, SWEEP_INDEX
from .stages import STAGES

TOP_KEYS = {"name", "base", "config", "grid", "include", "stages", "seeds"}


@dataclass(frozen=True)
class Cell:
    """One run of the sweep: its overrides, resolved config and directory."""

    id: str
    overrides: dict  # dotted key -> value, what distinguishes this cell
    config: dict  # resolved config (plain data)
    dir: str
    stages: dict = field(default_factory=dict)  # stages of this cell only (an include entry's 'stages')

    @property
    def label(self) -> str:
        return short_label(self.overrides)

    @property
    def setting(self) -> str:
        return short_label({k: v for k, v in self.overrides.items() if k != "seed"})


@dataclass
class Sweep:
    name: str
    out: Path
    cells: list[Cell]
    stages: dict[str, dict] = field(default_factory=dict)

    def cell_stages(self, cell: Cell) -> dict[str, dict]:
        """The stages ``cell`` runs: the sweep's, plus (or overridden by) its own, in registry order."""
        merged = {**self.stages, **cell.stages}
        return {s: merged[s] for s in STAGES.names() if s in merged}


SHORT = {"protocol.cut_ratio": "c", "defense.client_dp.noise_multiplier": "sigma", "protocol.kind": "",
         "defense.client_dp.target_epsilon": "target eps", "protocol.target_epsilon": "view target eps"}
FLAGS = {"defense.client_dp.enabled": "DP-SGD", "protocol.fixed_noise": "fixed noise"}


def short_label(overrides: dict) -> str:
    """``{'protocol.cut_ratio': 0.5, 'defense.client_dp.enabled': True}`` -> ``c=0.5 DP-SGD``."""
    parts = []
    for k, v in overrides.items():
        if v is None:
            continue
        if k in FLAGS:
            if v:
                parts.append(FLAGS[k])
        elif k in SHORT:
            parts.append(f"{SHORT[k]}={v:g}" if SHORT[k] and isinstance(v, float) else (f"{SHORT[k]}={v}" if SHORT[k] else str(v)))
        else:
            parts.append(f"{k.split('.')[-1]}={v}")
    return " ".join(parts) or "base"


def _as_override(key: str, value) -> str:
    return f"{key}={json.dumps(value)}"  # JSON is YAML: types survive the round trip


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


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


@dataclass(frozen=True)
class SweepIndex:
    """``OUT/sweep.json``: the sweep's name, stages and cells (what ``report`` reads)."""

    name: str
    stages: dict
    cells: list[IndexCell]
    schema: int = 1


def read_index(out: str | Path) -> SweepIndex:
    return read_json(Path(out) / SWEEP_INDEX, SweepIndex)


def _write_index(out: Path, index: SweepIndex) -> None:
    write_json(out / SWEEP_INDEX, index)


def load_sweep(path: str | Path, out: str | Path, device: Optional[str] = None, seeds: Optional[int] = None) -> Sweep:
    """Parse and validate a sweep file; every cell's config is checked before anything runs.

    ``seeds`` (or the file's ``seeds:``): every setting is trained with that many seeds
    (its ``seed``, ``seed + 1``, ...), so the report can give intervals across training
    randomness beside the bootstrap over candidates.
    """
    path = Path(path)
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise UserError(f"sweep file {path} must hold a mapping with 'base' (or 'config') and 'grid'")
    unknown = sorted(set(raw) - TOP_KEYS)
    if unknown:
        raise UserError(f"unknown key '{unknown[0]}' in sweep file {path} (known: {', '.join(sorted(TOP_KEYS))})")
    base = {}
    if "config" in raw:
        cpath = Path(str(raw["config"]))
        if not cpath.is_absolute():
            cpath = path.parent / cpath
        base = read_yaml(cpath)
        if not isinstance(base, dict):
            raise UserError(f"config file {cpath} must hold a mapping of keys")
    extra = raw.get("base") or {}
    if not isinstance(extra, dict):
        raise UserError(f"sweep file {path}: 'base' must be a config mapping")
    base = _merge(base, extra)  # 'base' refines 'config' when both are given
    if device is not None:
        base = apply_overrides(base, [f"device={device}"])

    grid = raw.get("grid") or {}
    if not isinstance(grid, dict):
        raise UserError(f"sweep file {path}: 'grid' must map dotted config keys to lists of values")
    for k, v in grid.items():
        if not isinstance(v, list) or not v:
            raise UserError(f"sweep file {path}: grid key '{k}' must have a non-empty list of values")
    include = raw.get("include") or []
    if not isinstance(include, list) or not all(isinstance(i, dict) for i in include):
        raise UserError(f"sweep file {path}: 'include' must be a list of mappings (dotted key -> value)")

    combos = [dict(zip(grid, vals)) for vals in itertools.product(*grid.values())] if grid else [{}]
    own = [{}] * len(combos)
    for i in include:
        i = dict(i)
        own.append(_parse_stages(i.pop("stages", None) or {}, path, "an include entry's 'stages'"))
        combos.append(i)
    n_seeds = raw.get("seeds", 1) if seeds is None else seeds
    if isinstance(n_seeds, bool) or not isinstance(n_seeds, int) or n_seeds < 1:
        raise UserError(f"sweep file {path}: 'seeds' must be a whole number >= 1, got {n_seeds!r}")
    if n_seeds > 1:
        if any("seed" in c for c in combos):
            raise UserError(f"sweep file {path}: 'seeds' replicates every cell over seeds; do not also vary 'seed'")
        seed0 = int(base.get("seed", 0))
        own = [o for o in own for _ in range(n_seeds)]
        combos = [{**c, "seed": seed0 + i} for c in combos for i in range(n_seeds)]
    out = Path(out)
    cells, seen = [], set()
    for combo, extra in zip(combos, own):
        try:
            cfg = from_dict(apply_overrides(base, [_as_override(k, v) for k, v in combo.items()]))
        except UserError as exc:
            label = ", ".join(f"{k}={v}" for k, v in combo.items()) or "base"
            raise UserError(f"sweep file {path}, cell [{label}]: {exc}") from None
        cid = config_hash(cfg)
        if cid in seen:  # the same run twice (an include entry refining a cell): one cell, the later config
            i = next(k for k, c in enumerate(cells) if c.id == cid)  # (train.steps, say) and both stages
            cells[i] = dataclasses.replace(cells[i], overrides={**cells[i].overrides, **combo}, config=cfg.to_dict(),
                                           stages={**cells[i].stages, **extra})  # fmt: skip
            continue
        seen.add(cid)
        cells.append(Cell(cid, combo, cfg.to_dict(), str(out / CELLS / cid), extra))

    stages_raw = raw.get("stages")
    order = STAGES.names()
    if stages_raw is None:
        stages = {s: {} for s in order if not getattr(STAGES.get(s), "on_request", False)}
    else:
        stages = _parse_stages(stages_raw, path, "'stages'")
        if "train" not in stages and not all(getattr(STAGES.get(s), "on_request", False) for s in stages):
            stages = {"train": {}, **stages}  # every stage but the audit (which trains its own twin) needs it
        stages = {s: stages[s] for s in order if s in stages}  # fixed order
    _check_stage_options(stages, path)
    sweep = Sweep(str(raw.get("name") or path.stem), out, cells, stages)
    for cell in cells:  # what depends on a cell's config, for every cell, before anything runs
        _check_cell_stages(cell, sweep.cell_stages(cell), path)
    return sweep


def _check_cell_stages(cell: Cell, stages: dict, path) -> None:
    """A cell runs at least one stage, and its attack targets name clients it has."""
    from .attacks.membership import parse_target

    if not stages:
        raise UserError(f"sweep file {path}, cell [{cell.label}]: no stages to run (the sweep's 'stages' is empty and "
                        "the cell has none of its own): give it stages, or leave it out")  # fmt: skip
    clients = int(cell.config["data"]["clients"])
    targets = list((stages.get("membership") or {}).get("targets") or [])
    if "audit" in stages:
        targets.append((stages["audit"] or {}).get("target") or "server")
    for t in targets:
        try:
            kind, k = parse_target(t)
        except UserError as exc:
            raise UserError(f"sweep file {path}, cell [{cell.label}]: {exc}") from None
        if kind == "client" and not 0 <= k < clients:
            raise UserError(f"sweep file {path}, cell [{cell.label}]: target {t!r}: the cell has clients "
                            f"0..{clients - 1}")  # fmt: skip


def _parse_stages(raw, path, what: str) -> dict:
    """A ``stages`` mapping (stage name -> options), every name and option checked."""
    if not isinstance(raw, dict):
        raise UserError(f"sweep file {path}: {what} must map stage names to option mappings")
    order = STAGES.names()
    stages = {}
    for s, opts in raw.items():
        if s not in STAGES.classes:
            raise UserError(f"sweep file {path}: unknown stage '{s}' in {what} (known: {', '.join(order)})")
        opts = opts or {}
        specs = STAGES.get(s).options
        allowed = set(specs)
        if not isinstance(opts, dict) or set(opts) - allowed:
            bad = sorted(set(opts) - allowed) if isinstance(opts, dict) else [opts]
            raise UserError(f"sweep file {path}: stage '{s}' has unknown option {bad[0]!r} "
                            f"(known: {', '.join(sorted(allowed)) or 'none'})")  # fmt: skip
        from .options import check_value

        try:
            stages[s] = {k: check_value(specs[k], v, f"stage '{s}' option '{k}'") for k, v in opts.items()}
        except UserError as exc:
            raise UserError(f"sweep file {path}: {exc}") from None
    _check_stage_options(stages, path)
    return stages


# ---- running one cell ---------------------------------------------------------------


def read_cell(run_dir: Path) -> dict:
    """A cell's ``cell.json`` (empty when missing or damaged: its stages are then re-checked)."""
    f = run_dir / CELL
    if f.is_file():
        try:
            return json.loads(f.read_text())
        except ValueError:
            pass  # a corrupt marker only costs a re-check of the stages
    return {}


def _check_stage_options(stages: dict, path) -> None:
    """Attack methods and their options named in a sweep file exist (before anything runs)."""
    from .attacks.base import check_family_options
    from .attacks.membership import FAMILY as MEMBERSHIP
    from .attacks.reconstruction import FAMILY as RECONSTRUCTION

    from .eval.audit import check_audit_methods, parse_audit_target

    for name, family in (("reconstruction", RECONSTRUCTION), ("membership", MEMBERSHIP)):
        if name not in stages:
            continue
        opts = stages[name]
        try:
            methods = family.resolve(opts.get("methods"))
            check_family_options(family, opts.get("options") or {}, methods)
        except UserError as exc:
            raise UserError(f"sweep file {path}: stage '{name}': {exc}") from None
    if "audit" in stages:
        opts = stages["audit"] or {}
        try:
            check_audit_methods(opts.get("methods"), opts.get("options"), parse_audit_target(opts.get("target") or "server"))
        except UserError as exc:
            raise UserError(f"sweep file {path}: stage 'audit': {exc}") from None


def _pending(status: dict, stages: dict, full_hash: str) -> list[str]:
    """Stages a cell still has to run: not done yet, done with other options, or done
    with another config (then all of them: training resumes, the rest is recomputed)."""
    if status.get("config_hash", full_hash) != full_hash:
        return list(stages)
    done, opts = set(status.get("stages_done", [])), status.get("stage_options", {})
    return [s for s in stages if s not in done or opts.get(s, stages[s]) != stages[s]]


def run_cell(cell: Cell, stages: dict, threads: Optional[int] = None, quiet: bool = True,
             log: Callable[[str], None] = print, secrets=None) -> dict:  # fmt: skip
    """Run (or resume) every stage of one cell; never raises for a failing stage.

    Returns the cell's status record (also in ``<cell>/cell.json``).
    """
    if threads:
        import torch

        torch.set_num_threads(threads)
    run_dir = Path(cell.dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with locked(run_dir):
        return _run_cell(cell, stages, run_dir, quiet, log, secrets)


def _run_cell(cell: Cell, stages: dict, run_dir: Path, quiet: bool, log, secrets) -> dict:
    status = read_cell(run_dir)
    cfg = from_dict(cell.config)
    full = config_hash(cfg, full=True)
    pending = _pending(status, stages, full)
    done = [s for s in status.get("stages_done", []) if s in stages and s not in pending]
    record = {"id": cell.id, "overrides": cell.overrides, "label": cell.label, "config_hash": full,
              "stages_done": done, "stage_options": {s: stages[s] for s in done}, "status": "running",
              "seconds": dict(status.get("seconds", {}))}  # fmt: skip
    for stage, opts in stages.items():
        if stage in done:
            continue
        log(f"[{cell.label}] {stage}")
        t0 = time.perf_counter()
        try:
            extra = {"secrets": None if cfg.secrets.derive_from_seed else secrets} if stage in ("train", "audit") else {}
            STAGES.get(stage)(run_dir, cfg, device=cfg.device, log=lambda m: log(f"[{cell.label}] {m}"), quiet=quiet,
                              **opts, **extra)  # fmt: skip
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001 - a failed cell must not stop the sweep
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            record.update(status="failed", failed_stage=stage, error=f"{type(exc).__name__}: {msg}"[:500])
            atomic_write_text(run_dir / CELL_ERROR, traceback.format_exc())
            atomic_write_json(run_dir / CELL, record)
            log(f"[{cell.label}] FAILED in {stage}: {record['error']}")
            return record
        done.append(stage)
        record["stage_options"][stage] = opts
        record["seconds"][stage] = round(time.perf_counter() - t0, 2)
        record["stages_done"] = done
        atomic_write_json(run_dir / CELL, record)
    record["status"] = "done"
    record.pop("error", None)
    atomic_write_json(run_dir / CELL, record)
    return record


def _die_with_parent() -> None:
    """A worker ends when the sweep process does (Linux: PR_SET_PDEATHSIG), so a killed sweep
    leaves no cell training on in the background (its cells resume on the next run)."""
    import signal
    import sys

    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
        except OSError:  # no libc by that name: the worker then ends with its cell
            pass


def _run_cell_job(args) -> dict:
    cell, stages, threads, secrets = args
    return run_cell(cell, stages, threads=threads, quiet=True, log=lambda m: print(m, flush=True), secrets=secrets)


def _prepare_extractors(cells: list[Cell], opts: dict, log: Callable[[str], None]) -> None:
    """Train (or find shipped or cached) the offline FID classifier once per data set, before
    parallel cells would each train the same one. It depends on the data only, not on a
    cell's split or secrets (eval/features.py)."""
    from .data import load_dataset
    from .eval.features import get_extractor

    seen = set()
    for cell in cells:
        cfg = from_dict(cell.config)
        key = json.dumps(cell.config["data"], sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        try:
            ds = load_dataset(cfg.data)
            _, note = get_extractor(opts.get("extractor", "auto"), dataset=ds)
            log(note)
        except UserError:
            pass  # the cell's own evaluate stage reports it


def sweep_secrets(out: Path, cells: list[Cell]):
    """One set of OS secrets for the cells that use them (``OUT/clients/secrets.json``, kept):
    every setting of the sweep then sees the same split, and cells differ only in what the
    sweep varies (and, per training seed, in the clients' draws). None when no cell needs them."""
    from .client_secrets import Secrets, make_secrets, read_secrets, write_secrets

    if all(c.config["secrets"]["derive_from_seed"] for c in cells):
        return None
    s = read_secrets(out)
    if s is None:
        s = make_secrets(from_dict({**cells[0].config, "secrets": {"derive_from_seed": False}}))
        write_secrets(out, s)
    return s if isinstance(s, Secrets) else None


def record_failure(cell: Cell, error: str) -> None:
    """Mark a cell failed from outside it (its process died): ``cell.json`` keeps its finished stages."""
    run_dir = Path(cell.dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    rec = read_cell(run_dir)
    rec.update(id=cell.id, label=cell.label, overrides=cell.overrides, status="failed", error=error)
    atomic_write_json(run_dir / CELL, rec)


def run_sweep(sweep: Sweep, jobs: int = 1, log: Callable[[str], None] = print, quiet: bool = False,
              executor: str = "local", ray: Optional[dict] = None) -> dict:  # fmt: skip
    """Run every cell (resuming), write ``OUT/sweep.json``; returns it.

    ``executor``: ``"local"`` (``jobs`` processes) or ``"ray"`` (:mod:`.ray_executor`; ``ray`` holds its
    ``address``, ``cpus_per_cell``, ``gpus_per_cell``)."""
    if executor not in ("local", "ray"):
        raise UserError(f"executor must be 'local' or 'ray', got {executor!r}")
    with locked(sweep.out):
        return _run_sweep(sweep, jobs, log, quiet, executor, ray or {})


def _run_sweep(sweep: Sweep, jobs: int, log: Callable[[str], None], quiet: bool, executor: str = "local",
               ray: Optional[dict] = None) -> "SweepIndex":  # fmt: skip
    out = sweep.out
    entries = [IndexCell(id=c.id, dir=os.path.relpath(c.dir, out), overrides=c.overrides, label=c.label,
                         setting=c.setting) for c in sweep.cells]  # fmt: skip
    _write_index(out, SweepIndex(sweep.name, sweep.stages, entries))
    todo = [c for c in sweep.cells
            if _pending(read_cell(Path(c.dir)), sweep.cell_stages(c), config_hash(from_dict(c.config), full=True))]
    log(f"sweep '{sweep.name}': {len(sweep.cells)} cells, {len(sweep.cells) - len(todo)} already done -> {out}")
    # DP-SGD cells cost about twice as much: start them first so they do not finish last alone
    todo.sort(key=lambda c: (not c.config["defense"]["client_dp"]["enabled"] and "audit" not in c.stages))
    secrets = sweep_secrets(out, sweep.cells)
    if executor == "ray":
        from .ray_executor import run_cells

        if "evaluate" in sweep.stages:
            _prepare_extractors(todo, sweep.stages["evaluate"], log)
        if todo:
            run_cells(todo, sweep.cell_stages, secrets, log=log, **(ray or {}))
    elif jobs <= 1 or len(todo) <= 1:
        for i, cell in enumerate(todo):
            log(f"cell {i + 1}/{len(todo)}: {cell.label}")
            run_cell(cell, sweep.cell_stages(cell), quiet=quiet, log=log, secrets=secrets)
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        if "evaluate" in sweep.stages:
            _prepare_extractors(todo, sweep.stages["evaluate"], log)

        import torch

        threads = max(1, torch.get_num_threads() // jobs)  # the command's threads (--threads), divided
        with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn"), initializer=_die_with_parent) as pool:
            list(pool.map(_run_cell_job, [(c, sweep.cell_stages(c), threads, secrets) for c in todo]))
    import dataclasses

    for i, c in enumerate(sweep.cells):
        rec = read_cell(Path(c.dir))
        entries[i] = dataclasses.replace(entries[i], status=rec.get("status", "pending"), error=rec.get("error"),
                                         seconds=rec.get("seconds", {}))  # fmt: skip
    index = SweepIndex(sweep.name, sweep.stages, entries)
    _write_index(out, index)
    failed = [e for e in entries if e.status != "done"]
    log(f"sweep '{sweep.name}': {len(entries) - len(failed)} cells done, {len(failed)} failed"
        + "".join(f"\n  failed: {e.label}: {e.error}" for e in failed))  # fmt: skip
    return index
