"""The contract both attack families share (DESIGN.md §3, STYLE.md "What we take" 1-2).

* :class:`NotApplicable`: the attack cannot run on this view; its ``reason`` is recorded
  instead of a number (``eval/``).
* :class:`Family`: a registry of one family (reconstruction, membership) with one factory,
  ``family.make(name, **options)``: an unknown name lists the known ones, an unknown or bad
  option names the method's options; both are one-line :class:`UserError`s (exit code 2).
* Options reach a method from the CLI (``--option METHOD.KEY=VALUE``, YAML-typed) and from
  sweep stages (``options: {METHOD: {KEY: VALUE}}``); :func:`parse_options` reads the former.
"""

from __future__ import annotations

import inspect
from typing import Any, Iterable, Optional

from collafuse_privacy.errors import UserError
from collafuse_privacy.registry import Registry

# Passed by the runner, not by the user.
RUNTIME_ARGS = ("target", "device")


class NotApplicable(Exception):
    """The attack does not apply to this view; ``reason`` says why (one line)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def method_options(cls) -> dict[str, Any]:
    """``{option: default}`` a method's constructor accepts (through ``**kw`` to its bases)."""
    out: dict[str, Any] = {}
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters
        for name, p in params.items():
            if name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or name in RUNTIME_ARGS:
                continue
            out.setdefault(name, None if p.default is p.empty else p.default)
        if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
            break
    return out


class Family:
    """The registry and factory of one attack family."""

    def __init__(self, kind: str, base: type):
        self.kind = kind
        self.registry: Registry = Registry(kind, base)
        self.register = self.registry.register
        self.classes = self.registry.classes  # name -> class, in registration order

    def names(self) -> list[str]:
        return self.registry.names()

    def get(self, name: str) -> type:
        """The class registered as ``name``; UserError listing the known names otherwise."""
        return self.registry.get(name)

    def options(self, name: str) -> dict[str, Any]:
        return method_options(self.get(name))

    def check_options(self, name: str, options: dict) -> None:
        known = self.options(name)
        for key in options:
            if key not in known:
                raise UserError(f"{self.kind} {name!r} has no option {key!r} (its options: "
                                f"{', '.join(sorted(known)) or 'none'})")  # fmt: skip

    def make(self, name: str, **kwargs):
        """An instance of ``name``; ``kwargs`` are runtime arguments and the method's options."""
        cls = self.get(name)
        self.check_options(name, {k: v for k, v in kwargs.items() if k not in RUNTIME_ARGS})
        try:
            return cls(**kwargs)
        except (TypeError, ValueError) as exc:
            raise UserError(f"{self.kind} {name!r}: bad options {sorted(k for k in kwargs if k not in RUNTIME_ARGS)} "
                            f"({exc})") from None  # fmt: skip

    def defaults(self) -> list[str]:
        """The methods run when none are named: all registered but those marked ``default = False``
        (costly ones, such as attacks that train reference models)."""
        return [n for n in self.names() if getattr(self.get(n), "default", True)]

    def resolve(self, methods: Optional[Iterable[str]]) -> list[str]:
        """Requested method names, checked and de-duplicated (:meth:`defaults` when none)."""
        if not methods:
            return self.defaults()
        out = []
        for m in methods:
            self.get(m)
            if m not in out:
                out.append(m)
        return out


def parse_options(items: Iterable[str]) -> dict[str, dict[str, Any]]:
    """``["loss.n_noise=4", "learned.steps=60"]`` -> ``{"loss": {"n_noise": 4}, "learned": {"steps": 60}}``."""
    import yaml

    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, text = item.partition("=")
        method, dot, opt = key.strip().partition(".")
        if not sep or not dot or not method or not opt:
            raise UserError(f"--option expects METHOD.KEY=VALUE, got {item!r}")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            value = text
        out.setdefault(method, {})[opt] = value
    return out


def check_family_options(family: Family, options: dict[str, dict], methods: list[str]) -> None:
    """Every method named in ``options`` exists and accepts the options given (options of
    methods that do not run are checked too, and then unused)."""
    for name, opts in options.items():
        family.get(name)
        if not isinstance(opts, dict):
            raise UserError(f"options of {family.kind} {name!r} must be a mapping, got {opts!r}")
        family.check_options(name, opts)
