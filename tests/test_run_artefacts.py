"""collafuse_privacy.run: the layout's names, the codec's registry (every artefact dataclass registered,
each round-trips byte for byte) and its one-line errors. No training: fast."""

from __future__ import annotations

import dataclasses
import importlib
import json
import pkgutil
import re
import typing
from pathlib import Path
from typing import Any

import pytest

import collafuse_privacy
import collafuse_privacy.run.schemas as schemas
from collafuse_privacy.errors import UserError
from collafuse_privacy.numbers import Interval
from collafuse_privacy.run import layout
from collafuse_privacy.run.codec import (ARTEFACTS, SCHEMA, artefact, artefact_named, artefact_of, parse_row,
                                         read_artefact, read_json, write_json)
from collafuse_privacy.run.directory import METRICS, RunDir
from collafuse_privacy.run.schemas import AUDIT_FORMAT, QUALITY_FORMAT, AuditReport, LatestCheckpoint, QualityReport
from collafuse_privacy.typed import to_data

SCHEMA_MODULES = [importlib.import_module(f"{schemas.__name__}.{m.name}") for m in pkgutil.iter_modules(schemas.__path__)]


def _defined_dataclasses() -> list[type]:
    return [obj for mod in SCHEMA_MODULES for obj in vars(mod).values()
            if isinstance(obj, type) and dataclasses.is_dataclass(obj) and obj.__module__ == mod.__name__]


def _nested(cls, seen: set) -> None:
    """Every dataclass reachable from ``cls``'s annotations (``Optional``, ``list``, ``dict``)."""
    if cls in seen:
        return
    seen.add(cls)
    for tp in typing.get_type_hints(cls).values():
        stack = [tp]
        while stack:
            t = stack.pop()
            if dataclasses.is_dataclass(t):
                _nested(t, seen)
            stack.extend(typing.get_args(t))


# ---- the registry --------------------------------------------------------------------------------


def test_registry_covers_every_artefact_dataclass():
    defined = _defined_dataclasses()
    files = [c for c in defined if "schema" in {f.name for f in dataclasses.fields(c)}]
    assert files and all(artefact_of(c) is not None for c in files), [c.__name__ for c in files if artefact_of(c) is None]
    reachable: set = set()
    for a in ARTEFACTS.values():
        _nested(a.cls, reachable)
    orphans = [c.__name__ for c in defined if c not in reachable]
    assert not orphans, f"schema dataclasses that no registered artefact holds: {orphans}"
    for a in ARTEFACTS.values():
        assert a.cls.__module__.startswith(schemas.__name__ + ".")
        default = {f.name: f.default for f in dataclasses.fields(a.cls)}.get("schema")
        assert a.schema == (default if isinstance(default, int) else None)
    assert set(schemas.__all__) >= {c.__name__ for c in defined}


def test_registry_rejects_duplicates_and_unknown_names():
    with pytest.raises(ValueError, match="already registered"):
        artefact("privacy")(dataclasses.make_dataclass("X", [("schema", int, dataclasses.field(default=1))]))
    with pytest.raises(ValueError, match="already registered"):
        artefact("another-name")(LatestCheckpoint)
    with pytest.raises(UserError, match=r"unknown run artefact 'nosuch' \(known: .*latest-checkpoint"):
        artefact_named("nosuch")


def test_metrics_names_and_files_unchanged():
    assert {n: f for n, (f, _) in METRICS.items()} == {
        "privacy": "privacy.json", "quality": "quality.json", "burden": "burden.json",
        "membership": "membership.json", "reconstruction": "reconstruction.json", "audit": "audit.json"}
    assert all(METRICS[n][1] is artefact_named(n).cls for n in METRICS)


# ---- every artefact round-trips ---------------------------------------------------------------------

_FORMATS = {QualityReport: QUALITY_FORMAT, AuditReport: AUDIT_FORMAT}


