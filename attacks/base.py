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
from collafuse_privacy.options import Opt, check_value, parse_assignment
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


def option_specs(cls) -> dict[str, Opt]:
    """``{option: Opt}`` a method declares (class attribute ``OPTIONS``, merged along the same
    classes as :func:`method_options`): the type and range of every option, checked when parsed."""
    out: dict[str, Opt] = {}
    for klass in cls.__mro__:
        out = {**klass.__dict__.get("OPTIONS", {}), **out}
        init = klass.__dict__.get("__init__")
        if init is not None and not any(p.kind == p.VAR_KEYWORD for p in inspect.signature(init).parameters.values()):
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

    def check_options(self, name: str, options: dict) -> dict:
        """``options`` of method ``name`` checked (names, types, ranges, and what the constructor
        refuses, such as secmi's ``k < t_sec``) and coerced; a UserError names the option."""
        known, specs = self.options(name), option_specs(self.get(name))
        out = {}
        for key, value in options.items():
            if key not in known:
                raise UserError(f"{self.kind} {name!r} has no option {key!r} (its options: "
                                f"{', '.join(sorted(known)) or 'none'})")  # fmt: skip
            if key not in specs:  # a method must declare every option it takes (tests/test_reliability_view.py)
                raise UserError(f"{self.kind} {name!r}: option {key!r} has no declared type")
            out[key] = check_value(specs[key], value, f"option {name}.{key}")
        try:
            self.get(name)(**out)  # cheap: constructors only store their options
        except (TypeError, ValueError) as exc:
            raise UserError(f"{self.kind} {name!r}: bad options {sorted(out)} ({exc})") from None
        return out

    def make(self, name: str, **kwargs):
        """An instance of ``name``; ``kwargs`` are runtime arguments and the method's options."""
        cls = self.get(name)
        kwargs = {**kwargs, **self.check_options(name, {k: v for k, v in kwargs.items() if k not in RUNTIME_ARGS})}
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


def parse_options(items: Iterable[str], family: Optional[Family] = None) -> dict[str, dict[str, Any]]:
    """``["loss.n_noise=4", "learned.steps=60"]`` -> ``{"loss": {"n_noise": 4}, "learned": {"steps": 60}}``;
    with ``family``, every method and option is checked (type and range) here, before any work."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        usage = f"--option expects METHOD.KEY=VALUE, got {item!r}"
        key, value = parse_assignment(item, usage, "--option")
        method, dot, opt = key.partition(".")
        if not dot or not method or not opt:
            raise UserError(usage)
        out.setdefault(method, {})[opt] = value
    if family is not None:
        for name, opts in out.items():
            family.get(name)
            out[name] = family.check_options(name, opts)
    return out


def check_family_options(family: Family, options: dict[str, dict], methods: list[str]) -> dict[str, dict]:
    """Every method named in ``options`` exists and accepts the options given, typed and in range
    (options of methods that do not run are checked too, and then unused); returns them coerced."""
    if not isinstance(options, dict):
        raise UserError(f"options of {family.kind}s must map method names to option mappings, got {options!r}")
    out = {}
    for name, opts in options.items():
        family.get(name)
        if not isinstance(opts, dict):
            raise UserError(f"options of {family.kind} {name!r} must be a mapping, got {opts!r}")
        out[name] = family.check_options(name, opts)
    return out
