"""The JSON codec of a run's files and the registry of their artefact types.

Every JSON file of a run is a frozen dataclass (its schema) written through :func:`write_json` and
read back through :func:`read_json`: plain data checked key by key against the dataclass
(:mod:`collafuse_privacy.typed`), numbers that are infinite or could not be computed stored as
``"inf"`` / ``null`` (:mod:`collafuse_privacy.numbers`), files written as ``json.dumps(indent=1)``
atomically (:mod:`collafuse_privacy.io`).

Every file carries ``"schema"``, the version of its dataclass (the default of its ``schema``
field). A file without one, or written by a newer version of this tool, or of the wrong shape, is
refused with one :class:`UserError` naming the file and the key.

:data:`ARTEFACTS` is the registry: ``name -> Artefact(name, cls, schema)``, filled by the
:func:`artefact` decorator on each schema (:mod:`collafuse_privacy.run.schemas`);
:func:`read_artefact` reads a file as the type registered under a name.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from ..errors import UserError
from ..io import atomic_write_json
from ..typed import Schema, from_data, to_data

SCHEMA = 1  # version of every JSON file of a run; a schema bumps its own on an incompatible change


@dataclass(frozen=True)
class Artefact:
    """One registered type: ``name`` (how callers ask for it), its dataclass and the version its
    files carry (None for rows of a ``.jsonl`` log, which carry none)."""

    name: str
    cls: type
    schema: Optional[int]


ARTEFACTS: dict[str, Artefact] = {}


def schema_version(cls: type) -> Optional[int]:
    """The version ``cls``'s files carry: the default of its ``schema`` field (None without one)."""
    for f in dataclasses.fields(cls):
        if f.name == "schema":
            return f.default if isinstance(f.default, int) else None
    return None


def artefact(name: str) -> Callable[[type], type]:
    """Register a schema dataclass under ``name`` (a duplicate name or class is a bug: ValueError)."""

    def deco(cls: type) -> type:
        if not dataclasses.is_dataclass(cls):
            raise TypeError(f"{cls!r} is not a dataclass")
        if name in ARTEFACTS:
            raise ValueError(f"artefact {name!r} is already registered ({ARTEFACTS[name].cls.__qualname__})")
        if artefact_of(cls) is not None:
            raise ValueError(f"{cls.__qualname__} is already registered as {artefact_of(cls).name!r}")
        ARTEFACTS[name] = Artefact(name, cls, schema_version(cls))
        return cls

    return deco


def artefact_named(name: str) -> Artefact:
    """The artefact registered as ``name``; :class:`UserError` listing the known names otherwise."""
    if name not in ARTEFACTS:
        raise UserError(f"unknown run artefact {name!r} (known: {', '.join(ARTEFACTS)})")
    return ARTEFACTS[name]


def artefact_of(cls: type) -> Optional[Artefact]:
    """The registered artefact whose dataclass is ``cls``, or None."""
    return next((a for a in ARTEFACTS.values() if a.cls is cls), None)


# ---------------------------------------------------------------------------
# Reading and writing
# ---------------------------------------------------------------------------


def read_json(path: Path, cls):
    """Parse ``path`` as ``cls`` (UserError naming the file for bad JSON, a newer schema or a wrong shape)."""
    try:
        raw = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"file not found: {path}") from None
    except (ValueError, UnicodeDecodeError):
        raise UserError(f"{path} is not valid JSON") from None
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
    return parse(raw, cls, path)


def read_artefact(path: Path, name: str):
    """Parse ``path`` as the type registered under ``name`` (:func:`read_json`)."""
    return read_json(path, artefact_named(name).cls)


def parse(raw: Any, cls, where) -> Any:
    """``raw`` (plain data of a file) as ``cls``, checking its schema version."""
    if not isinstance(raw, dict):
        raise UserError(f"{where}: expected a JSON object, got {type(raw).__name__}")
    version = raw.get("schema")
    if not isinstance(version, int) or isinstance(version, bool):
        raise UserError(f"{where} has no schema version: it was written by an older collafuse-privacy "
                        "(rerun the step that writes it)")  # fmt: skip
    newest = schema_version(cls) or SCHEMA
    if version > newest:
        raise UserError(f"{where} was written by a newer collafuse-privacy (schema {version}; this version reads "
                        f"up to {newest}): upgrade collafuse-privacy")  # fmt: skip
    return from_data(cls, raw, Schema(noun="key", where=str(where), json_numbers=True))


def parse_plain(obj: Any, cls, where):
    """``obj`` as ``cls``: itself when it is one, else plain data in ``cls``'s schema (its version added)."""
    if isinstance(obj, cls):
        return obj
    return parse({"schema": schema_version(cls) or SCHEMA, **to_data(obj, json_numbers=True)}, cls, where)


def write_json(path: Path, obj) -> None:
    """Write a dataclass (validated by a round trip through its own schema) atomically."""
    data = to_data(obj, json_numbers=True)
    parse(data, type(obj), path)  # a writer bug must not leave a file its readers refuse
    atomic_write_json(path, data)


def parse_row(raw: Any, cls, where):
    """One row of a ``.jsonl`` log (no schema version) as ``cls``."""
    return from_data(cls, raw, Schema(noun="key", where=str(where), json_numbers=True))