def _value(tp, depth: int = 0) -> Any:
    """A value of the annotation ``tp`` exercising every field (floats exact in JSON, one infinite)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union:
        return _value(next(a for a in args if a is not type(None)), depth)
    if dataclasses.is_dataclass(tp):
        return _instance(tp, depth + 1)
    if origin in (list, tuple):
        return [_value(args[0] if args else str, depth)]
    if origin is dict or tp is dict:
        return {"k": _value(args[1], depth) if len(args) == 2 else {"a": 1}}
    return {float: 0.25, int: 3, bool: True, str: "s", Any: "any"}[tp]


def _instance(cls, depth: int = 0):
    hints = typing.get_type_hints(cls)
    kwargs = {f.name: _value(hints[f.name], depth) for f in dataclasses.fields(cls) if f.name not in ("schema",)}
    if cls in _FORMATS:
        kwargs["format"] = _FORMATS[cls]
    if cls is Interval:
        kwargs["hi"] = float("inf")
    return cls(**kwargs)


@pytest.mark.parametrize("name", sorted(ARTEFACTS))
def test_each_artefact_round_trips(name, tmp_path):
    a = ARTEFACTS[name]
    obj = _instance(a.cls)
    path = tmp_path / f"{name}.json"
    if a.schema is None:  # a row of a .jsonl log
        raw = json.loads(json.dumps(to_data(obj, json_numbers=True)))
        assert parse_row(raw, a.cls, path) == obj
        return
    write_json(path, obj)
    text = path.read_text()
    assert json.loads(text)["schema"] == a.schema
    assert read_json(path, a.cls) == obj
    assert read_artefact(path, name) == obj
    write_json(path, read_artefact(path, name))
    assert path.read_text() == text


def test_file_format_is_byte_identical(tmp_path):
    """indent=1, keys in field order, schema last, a newline at the end (as every run written before)."""
    write_json(tmp_path / "latest.json", LatestCheckpoint(dir="step-00000004", step=4))
    assert (tmp_path / "latest.json").read_text() == '{\n "dir": "step-00000004",\n "step": 4,\n "schema": 1\n}\n'


@pytest.mark.parametrize("content, message", [
    ("[]", "expected a JSON object, got list"),
    ('{"dir": "d", "step": 1}', "has no schema version: it was written by an older collafuse-privacy"),
    ('{"dir": "d", "step": 1, "schema": 7}', f"written by a newer collafuse-privacy (schema 7; this version reads up to {SCHEMA})"),
    ('{"dir": "d", "step": "x", "schema": 1}', "key 'step' must be an integer"),
    ('{"dir": "d", "step": 1, "extra": 0, "schema": 1}', "unknown key 'extra'"),
    ("{", "is not valid JSON"),
])  # fmt: skip
def test_one_clear_error_naming_the_file(tmp_path, content, message):
    path = tmp_path / "latest.json"
    path.write_text(content)
    with pytest.raises(UserError) as e:
        read_artefact(path, "latest-checkpoint")
    assert message in str(e.value) and str(path) in str(e.value) and "\n" not in str(e.value)


def test_run_dir_reads_and_writes_metrics_from_plain_data(tmp_path):
    rd = RunDir(tmp_path)
    assert rd.metrics("burden") is None
    obj = _instance(artefact_named("burden").cls)
    path = rd.write_metrics("burden", to_data(obj))
    assert path == tmp_path / "metrics" / "burden.json" and rd.metrics("burden") == obj


# ---- the layout ----------------------------------------------------------------------------------------


def test_layout_names_are_the_files_runs_always_had(tmp_path):
    assert layout.party_file(0) == "client-0.safetensors" and layout.party_file(2, ema=True) == "client-2_ema.safetensors"
    assert layout.party_file(layout.SERVER, ema=True) == "server_ema.safetensors"
    assert layout.party_names(2) == ["server", "client-0", "client-1"]
    assert [layout.client_index(n) for n in layout.party_names(2)] == [None, 0, 1]
    assert layout.samples_file(3) == "samples/client-3.safetensors" and layout.samples_grid(3) == "samples/grid-client-3.png"
    assert layout.samples_client(layout.samples_file(12)) == 12
    assert layout.samples_client(layout.HANDOVER) is None and layout.samples_client("samples/grid.png") is None
    assert layout.step_name(4) == "step-00000004" and layout.step_of("step-00000004") == 4
    assert layout.partial_step_name(4) == ".step-00000004.tmp" and Path(".step-00000004.tmp").match(layout.PARTIAL_STEP_GLOB)
    assert layout.shard_name(0, 9) == "shard-00000000-00000009.safetensors" and layout.SHARD_RE.search(layout.shard_name(0, 9))
    assert layout.membership_scores("-client1") == "metrics/membership_scores-client1.npz"
    assert layout.membership_roc() == "figures/membership_roc.png"
    assert layout.audit_twin("client:1") == "audit-client-1" and layout.party_dir(tmp_path, 1) == tmp_path / "flower" / "client-1"
    rd = RunDir(tmp_path)
    old = {"config_path": "config.yaml", "splits_path": "splits.json", "ckpt_dir": "checkpoints",
           "latest_path": "checkpoints/latest.json", "view_dir": "server_view", "meta_path": "server_view/meta.json",
           "public_path": "server_view/public.safetensors", "record_path": "server_view/record.json",
           "view_manifest_path": "server_view/manifest.json", "view_train_dir": "server_view/train",
           "handover_path": "server_view/handover/sample.safetensors", "truth_dir": "ground_truth/train",
           "samples_manifest_path": "samples/manifest.json", "metrics_dir": "metrics",
           "train_log_path": "metrics/train.jsonl", "canaries_path": "audit/canaries.safetensors",
           "secrets_path": "clients/secrets.json"}  # fmt: skip
    assert {k: getattr(rd, k) for k in old} == {k: tmp_path / v for k, v in old.items()}
    assert rd.metrics_path("audit") == tmp_path / "metrics" / "audit.json"


PARTY_NAME = re.compile(r"""client-\{|_ema\.safetensors|["']server(_ema)?\.safetensors|["']state\.pt["']""")


def test_party_and_file_names_are_spelled_only_in_the_layout():
    """No module outside ``run/`` and ``protocol/`` spells a party's name or a checkpoint file's."""
    root = Path(collafuse_privacy.__file__).parent
    pkg = [root] + [root.parent / d for d in ("attacks", "defenses", "eval")]
    bad = [f"{p}:{i}" for d in pkg if d.is_dir() for p in sorted(d.rglob("*.py"))
           if not {"run", "protocol"} & set(p.relative_to(root.parent).parts[1:2])
           for i, line in enumerate(p.read_text().splitlines(), 1) if PARTY_NAME.search(line)]  # fmt: skip
    assert not bad, bad
