"""The sweep file: a grid of ordinary runs (``collafuse-privacy sweep``), parsed and checked before anything runs.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..attacks.base import check_family_options
from ..attacks.membership import FAMILY as MEMBERSHIP
from ..attacks.reconstruction import FAMILY as RECONSTRUCTION
from ..config import apply_overrides, config_hash, from_dict, read_yaml
from ..errors import UserError
from ..options import check_value
from ..run.layout import CELLS
from ..targets import parse_target
from .stages import STAGES
from ..eval.audit import check_audit_methods, parse_audit_target

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
    base = _base_config(raw, path, device)
    combos, own = _combos(raw, path)
    combos, own = _with_seeds(raw, path, base, combos, own, seeds)
    cells = _cells(base, combos, own, path, Path(out))
    stages = _sweep_stages(raw.get("stages"), path)
    sweep = Sweep(str(raw.get("name") or path.stem), Path(out), cells, stages)
    for cell in cells:  # what depends on a cell's config, for every cell, before anything runs
        _check_cell_stages(cell, sweep.cell_stages(cell), path)
    return sweep


def _base_config(raw: dict, path: Path, device: Optional[str]) -> dict:
    """The sweep's base config: its ``config`` file refined by its ``base`` mapping (and ``device``)."""
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
    return base


def _combos(raw: dict, path: Path) -> tuple[list[dict], list[dict]]:
    """The overrides of every cell (the grid's product, then the include entries) and each cell's own stages."""
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
    return combos, own


def _with_seeds(raw: dict, path: Path, base: dict, combos: list, own: list, seeds: Optional[int]) -> tuple[list, list]:
    """Every combination replicated over ``seeds`` training seeds (``--seeds`` or the file's ``seeds:``)."""
    n_seeds = raw.get("seeds", 1) if seeds is None else seeds
    if isinstance(n_seeds, bool) or not isinstance(n_seeds, int) or n_seeds < 1:
        raise UserError(f"sweep file {path}: 'seeds' must be a whole number >= 1, got {n_seeds!r}")
    if n_seeds > 1:
        if any("seed" in c for c in combos):
            raise UserError(f"sweep file {path}: 'seeds' replicates every cell over seeds; do not also vary 'seed'")
        seed0 = int(base.get("seed", 0))
        own = [o for o in own for _ in range(n_seeds)]
        combos = [{**c, "seed": seed0 + i} for c in combos for i in range(n_seeds)]
    return combos, own


def _cells(base: dict, combos: list[dict], own: list[dict], path: Path, out: Path) -> list[Cell]:
    """One cell per distinct run (config identity hash), each config validated."""
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
    return cells


def _sweep_stages(stages_raw, path: Path) -> dict:
    """The sweep's ``stages`` (default: every stage but those run on request), in the registry's order."""
    order = STAGES.names()
    if stages_raw is None:
        stages = {s: {} for s in order if not getattr(STAGES.get(s), "on_request", False)}
    else:
        stages = _parse_stages(stages_raw, path, "'stages'")
        if "train" not in stages and not all(getattr(STAGES.get(s), "on_request", False) for s in stages):
            stages = {"train": {}, **stages}  # every stage but the audit (which trains its own twin) needs it
        stages = {s: stages[s] for s in order if s in stages}  # fixed order
    _check_stage_options(stages, path)
    return stages


def _check_cell_stages(cell: Cell, stages: dict, path) -> None:
    """A cell runs at least one stage, and its attack targets name clients it has."""
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
        try:
            stages[s] = {k: check_value(specs[k], v, f"stage '{s}' option '{k}'") for k, v in opts.items()}
        except UserError as exc:
            raise UserError(f"sweep file {path}: {exc}") from None
    _check_stage_options(stages, path)
    return stages


def _check_stage_options(stages: dict, path) -> None:
    """Attack methods and their options named in a sweep file exist (before anything runs)."""
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
