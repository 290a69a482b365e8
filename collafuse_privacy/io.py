"""Atomic file writes and safe loading.

Every file a run writes goes through a temporary file in the same folder and
``os.replace``, so an interrupted run never leaves a half-written file where a
complete one is expected. Weights load through safetensors, other tensor state
through ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load_bytes
from safetensors.torch import save as st_save_bytes

from .errors import UserError


_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and ``os.replace`` (mode 0666 & ~umask)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fchmod(fh.fileno(), 0o666 & ~_UMASK)
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError) and not exc.filename:  # a full disk names no file: name it
            raise OSError(exc.errno, exc.strerror, str(path)) from None
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=False) + "\n")


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write_bytes(path, _sorted_metadata(st_save_bytes(tensors, metadata=metadata)))


def _sorted_metadata(data: bytes) -> bytes:
    """The same file with its ``__metadata__`` keys in sorted order: safetensors writes them in
    the order of a Rust ``HashMap``, which changes from process to process, so two runs with
    equal tensors and metadata would otherwise differ in their bytes."""
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    meta = header.get("__metadata__")
    if not meta or len(meta) < 2:
        return data
    header["__metadata__"] = dict(sorted(meta.items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    if len(text) > n:  # never expected (same content, other order); keep the library's bytes
        return data
    return data[:8] + text + b" " * (n - len(text)) + data[8 + n :]


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file; a missing, truncated or corrupt file is a UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"file not found: {path}")
    try:
        return st_load_bytes(path.read_bytes())
    except (SafetensorError, ValueError, RuntimeError, OSError) as exc:
        raise UserError(f"{path} is corrupt or truncated ({str(exc).splitlines()[0][:80]})") from None


def save_state(path: str | Path, state: dict) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_state(path: str | Path) -> dict:
    """``torch.load(weights_only=True)``; damage is reported as a UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"file not found: {path}")
    try:
        return torch.load(io.BytesIO(path.read_bytes()), weights_only=True, map_location="cpu")
    except Exception as exc:  # torch raises many kinds for damaged pickles/zips
        raise UserError(f"{path} is corrupt or truncated ({type(exc).__name__})") from None


def append_jsonl(path: str | Path, rows: Iterable[dict]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def truncate_jsonl(path: str | Path, keep) -> None:
    """Rewrite ``path`` keeping the rows for which ``keep(row)`` is true (atomic)."""
    path = Path(path)
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by an interruption
        if keep(row):
            kept.append(line)
    atomic_write_text(path, "".join(x + "\n" for x in kept))


def save_figure(fig, path: str | Path, dpi: int = 110) -> None:
    """A matplotlib figure as PNG, written atomically; the figure is closed."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def check_writable(folder: str | Path) -> None:
    """Fail now, with the folder named, if ``folder`` cannot be written (before a long computation)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".writable.", suffix=".tmp")
    os.close(fd)
    os.unlink(tmp)
