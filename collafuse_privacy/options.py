"""Typed, ranged options: declared once per attack method and per stage, checked when parsed.

An option's value comes from YAML (``--option METHOD.KEY=VALUE`` on the command line, or a
sweep file's ``stages:``), so it can be anything YAML can spell: ``.inf``, ``.nan``, a string
where a list belongs. :class:`Opt` says what an option takes and :func:`check_value` turns a
bad value into one :class:`UserError` naming the option, before any work starts (STYLE.md 3, 13).

Also the one parser of ``KEY=VALUE`` items (``--set``, ``--option``): :func:`parse_assignment`, whose
value is read as strict YAML (:func:`strict_yaml`: no duplicate keys, no alias bombs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import yaml

from .errors import UserError

SEED_MAX = 2**63 - 1  # the largest seed torch and numpy both take


@dataclass(frozen=True)
class Opt:
    """One option: ``kind`` int | float | bool | str | list | mapping | any; ``item`` the kind of a
    list's items; ``lo``/``hi`` an inclusive range (``lo_open``: exclusive low end), of the value or
    of every item; ``choices`` the allowed strings; ``nullable``: None allowed (the default applies)."""

    kind: type | str
    lo: Optional[float] = None
    hi: Optional[float] = None
    lo_open: bool = False
    choices: Optional[tuple] = None
    item: Optional[type] = None
    nullable: bool = False
    help: str = ""

    def describe(self) -> str:
        what = {int: "a whole number", float: "a finite number", bool: "true or false", str: "a string",
                list: "a non-empty list", "mapping": "a mapping", "any": "a value"}.get(self.kind, str(self.kind))
        if self.kind is list and self.item is not None:
            what += " of " + {int: "whole numbers", float: "finite numbers", str: "strings"}[self.item]
        if self.choices:
            what = "one of " + ", ".join(str(c) for c in self.choices)
        if self.lo is not None or self.hi is not None:
            lo = "(-inf" if self.lo is None else ("(" if self.lo_open else "[") + f"{self.lo:g}"
            hi = "inf)" if self.hi is None else f"{self.hi:g}]"
            what += f" in {lo}, {hi}"
        return what + (" (or null)" if self.nullable else "")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _scalar(value: Any, kind, opt: Opt, where: str) -> Any:
    bad = UserError(f"{where} must be {opt.describe()}, got {_short(value)}")
    if kind is int:
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
    elif kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise bad
        value = float(value)
    elif kind is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    elif kind is str:
        if not isinstance(value, str) or (opt.choices and value not in opt.choices):
            raise bad
        return value
    if kind in (int, float):
        if opt.lo is not None and (value <= opt.lo if opt.lo_open else value < opt.lo):
            raise bad
        if opt.hi is not None and value > opt.hi:
            raise bad
    return value


def check_value(opt: Opt, value: Any, where: str) -> Any:
    """``value`` checked against ``opt`` (ints are accepted for floats); UserError naming ``where``."""
    if value is None:
        if opt.nullable:
            return None
        raise UserError(f"{where} must be {opt.describe()}, got null")
    if opt.kind == "any":
        return value
    if opt.kind == "mapping":
        if not isinstance(value, dict):
            raise UserError(f"{where} must be a mapping, got {_short(value)}")
        return value
    if opt.kind is list:
        if not isinstance(value, (list, tuple)) or not value:
            raise UserError(f"{where} must be {opt.describe()}, got {_short(value)}")
        return [_scalar(v, opt.item, opt, where) for v in value] if opt.item is not None else list(value)
    return _scalar(value, opt.kind, opt, where)


SEED = Opt(int, 0, SEED_MAX, help="seed of the method's own randomness")
BATCH = Opt(int, 1, 1_000_000)
PRESET = Opt(str, choices=("micro", "tiny", "small", "base"))


# ---- KEY=VALUE items, values as strict YAML ----------------------------------------------
class StrictLoader(yaml.SafeLoader):
    """``yaml.safe_load`` that refuses a mapping with a key twice (YAML would keep the last one,
    silently) and an alias-expanded document of more than :data:`MAX_NODES` nodes (an alias bomb)."""

    MAX_NODES = 1_000_000

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                dup = key in seen
            except TypeError:  # an unhashable key: SafeLoader reports it
                break
            if dup:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {str(key)[:60]!r} (line {key_node.start_mark.line + 1})",
                    key_node.start_mark)  # fmt: skip
            seen.add(key)
        return super().construct_mapping(node, deep=deep)

    def compose_document(self):
        node = super().compose_document()
        count, stack = 0, [node]
        while stack:  # nodes as the tree expands them: an alias counts every time it is used
            n = stack.pop()
            count += 1
            if count > self.MAX_NODES:
                raise yaml.YAMLError(f"the document expands to more than {self.MAX_NODES} values (aliases)")
            if isinstance(n, yaml.MappingNode):
                stack += [x for kv in n.value for x in kv]
            elif isinstance(n, yaml.SequenceNode):
                stack += list(n.value)
        return node


def strict_yaml(text: str) -> Any:
    """YAML text as plain data (safe types only; duplicate keys and alias bombs refused, yaml.YAMLError)."""
    return yaml.load(text, Loader=StrictLoader)  # noqa: S506 - a SafeLoader subclass


def yaml_problem(exc: yaml.YAMLError) -> str:
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return str(problem)[:120]


def parse_assignment(item: str, usage: str, where: str = "--set") -> tuple[str, Any]:
    """``"KEY=VALUE"`` -> ``(KEY stripped, VALUE read as YAML)``; an empty VALUE is None and text YAML cannot
    read stays text. UserError ``usage`` without ``=``; a duplicate key or an alias bomb in VALUE is a
    UserError naming ``where`` and the key."""
    key, sep, text = item.partition("=")
    if not sep:
        raise UserError(usage)
    key = key.strip()
    try:
        value = strict_yaml(text) if text.strip() else None
    except yaml.YAMLError as exc:
        if "duplicate key" in str(exc) or "expands to" in str(exc):
            raise UserError(f"{where} {key}: {yaml_problem(exc)}") from None
        value = text
    return key, value
