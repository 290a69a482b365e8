"""Loading a config: a YAML file (or the embedded default), ``--set KEY=VALUE`` overrides, validation."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any, Optional

import yaml

from ..errors import UserError
from ..options import parse_assignment, strict_yaml, yaml_problem
from ..typed import from_data
from .schema import Config
from .validate import validate


def parse_override(item: str) -> tuple[str, Any]:
    """``"a.b=VALUE"`` -> ``("a.b", VALUE as YAML)``."""
    return parse_assignment(item, f"--set expects key=value, got '{item[:200]}'", "--set")


def _merge_into(node: dict, key: str, value: Any) -> None:
    """``node[key] = value``, except that a mapping is merged key by key into the mapping there:
    ``--set 'data={name: digits}'`` changes ``data.name`` and keeps the other ``data`` keys."""
    if isinstance(value, dict) and isinstance(node.get(key), dict):
        for k, v in value.items():
            _merge_into(node[key], k, v)
    else:
        node[key] = value


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    raw = json.loads(json.dumps(raw))  # deep copy of plain data
    for item in overrides:
        key, value = parse_override(item)
        parts = key.split(".")
        node = raw
        for part in parts[:-1]:
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise UserError(f"--set {key}: '{part}' is not a section")
            node = nxt
        _merge_into(node, parts[-1], value)
    return raw


MAX_CONFIG_BYTES = 16 * 2**20


def default_config_text() -> str:
    return resources.files("collafuse_privacy.configs").joinpath("default.yaml").read_text()


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if path.is_dir():
        raise UserError(f"config file {path} is a folder; give a YAML file")
    if path.exists() and not path.is_file():
        raise UserError(f"config file {path} is not a regular file (a device or a pipe?); give a YAML file")
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise UserError(f"config file {path} is larger than {MAX_CONFIG_BYTES // 2**20} MiB: not a config")
    try:
        raw = strict_yaml(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        dup = f": {yaml_problem(exc)}" if "duplicate key" in str(exc) or "expands to" in str(exc) else ""
        raise UserError(f"config file {path} is not valid YAML{where}{dup}") from None
    except UnicodeDecodeError:
        raise UserError(f"config file {path} is not a text file") from None
    return {} if raw is None else raw


def from_dict(raw: Any) -> Config:
    """A validated :class:`Config` from plain data (unknown keys, wrong types and ranges are UserErrors)."""
    return validate(from_data(Config, raw))


def load_config(path: Optional[str | Path] = None, overrides: Optional[list[str]] = None) -> Config:
    """Load ``path`` (default: the embedded ``configs/default.yaml``), apply
    ``--set`` overrides and validate. Raises :class:`UserError` naming the key."""
    if path is None:
        raw = yaml.safe_load(default_config_text()) or {}
    else:
        raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise UserError(f"config file {path} must hold a mapping of keys")
    return from_dict(apply_overrides(raw, list(overrides or [])))


def with_overrides(cfg: Config, overrides: list[str]) -> Config:
    """``cfg`` with dotted ``key=value`` overrides applied (validated)."""
    return from_dict(apply_overrides(cfg.to_dict(), overrides))


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
