"""Typed, validated dataclasses from plain data (YAML / JSON) and back.

One implementation for the config (``config.yaml``) and every file of a run directory
(:mod:`collafuse_privacy.run`): :func:`from_data` checks a mapping against a
dataclass's annotations (nested dataclasses, ``Optional``, ``list[T]``, ``dict[str, T]``,
``float``/``int``/``bool``/``str``, ``Any``) and raises :class:`UserError` naming the key;
:func:`to_data` turns a dataclass back into plain data. A field's name in the file may
differ from its Python name: ``field(metadata={"key": "tpr_at_0.1pct_fpr"})``.

``json_numbers=True`` (run files): floats may be stored as ``"inf"`` / ``"-inf"`` / ``null``
(NaN), see :mod:`collafuse_privacy.numbers`.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from typing import Any

from .errors import UserError
from .numbers import num, to_json


_EXP = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


class Schema:
    """How to phrase errors: ``noun`` names a key ("config key", "key"), ``where`` the file."""

    def __init__(self, noun: str = "config key", where: str = "", json_numbers: bool = False):
        self.noun, self.where, self.json_numbers = noun, where, json_numbers

    def error(self, msg: str) -> UserError:
        return UserError(f"{self.where}: {msg}" if self.where else msg)


def file_key(f: dataclasses.Field) -> str:
    return f.metadata.get("key", f.name)


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp, key: str, s: Schema) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted for floats."""
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], key, s)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key + ".", s)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise s.error(f"{s.noun} '{key}' must be a list, got {type(value).__name__}")
        (item,) = typing.get_args(tp)[:1] or (Any,)
        out = [_coerce(v, item, f"{key}[{i}]", s) for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise s.error(f"{s.noun} '{key}' must be a mapping, got {type(value).__name__}")
        args = typing.get_args(tp)
        vt = args[1] if len(args) == 2 else Any
        return {str(k): _coerce(v, vt, f"{key}.{k}", s) for k, v in value.items()}
    if tp is float:
        if s.json_numbers and (value is None or value in ("inf", "-inf")):
            return num(value)
        if isinstance(value, str) and _EXP.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads 1e-4 (no dot) as a string
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise s.error(f"{s.noun} '{key}' must be a number, got {value!r}")
        if not s.json_numbers and not math.isfinite(value):
            raise s.error(f"{s.noun} '{key}' must be a finite number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise s.error(f"{s.noun} '{key}' must be an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise s.error(f"{s.noun} '{key}' must be true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise s.error(f"{s.noun} '{key}' must be a string, got {value!r}")
        return value
    raise s.error(f"{s.noun} '{key}' has an unsupported type {_type_name(tp)}")


def _build(cls, raw: Any, prefix: str, s: Schema):
    if raw is None and s.noun == "config key":
        raw = {}  # an empty YAML section
    if not isinstance(raw, dict):
        where = f"section '{prefix.rstrip('.')}'" if prefix else ("the config file" if s.noun == "config key"
                                                                  else "the file")  # fmt: skip
        raise s.error(f"{where} must be a mapping of keys, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)
    names = {file_key(f) for f in fields}
    unknown = sorted(set(raw) - names)
    if unknown:
        key = prefix + str(unknown[0])
        raise s.error(f"unknown {s.noun} '{key}' (known in this section: {', '.join(sorted(names))})")
    kwargs = {}
    for f in fields:
        k = file_key(f)
        if k not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise s.error(f"missing {s.noun} '{prefix + k}'")
            continue
        kwargs[f.name] = _coerce(raw[k], hints[f.name], prefix + k, s)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise s.error(f"{prefix.rstrip('.') or 'the file'}: {exc}") from None


def from_data(cls, raw: Any, schema: Schema | None = None, prefix: str = ""):
    """``cls(**raw)`` with every key and value checked against ``cls``'s annotations."""
    return _build(cls, raw, prefix, schema or Schema())


def to_data(obj: Any, json_numbers: bool = False) -> Any:
    """A dataclass (or containers of them) as plain data, keys as in the file."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out = {file_key(f): to_data(getattr(obj, f.name), json_numbers) for f in dataclasses.fields(obj)}
    elif isinstance(obj, dict):
        out = {k: to_data(v, json_numbers) for k, v in obj.items()}
    elif isinstance(obj, (list, tuple)):
        out = [to_data(v, json_numbers) for v in obj]
    else:
        out = obj
    return to_json(out) if json_numbers else out


def is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and not math.isnan(float(x))
